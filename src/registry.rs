//! The kwargs registry: class name -> factory. A file names its classes;
//! loading looks each name up here (never anything else), so a checkpoint
//! rebuilds its objects with no user code and runs none of its own.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde_json::{Map, Value};
use tch::{nn, Tensor};

use crate::error::{panic_message, torch_message, Error, Result};
pub use crate::kwargs::Kwargs;

/// What a model runs: a fallible forward with a train flag. Every tch
/// module is one (a libtorch panic inside it becomes an error); models
/// whose forward lives outside Rust (a C or C++ callback) implement it
/// directly so that their own error reaches the caller.
pub trait Forward: std::fmt::Debug + Send + 'static {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor>;
    /// The concrete module, for [`Model::module`](crate::Model::module).
    fn as_any(&self) -> &dyn std::any::Any;
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

/// Name -> factory for every class a checkpoint may name.
#[derive(Clone)]
pub struct Registry {
    models: BTreeMap<String, Arc<ModelFactory>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("models", &self.models.keys()).finish()
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
        }
    }

    /// Registers a model factory under `name` (use the Python class's
    /// `module.QualName` so that files from Python resolve to it).
    pub fn register_model<F>(&mut self, name: &str, factory: F) -> Result<()>
    where
        F: Fn(nn::Path<'_>, &Kwargs<'_>) -> Result<BoxedModel> + Send + Sync + 'static,
    {
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
        self.models.insert(name.to_owned(), Arc::new(factory));
        Ok(())
    }

    /// The registered model names, sorted.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    pub fn has_model(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    fn factory(&self, name: &str) -> Result<&Arc<ModelFactory>> {
        self.models.get(name).ok_or_else(|| Error::UnknownName {
            kind: "model",
            name: name.into(),
            known: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })
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
        let factory = self.factory(name)?;
        let kw = Kwargs::new(name, kwargs, loading);
        let built = catch_unwind(AssertUnwindSafe(|| factory(path, &kw))).map_err(|p| Error::Factory {
            class: name.into(),
            reason: panic_message(&*p),
        })??;
        kw.finish()?;
        Ok(built)
    }
}
