//! [`Model`]: a model built through the registry, with the var store that
//! owns its tensors, and how a file's model state reaches it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};
use tch::{nn, Device, Tensor};

use super::LoadOptions;
use crate::error::{Error, Result};
use crate::format::{Checkpoint, ClassSpec, MemberName, TensorEntry};
use crate::progress::Tracker;
use crate::registry::{BoxedModel, Forward, Registry, TensorSpec};
use crate::tch_bridge::{check_fits, copy_into, copy_into_tracked, kind_of, mapped};

/// A model built through the registry, with the var store that owns its
/// tensors. Its state dict is the var store's variables, under PyTorch's
/// names.
pub struct Model {
    spec: ClassSpec,
    vs: nn::VarStore,
    module: BoxedModel,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("class", &self.spec.class)
            .field("kwargs", &self.spec.kwargs)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Builds `spec` through the registry; `loading` builds into
    /// uninitialized memory, for state that a file is about to fill.
    pub(super) fn build(registry: &Registry, spec: ClassSpec, device: Device, loading: bool) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let module = registry.build_model(&spec.class, vs.root(), &spec.kwargs, loading)?;
        Ok(Model { spec, vs, module })
    }

    /// The registry name the model was built from.
    pub fn class(&self) -> &str {
        &self.spec.class
    }

    /// The constructor kwargs.
    pub fn kwargs(&self) -> &Map<String, Value> {
        &self.spec.kwargs
    }

    /// The class name and kwargs, as a file records them.
    pub fn spec(&self) -> &ClassSpec {
        &self.spec
    }

    /// The var store that owns the model's tensors (for an optimizer, or
    /// for direct access).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// The trainable parameters with their state-dict names, in creation
    /// order: the order of PyTorch's `model.parameters()` for a model
    /// whose layers are created in its `__init__` order (so that
    /// optimizer parameter indices agree between languages). Buffers are
    /// not parameters. Shallow clones: they share storage.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        // tch keeps names and trainable order apart; the storage pointer
        // (with the shape, for empty tensors) joins them. Names sharing a
        // key are taken in name order.
        let mut by_storage: HashMap<(usize, Vec<i64>), Vec<String>> = HashMap::new();
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| b.0.cmp(&a.0));
        for (name, v) in named {
            by_storage
                .entry((v.data_ptr() as usize, v.size()))
                .or_default()
                .push(name);
        }
        self.vs
            .trainable_variables()
            .into_iter()
            .filter_map(|t| {
                let name = by_storage.get_mut(&(t.data_ptr() as usize, t.size()))?.pop()?;
                Some((name, t))
            })
            .collect()
    }

    /// The module the factory built, as its concrete type (`None` when it
    /// is another type): `model.module::<models::Mlp>()`.
    pub fn module<M: Forward>(&self) -> Option<&M> {
        self.module.as_any().downcast_ref::<M>()
    }

    /// The state dict, sorted by name (shallow clones: they share storage).
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// Runs the model. A libtorch error (say, a wrong input shape) is an
    /// error, not a panic.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.module.forward_t(xs, train)
    }

    /// Eval-mode forward with no gradient tracking.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.forward_t(xs, false))
    }

    /// The module, for running it.
    pub(crate) fn forward_module(&self) -> &BoxedModel {
        &self.module
    }

    /// Rebuilds the model a file names and loads its state, without ever
    /// building or allocating what the file does not pay for (see
    /// [`for_file`](Self::for_file)).
    pub(crate) fn from_file(
        registry: &Registry,
        ckpt: &Checkpoint,
        device: Device,
        options: &LoadOptions,
        tracker: &Tracker,
    ) -> Result<Model> {
        let mut model = Model::for_file(registry, ckpt, device)?;
        model.fill(ckpt, options.copy, tracker)?;
        Ok(model)
    }

    /// Builds the model a file names, for its state, which is checked to
    /// fit but not yet loaded ([`fill`](Self::fill) loads it): a model
    /// registered with a layout is compared with the file's tensors before
    /// it is built; any model is built into uninitialized memory and
    /// compared again before a byte of it is written.
    pub(super) fn for_file(registry: &Registry, ckpt: &Checkpoint, device: Device) -> Result<Model> {
        let spec = ckpt.metadata().model_spec()?;
        let file_tensors = ckpt.tensors(MemberName::Model);
        if let Some(specs) = registry.describe_model(&spec.class, &spec.kwargs, file_tensors.len())? {
            check_layout(&spec.class, &specs, ckpt)?;
        }
        let model = Model::build(registry, spec.clone(), device, true)?;
        model.check_state(ckpt)?;
        Ok(model)
    }

    /// Checks that the file's model tensors fit this model: every name
    /// present on both sides with the same dtype and shape.
    pub(super) fn check_state(&self, ckpt: &Checkpoint) -> Result<()> {
        let vars = self.vs.variables();
        for e in ckpt.tensors(MemberName::Model) {
            let dst = vars.get(&e.name).ok_or_else(|| Error::StateMismatch {
                tensor: e.name.clone(),
                reason: format!("in the file but not in model {}", self.spec.class),
            })?;
            check_fits(e, dst)?;
        }
        if let Some(missing) = vars.keys().find(|k| ckpt.tensor(MemberName::Model, k).is_err()) {
            return Err(Error::StateMismatch {
                tensor: missing.clone(),
                reason: format!("in model {} but not in the file", self.spec.class),
            });
        }
        Ok(())
    }

    /// Loads the file's model tensors, checked by
    /// [`check_state`](Self::check_state): copied into this model's
    /// storage (`copy`), or mapped from the file.
    /// A copy advances `tracker` as it copies.
    pub(super) fn fill(&mut self, ckpt: &Checkpoint, copy: bool, tracker: &Tracker) -> Result<()> {
        match copy {
            true => self.copy_state(ckpt, tracker),
            false => self.map_state(ckpt),
        }
    }

    /// Copies the file's model tensors into this model's storage (on
    /// several threads).
    fn copy_state(&mut self, ckpt: &Checkpoint, tracker: &Tracker) -> Result<()> {
        let mut vars = self.vs.variables();
        let entries = ckpt.tensors(MemberName::Model);
        let mut pairs: Vec<(&TensorEntry, &mut Tensor)> = Vec::with_capacity(entries.len());
        let mut by_name: HashMap<&str, &TensorEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
        for (name, dst) in vars.iter_mut() {
            if let Some(e) = by_name.remove(name.as_str()) {
                pairs.push((e, dst));
            }
        }
        copy_into_tracked(ckpt, &mut pairs, tracker)
    }

    /// Points this model's CPU tensors at the file's bytes in its private
    /// mapping (no copy; the tensors keep their identity, so modules and
    /// optimizers holding them see the file's values); tensors on another
    /// device are copied.
    fn map_state(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let vars = self.vs.variables();
        let mut swaps = Vec::new();
        let mut copies = Vec::new();
        for e in ckpt.tensors(MemberName::Model) {
            let dst = vars.get(&e.name).expect("checked by check_state");
            if dst.device() == Device::Cpu {
                swaps.push((dst.shallow_clone(), mapped(ckpt, e)?));
            } else {
                copies.push((e, dst.shallow_clone()));
            }
        }
        for (mut dst, src) in swaps {
            dst.f_set_data(&src)?;
        }
        let mut pairs: Vec<_> = copies.iter_mut().map(|(e, t)| (*e, t)).collect();
        copy_into(ckpt, &mut pairs)
    }
}

