//! The kwargs registry: class name -> factory. A file names its classes;
//! loading looks each name up here (never anything else), so a checkpoint
//! rebuilds its objects with no user code and runs none of its own.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde_json::{Map, Value};
use tch::{nn, Kind, Tensor};

use crate::error::{panic_message, torch_message, Error, Result};
pub use crate::kwargs::Kwargs;
use crate::optim::{Optimizer, OptimizerClass, UserClass};

/// What a model runs: a fallible forward with a train flag. Every tch
/// module is one (a libtorch panic inside it becomes an error); models
/// whose forward lives outside Rust (a C or C++ callback) implement it
/// directly so that their own error reaches the caller.
pub trait Forward: std::fmt::Debug + Send + 'static {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor>;
    /// The concrete module, for [`Model::module`](crate::Model::module).
    fn as_any(&self) -> &dyn std::any::Any;
    /// The module as one whose eval-mode forward (`forward_t(xs, false)`)
    /// may run on several threads at once, or `None` (the default) when
    /// it may not: an [`InferenceModel`](crate::InferenceModel) then runs
    /// one call at a time. The built-in models say yes: eval-mode forward
    /// only reads their tensors.
    fn as_sync(&self) -> Option<&(dyn Forward + Sync)> {
        None
    }
}

impl<M: nn::ModuleT + 'static> Forward for M {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        catch_unwind(AssertUnwindSafe(|| nn::ModuleT::forward_t(self, xs, train)))
            .map_err(|p| Error::Torch(torch_message(&panic_message(&*p))))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A model built by a factory: any tch module, or any [`Forward`].
pub type BoxedModel = Box<dyn Forward>;

/// Builds a model under a var-store path from its constructor kwargs.
pub type ModelFactory = dyn Fn(nn::Path<'_>, &Kwargs<'_>) -> Result<BoxedModel> + Send + Sync;

/// One tensor of the state dict that a model's kwargs describe.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The state-dict key (`fc1.weight`).
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<i64>,
}

/// Describes, without building or allocating anything, the state dict
/// that a model built from these kwargs would have, in state-dict order.
/// `limit` is the number of tensors the file holds: a layout that would
/// describe more is refused before it is enumerated, naming the kwarg
/// that asks for them (so `n_layers = 10**9` costs nothing).
pub type ModelLayout = dyn Fn(&Kwargs<'_>, usize) -> Result<Vec<TensorSpec>> + Send + Sync;

#[derive(Clone)]
struct Entry {
    factory: Arc<ModelFactory>,
    layout: Option<Arc<ModelLayout>>,
}

/// Name -> factory for every class a checkpoint may name: models, and
/// the optimizer classes a user adds to the built-in `torch.optim` ones.
#[derive(Clone)]
pub struct Registry {
    models: BTreeMap<String, Entry>,
    optimizers: BTreeMap<String, Arc<UserClass>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("models", &self.models.keys())
            .field("optimizers", &self.optimizers.keys())
            .finish()
    }
}

impl Registry {
    /// A registry holding the built-in classes.
    pub fn new() -> Self {
        let mut r = Self::empty();
        crate::models::register_builtins(&mut r);
        r
    }

    /// A registry with nothing in it.
    pub fn empty() -> Self {
        Registry {
            models: BTreeMap::new(),
            optimizers: BTreeMap::new(),
        }
    }

    /// Registers a model factory under `name` (use the Python class's
    /// `module.QualName` so that files from Python resolve to it).
    pub fn register_model<F>(&mut self, name: &str, factory: F) -> Result<()>
    where
        F: Fn(nn::Path<'_>, &Kwargs<'_>) -> Result<BoxedModel> + Send + Sync + 'static,
    {
        self.insert(name, Arc::new(factory), None)
    }

    /// Registers a model factory together with its [`ModelLayout`]: loading
    /// a file then checks the tensors the kwargs describe against the file
    /// before the factory runs, so that kwargs cannot make the loader
    /// build (or allocate) anything the file does not hold.
    pub fn register_model_with_layout<F, L>(&mut self, name: &str, factory: F, layout: L) -> Result<()>
    where
        F: Fn(nn::Path<'_>, &Kwargs<'_>) -> Result<BoxedModel> + Send + Sync + 'static,
        L: Fn(&Kwargs<'_>, usize) -> Result<Vec<TensorSpec>> + Send + Sync + 'static,
    {
        self.insert(name, Arc::new(factory), Some(Arc::new(layout)))
    }

    fn insert(&mut self, name: &str, factory: Arc<ModelFactory>, layout: Option<Arc<ModelLayout>>) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidKwargs {
                class: name.into(),
                reason: "a class name cannot be empty".into(),
            });
        }
        if self.models.contains_key(name) {
            return Err(Error::DuplicateName {
                kind: "model",
                name: name.into(),
            });
        }
        self.models.insert(name.to_owned(), Entry { factory, layout });
        Ok(())
    }

    /// The registered model names, sorted.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    pub fn has_model(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.models.get(name).ok_or_else(|| Error::UnknownName {
            kind: "model",
            name: name.into(),
            known: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Registers an optimizer class under `name` (use the Python class's
    /// `module.QualName` so that files from Python resolve to it). Built-in
    /// names come first: a `torch.optim.*` name is refused
    /// ([`Error::DuplicateName`]), as is a name already registered or a
    /// class whose declarations are inconsistent (no `lr`, a key twice).
    pub fn register_optimizer<C: OptimizerClass>(&mut self, name: &str, class: C) -> Result<()> {
        let class = UserClass::new(name, Box::new(class))?;
        if self.optimizers.contains_key(name) {
            return Err(Error::DuplicateName {
                kind: "optimizer",
                name: name.into(),
            });
        }
        self.optimizers.insert(name.to_owned(), Arc::new(class));
        Ok(())
    }

    /// The registered optimizer class names, sorted (the built-in ones
    /// are [`optim::names`](crate::optim::names)).
    pub fn optimizer_names(&self) -> impl Iterator<Item = &str> {
        self.optimizers.keys().map(String::as_str)
    }

    /// Whether `name` is a registered optimizer class.
    pub fn has_optimizer(&self, name: &str) -> bool {
        self.optimizers.contains_key(name)
    }

    /// Builds the optimizer named `class`, built-in or registered, over
    /// `params` (see [`Optimizer::new`]). An unknown name is
    /// [`Error::UnknownName`] listing the built-in and registered names.
    pub fn build_optimizer(
        &self,
        class: &str,
        kwargs: &Map<String, Value>,
        params: Vec<(String, Tensor)>,
    ) -> Result<Optimizer> {
        Optimizer::build(class, &self.optimizers, kwargs, params)
    }

    /// Builds a model (`loading`: see [`Kwargs::loading`]). Unknown
    /// kwargs, a failing factory and a panicking one (tch panics on bad
    /// sizes) all become typed errors.
    pub fn build_model(
        &self,
        name: &str,
        path: nn::Path<'_>,
        kwargs: &Map<String, Value>,
        loading: bool,
    ) -> Result<BoxedModel> {
        let factory = &self.entry(name)?.factory;
        let kw = Kwargs::new(name, kwargs, loading);
        let built = catch_unwind(AssertUnwindSafe(|| factory(path, &kw))).map_err(|p| Error::Factory {
            class: name.into(),
            reason: panic_message(&*p),
        })??;
        kw.finish()?;
        Ok(built)
    }

    /// The state dict a model's kwargs describe (see [`ModelLayout`]), or
    /// `None` when the class was registered without a layout (it is then
    /// checked after it is built, into uninitialized memory).
    pub fn describe_model(
        &self,
        name: &str,
        kwargs: &Map<String, Value>,
        limit: usize,
    ) -> Result<Option<Vec<TensorSpec>>> {
        let Some(layout) = &self.entry(name)?.layout else {
            return Ok(None);
        };
        let kw = Kwargs::new(name, kwargs, true);
        let specs = layout(&kw, limit)?;
        kw.finish()?;
        Ok(Some(specs))
    }
}

/// A trainable variable for a factory: initialized with `init` when the
/// model is built, and uninitialized when it is being loaded (untouched
/// memory: every value is about to come from the file, and a loader
/// checks the model against the file before it touches anything). An
/// allocation libtorch refuses is an error, not a panic.
pub fn variable(p: &nn::Path<'_>, kw: &Kwargs<'_>, name: &str, dims: &[i64], init: nn::Init) -> Result<Tensor> {
    variable_of_kind(p, kw, name, dims, init, p.kind())
}

/// [`variable`] of a given floating-point kind (a layer built with
/// PyTorch's `dtype=` kwarg).
pub fn variable_of_kind(
    p: &nn::Path<'_>,
    kw: &Kwargs<'_>,
    name: &str,
    dims: &[i64],
    init: nn::Init,
    kind: Kind,
) -> Result<Tensor> {
    let tensor = if kw.loading() {
        Tensor::f_empty(dims, (kind, p.device()))?
    } else {
        nn::f_init(init, dims, p.device(), kind)?
    };
    Ok(p.add(name, tensor, true))
}

/// A buffer (saved, not trained) of any kind for a factory: filled with
/// `value` when the model is built, uninitialized when it is being loaded
/// (as [`variable`]).
pub fn buffer(p: &nn::Path<'_>, kw: &Kwargs<'_>, name: &str, dims: &[i64], kind: Kind, value: f64) -> Result<Tensor> {
    let tensor = if kw.loading() {
        Tensor::f_empty(dims, (kind, p.device()))?
    } else {
        Tensor::f_full(dims, value, (kind, p.device()))?
    };
    Ok(p.add(name, tensor, false))
}