/// Compares the state dict a model's kwargs describe with the file's
/// model tensors: names, dtypes and shapes, naming the first difference.
fn check_layout(class: &str, specs: &[TensorSpec], ckpt: &Checkpoint) -> Result<()> {
    let mismatch = |tensor: &str, reason: String| Error::StateMismatch {
        tensor: tensor.to_owned(),
        reason,
    };
    for spec in specs {
        let entry = ckpt.tensor(MemberName::Model, &spec.name).map_err(|_| {
            mismatch(
                &spec.name,
                format!("the model_kwargs of {class} describe it, the file does not hold it"),
            )
        })?;
        if kind_of(entry.dtype) != Some(spec.kind) {
            return Err(mismatch(
                &spec.name,
                format!(
                    "the model_kwargs of {class} describe dtype {:?}, the file has {:?}",
                    spec.kind, entry.dtype
                ),
            ));
        }
        let file_shape: Vec<i64> = entry.shape.iter().map(|&d| d as i64).collect();
        if file_shape != spec.shape {
            return Err(mismatch(
                &spec.name,
                format!(
                    "the model_kwargs of {class} describe shape {:?}, the file has {:?}",
                    spec.shape, entry.shape
                ),
            ));
        }
    }
    if specs.len() != ckpt.tensors(MemberName::Model).len() {
        let described: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        if let Some(extra) = ckpt
            .tensors(MemberName::Model)
            .iter()
            .find(|e| !described.contains(e.name.as_str()))
        {
            return Err(mismatch(
                &extra.name,
                format!("in the file, but not in the model the model_kwargs of {class} describe"),
            ));
        }
    }
    Ok(())
}
