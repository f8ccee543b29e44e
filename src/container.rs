//! `ModelContainer`: initialize objects by name and kwargs, save them with
//! metadata, load them back with nothing but the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tch::{nn, Device, Tensor};

use crate::error::{Error, Result};
use crate::format::{
    self, Checkpoint, FileKind, MemberName, Producer, ReadOptions, TensorMember, TensorSource, WriteOptions,
    FORMAT_VERSION, INTERNALS_KEY, RESERVED_KEYS,
};
use crate::optim::{Optimizer, OptimizerState, ParamGroup, ParamState};
use crate::registry::{BoxedModel, Forward, Registry, TensorSpec};
use crate::sched::Scheduler;
use crate::tch_bridge::{check_fits, copy_into, kind_of, mapped, read_new, TchSource};

/// How a load reads a file and where the loaded tensors live.
///
/// The default is the fast path: every CRC-32 is checked (over the file's
/// mapping, on several threads), then the model's and the optimizer's
/// tensors point into a private, copy-on-write mapping of the file. No
/// random init, no copy: the load costs what reading the pages costs, and
/// processes that load the same file share its page cache. Training
/// afterwards writes private pages and never changes the file.
///
/// `copy` gives tensors in memory of their own instead, independent of
/// the file: pick it when another process may truncate or rewrite the
/// file while it is loaded (a truncated mapping faults, SIGBUS, on
/// access; a copy does not), or when the file lives on a network file
/// system that may go away. `verify: false` skips the CRC-32 of the tensor
/// data (the structure is still validated) for files that were verified
/// when they were deployed (`pytorch-saver verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Check the CRC-32 of every member before any tensor is handed out.
    pub verify: bool,
    /// Copy tensors into memory of their own instead of mapping the file.
    pub copy: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verify: true,
            copy: false,
        }
    }
}

impl LoadOptions {
    /// The defaults: verified, zero-copy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to check the CRC-32 of the tensor data.
    pub fn with_verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Whether to copy tensors out of the file instead of mapping it.
    pub fn with_copy(mut self, copy: bool) -> Self {
        self.copy = copy;
        self
    }

    pub(crate) fn read_options(&self) -> ReadOptions {
        ReadOptions { verify: self.verify }
    }
}

/// Free user metadata saved beside the state (`loss`, `epoch`, ...).
///
/// Values are checked as they are inserted: JSON has no NaN or infinity,
/// so a non-finite float is refused here rather than silently written as
/// `null`. Reserved keys are refused by `save`, before anything is written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserMetadata {
    map: Map<String, Value>,
}

/// A value that can go into [`UserMetadata`].
pub trait MetadataValue {
    /// The JSON value, or why there is none.
    fn to_json(self) -> std::result::Result<Value, String>;
}

macro_rules! exact_metadata_value {
    ($($t:ty),*) => {$(
        impl MetadataValue for $t {
            fn to_json(self) -> std::result::Result<Value, String> {
                Ok(Value::from(self))
            }
        }
    )*};
}
exact_metadata_value!(bool, i8, i16, i32, i64, u8, u16, u32, u64, usize, &str, String);

impl MetadataValue for f64 {
    fn to_json(self) -> std::result::Result<Value, String> {
        serde_json::Number::from_f64(self)
            .map(Value::Number)
            .ok_or_else(|| format!("{self} is not representable in JSON (NaN and infinities are not)"))
    }
}

impl MetadataValue for f32 {
    fn to_json(self) -> std::result::Result<Value, String> {
        f64::from(self).to_json()
    }
}

impl MetadataValue for Value {
    /// A `serde_json::Value` cannot hold a non-finite number, so any is valid.
    fn to_json(self) -> std::result::Result<Value, String> {
        Ok(self)
    }
}

impl UserMetadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`; fails on a value JSON cannot represent.
    pub fn insert(&mut self, key: impl Into<String>, value: impl MetadataValue) -> Result<&mut Self> {
        let key = key.into();
        let value = value.to_json().map_err(|reason| Error::InvalidMetadata {
            key: key.clone(),
            reason,
        })?;
        self.map.insert(key, value);
        Ok(self)
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, key: impl Into<String>, value: impl MetadataValue) -> Result<Self> {
        self.insert(key, value)?;
        Ok(self)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    fn check_reserved(&self) -> Result<()> {
        match self.map.keys().find(|k| RESERVED_KEYS.contains(&k.as_str())) {
            Some(k) => Err(Error::ReservedMetadataKey(k.clone())),
            None => Ok(()),
        }
    }
}

impl TryFrom<Map<String, Value>> for UserMetadata {
    type Error = Error;
    fn try_from(map: Map<String, Value>) -> Result<Self> {
        let m = UserMetadata { map };
        m.check_reserved()?;
        Ok(m)
    }
}

/// A model built through the registry, with the var store that owns its
/// tensors. Its state dict is the var store's variables, under PyTorch's
/// names.
pub struct Model {
    class: String,
    kwargs: Map<String, Value>,
    vs: nn::VarStore,
    module: BoxedModel,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("class", &self.class)
            .field("kwargs", &self.kwargs)
            .finish_non_exhaustive()
    }
}

impl Model {
    fn build(
        registry: &Registry,
        class: &str,
        kwargs: Map<String, Value>,
        device: Device,
        loading: bool,
    ) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let module = registry.build_model(class, vs.root(), &kwargs, loading)?;
        Ok(Model {
            class: class.to_owned(),
            kwargs,
            vs,
            module,
        })
    }

    /// The registry name the model was built from.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The constructor kwargs.
    pub fn kwargs(&self) -> &Map<String, Value> {
        &self.kwargs
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

    /// Checks that the file's model tensors fit this model: every name
    /// present on both sides with the same dtype and shape.
    fn check_state(&self, ckpt: &Checkpoint) -> Result<()> {
        let vars = self.vs.variables();
        for e in ckpt.tensors(MemberName::Model) {
            let dst = vars.get(&e.name).ok_or_else(|| Error::StateMismatch {
                tensor: e.name.clone(),
                reason: format!("in the file but not in model {}", self.class),
            })?;
            check_fits(e, dst)?;
        }
        if let Some(missing) = vars.keys().find(|k| ckpt.tensor(MemberName::Model, k).is_err()) {
            return Err(Error::StateMismatch {
                tensor: missing.clone(),
                reason: format!("in model {} but not in the file", self.class),
            });
        }
        Ok(())
    }

    /// Copies the file's model tensors into this model's storage (on
    /// several threads); call [`check_state`](Self::check_state) first.
    fn copy_state(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let mut vars = self.vs.variables();
        let entries = ckpt.tensors(MemberName::Model);
        let mut pairs: Vec<(&format::TensorEntry, &mut Tensor)> = Vec::with_capacity(entries.len());
        let mut by_name: HashMap<&str, &format::TensorEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
        for (name, dst) in vars.iter_mut() {
            if let Some(e) = by_name.remove(name.as_str()) {
                pairs.push((e, dst));
            }
        }
        copy_into(ckpt, &mut pairs)
    }

    /// Points this model's CPU tensors at the file's bytes in its private
    /// mapping (no copy; the tensors keep their identity, so modules and
    /// optimizers holding them see the file's values); tensors on another
    /// device are copied. Call [`check_state`](Self::check_state) first.
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

    /// Rebuilds the model a file names and loads its state, without ever
    /// building or allocating what the file does not pay for: a model
    /// registered with a layout is compared with the file's tensors
    /// before it is built; any model is built into uninitialized memory
    /// and compared again before a byte of it is written.
    pub(crate) fn from_file(
        registry: &Registry,
        ckpt: &Checkpoint,
        device: Device,
        options: &LoadOptions,
    ) -> Result<Model> {
        let class = &ckpt.manifest().model_class;
        let kwargs = file_kwargs(ckpt, "model_kwargs");
        let file_tensors = ckpt.tensors(MemberName::Model);
        if let Some(specs) = registry.describe_model(class, &kwargs, file_tensors.len())? {
            check_layout(class, &specs, ckpt)?;
        }
        let mut model = Model::build(registry, class, kwargs, device, true)?;
        model.check_state(ckpt)?;
        if options.copy {
            model.copy_state(ckpt)?;
        } else {
            model.map_state(ckpt)?;
        }
        Ok(model)
    }

    /// The module, for running it.
    pub(crate) fn forward_module(&self) -> &BoxedModel {
        &self.module
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
        let described: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
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

/// A kwargs object of the file (`model_kwargs`, ...); the format layer has
/// checked that it is an object.
fn file_kwargs(ckpt: &Checkpoint, key: &str) -> Map<String, Value> {
    ckpt.metadata()
        .get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// What [`ModelContainer::initialize`] builds: a model, and optionally an
/// optimizer over its parameters and a scheduler over that optimizer,
/// each by registry name and constructor kwargs.
///
/// ```no_run
/// # use pytorch_saver::{container::Spec, models, optim, sched};
/// # use serde_json::json;
/// # let kw = |v: serde_json::Value| v.as_object().unwrap().clone();
/// let spec = Spec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
///     .optimizer(optim::ADAM, kw(json!({"lr": 1e-3})))
///     .scheduler(sched::STEP_LR, kw(json!({"step_size": 10})));
/// ```
#[derive(Debug, Clone)]
pub struct Spec {
    model: (String, Map<String, Value>),
    optimizer: Option<(String, Map<String, Value>)>,
    scheduler: Option<(String, Map<String, Value>)>,
}

impl Spec {
    /// A model alone.
    pub fn model(class: &str, kwargs: Map<String, Value>) -> Self {
        Spec {
            model: (class.to_owned(), kwargs),
            optimizer: None,
            scheduler: None,
        }
    }

    /// Adds an optimizer over the model's parameters (`torch.optim.Adam`, ...).
    pub fn optimizer(mut self, class: &str, kwargs: Map<String, Value>) -> Self {
        self.optimizer = Some((class.to_owned(), kwargs));
        self
    }

    /// Adds an LR scheduler over the optimizer
    /// (`torch.optim.lr_scheduler.StepLR`, ...); it needs an optimizer.
    pub fn scheduler(mut self, class: &str, kwargs: Map<String, Value>) -> Self {
        self.scheduler = Some((class.to_owned(), kwargs));
        self
    }
}

/// The objects a container holds, borrowed together so that a training
/// loop can use all three (PyTorch's `objs.model`, `.optimizer`, `.scheduler`).
#[derive(Debug)]
pub struct Parts<'a> {
    pub model: &'a mut Model,
    pub optimizer: Option<&'a mut Optimizer>,
    pub scheduler: Option<&'a mut Scheduler>,
}

/// The three objects, built but not yet in a container.
struct Built {
    model: Model,
    optimizer: Option<Optimizer>,
    scheduler: Option<Scheduler>,
}

impl Built {
    fn new(registry: &Registry, spec: Spec, device: Device, loading: bool) -> Result<Self> {
        if spec.scheduler.is_some() && spec.optimizer.is_none() {
            return Err(Error::Usage(
                "a scheduler needs an optimizer: give an optimizer too, or no scheduler".into(),
            ));
        }
        let (class, kwargs) = spec.model;
        let model = Model::build(registry, &class, kwargs, device, loading)?;
        let mut optimizer = match spec.optimizer {
            Some((class, kwargs)) => Some(Optimizer::new(&class, &kwargs, model.parameters())?),
            None => None,
        };
        let scheduler = match (spec.scheduler, optimizer.as_mut()) {
            (Some((class, kwargs)), Some(opt)) => Some(Scheduler::new(&class, &kwargs, opt.param_groups_mut())?),
            _ => None,
        };
        Ok(Built {
            model,
            optimizer,
            scheduler,
        })
    }
}

impl Built {
    /// The model, optimizer and scheduler a file holds, rebuilt and loaded;
    /// every check runs before the objects are handed out (all or nothing).
    fn from_file(registry: &Registry, ckpt: &Checkpoint, device: Device, options: &LoadOptions) -> Result<Self> {
        let manifest = ckpt.manifest();
        if manifest.scheduler_class.is_some() && manifest.optimizer_class.is_none() {
            return Err(Error::Usage(
                "a scheduler needs an optimizer: give an optimizer too, or no scheduler".into(),
            ));
        }
        let model = Model::from_file(registry, ckpt, device, options)?;
        let mut optimizer = match &manifest.optimizer_class {
            Some(class) => Some(Optimizer::new(
                class,
                &file_kwargs(ckpt, "optim_kwargs"),
                model.parameters(),
            )?),
            None => None,
        };
        let mut scheduler = None;
        if let Some(opt) = optimizer.as_mut() {
            let prepared = opt.prepare_load(optimizer_state(ckpt, options)?)?;
            if let Some(class) = &manifest.scheduler_class {
                // Constructed over a copy of the loaded groups: the
                // constructor's side effects (initial_lr, the initial step)
                // are then replaced by the saved state, and kwargs such as
                // last_epoch, which need the groups' initial_lr, work as
                // they did when it was saved.
                let mut scratch = prepared.groups.clone();
                let mut sched = Scheduler::new(class, &file_kwargs(ckpt, "scheduler_kwargs"), &mut scratch)?;
                sched.load_state_dict(scheduler_state(ckpt)?, &prepared.groups)?;
                scheduler = Some(sched);
            }
            opt.commit_load(prepared);
        }
        Ok(Built {
            model,
            optimizer,
            scheduler,
        })
    }
}

/// Saves and loads a model, its optimizer and its LR scheduler, with their
/// constructor kwargs and free metadata.
///
/// ```no_run
/// use pytorch_saver::{container::Spec, models, optim, sched, ModelContainer, UserMetadata};
/// use serde_json::json;
///
/// let kw = |v: serde_json::Value| v.as_object().unwrap().clone();
/// let mut container = ModelContainer::new();
/// container.initialize(
///     Spec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
///         .optimizer(optim::ADAM, kw(json!({"lr": 1e-3})))
///         .scheduler(sched::STEP_LR, kw(json!({"step_size": 10}))),
/// )?;
/// // ... forward, backward, container.step()?, container.scheduler_step()? ...
/// let meta = UserMetadata::new().with("loss", 0.55)?.with("epoch", 5)?;
/// let path = container.save("./", "tutorial", &meta)?;
///
/// let mut restored = ModelContainer::new();
/// let metadata = restored.load(&path)?; // model, optimizer and scheduler
/// assert_eq!(metadata["epoch"], 5);
/// # Ok::<(), pytorch_saver::Error>(())
/// ```
pub struct ModelContainer {
    registry: Arc<Registry>,
    device: Device,
    model: Option<Model>,
    optimizer: Option<Optimizer>,
    scheduler: Option<Scheduler>,
    write_options: WriteOptions,
    /// The language recorded as the files' producer (`"rust"`; a binding
    /// records its own).
    language: String,
}

impl Default for ModelContainer {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelContainer {
    /// A container over the built-in registry, on the CPU.
    pub fn new() -> Self {
        Self::with_registry(Registry::new())
    }

    /// A container over a registry with the caller's own classes.
    pub fn with_registry(registry: impl Into<Arc<Registry>>) -> Self {
        ModelContainer {
            registry: registry.into(),
            device: Device::Cpu,
            model: None,
            optimizer: None,
            scheduler: None,
            write_options: WriteOptions::default(),
            language: "rust".into(),
        }
    }

    /// The language recorded in the files it writes as their producer's
    /// (`__pytorch_saver__.producer.language`): `"rust"` unless a binding
    /// says otherwise (`"c"`, `"c++"`, `"go"`). A non-empty string of at
    /// most 32 printable ASCII characters.
    pub fn set_producer_language(&mut self, language: &str) -> Result<()> {
        let printable = language.bytes().all(|b| b.is_ascii_graphic());
        if language.is_empty() || language.len() > 32 || !printable {
            return Err(Error::Usage(format!(
                "a producer language is 1 to 32 printable ASCII characters, got {language:?}"
            )));
        }
        self.language = language.to_owned();
        Ok(())
    }

    /// Where new models are built and loaded.
    pub fn on_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Writer options (only tests need them).
    pub fn with_write_options(mut self, options: WriteOptions) -> Self {
        self.write_options = options;
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Builds the model, and the optimizer and scheduler if the spec has
    /// them, replacing what the container held (only once all are built:
    /// on error it keeps what it had). A scheduler without an optimizer is
    /// an error, as is any unknown name or kwarg.
    pub fn initialize(&mut self, spec: Spec) -> Result<Parts<'_>> {
        let built = Built::new(&self.registry, spec, self.device, false)?;
        self.install(built);
        self.parts_mut()
    }

    fn install(&mut self, built: Built) {
        self.model = Some(built.model);
        self.optimizer = built.optimizer;
        self.scheduler = built.scheduler;
    }

    pub fn model(&self) -> Result<&Model> {
        self.model.as_ref().ok_or(Error::NotInitialized)
    }

    pub fn model_mut(&mut self) -> Result<&mut Model> {
        self.model.as_mut().ok_or(Error::NotInitialized)
    }

    /// The optimizer, if the container has one.
    pub fn optimizer(&self) -> Option<&Optimizer> {
        self.optimizer.as_ref()
    }

    pub fn optimizer_mut(&mut self) -> Option<&mut Optimizer> {
        self.optimizer.as_mut()
    }

    /// The scheduler, if the container has one.
    pub fn scheduler(&self) -> Option<&Scheduler> {
        self.scheduler.as_ref()
    }

    /// Model, optimizer and scheduler at once.
    pub fn parts_mut(&mut self) -> Result<Parts<'_>> {
        Ok(Parts {
            model: self.model.as_mut().ok_or(Error::NotInitialized)?,
            optimizer: self.optimizer.as_mut(),
            scheduler: self.scheduler.as_mut(),
        })
    }

    fn require_optimizer(&mut self) -> Result<&mut Optimizer> {
        self.model()?;
        self.optimizer
            .as_mut()
            .ok_or_else(|| Error::Usage("the container has no optimizer: initialize it with one".into()))
    }

    /// `optimizer.zero_grad()`: every gradient becomes None.
    pub fn zero_grad(&mut self) -> Result<()> {
        self.require_optimizer()?.zero_grad()
    }

    /// `optimizer.step()`.
    pub fn step(&mut self) -> Result<()> {
        self.require_optimizer()?.step()
    }

    /// `scheduler.step()`.
    pub fn scheduler_step(&mut self) -> Result<()> {
        let (opt, sched) = self.scheduler_parts()?;
        sched.step(opt.param_groups_mut())
    }

    /// `scheduler.step(metric)`, for ReduceLROnPlateau.
    pub fn scheduler_step_with_metric(&mut self, metric: f64) -> Result<()> {
        let (opt, sched) = self.scheduler_parts()?;
        sched.step_with_metric(opt.param_groups_mut(), metric)
    }

    fn scheduler_parts(&mut self) -> Result<(&mut Optimizer, &mut Scheduler)> {
        self.model()?;
        match (self.optimizer.as_mut(), self.scheduler.as_mut()) {
            (Some(o), Some(s)) => Ok((o, s)),
            _ => Err(Error::Usage(
                "the container has no scheduler: initialize it with one".into(),
            )),
        }
    }

    /// Each parameter group's current learning rate.
    pub fn lrs(&self) -> Result<Vec<f64>> {
        self.model()?;
        match &self.optimizer {
            Some(o) => o.lrs(),
            None => Err(Error::Usage("the container has no optimizer".into())),
        }
    }

    /// Saves a training checkpoint (model, optimizer and scheduler) into
    /// `dir` as `{prefix}_checkpoint_{unix seconds}.zip` and returns its path.
    pub fn save(&self, dir: impl AsRef<Path>, prefix: &str, metadata: &UserMetadata) -> Result<PathBuf> {
        self.write(dir.as_ref(), prefix, metadata, FileKind::Checkpoint)
    }

    /// Saves the model alone, as `{prefix}_inference_{unix seconds}.zip`.
    pub fn save_inference(&self, dir: impl AsRef<Path>, prefix: &str, metadata: &UserMetadata) -> Result<PathBuf> {
        self.write(dir.as_ref(), prefix, metadata, FileKind::Inference)
    }

    fn write(&self, dir: &Path, prefix: &str, user: &UserMetadata, kind: FileKind) -> Result<PathBuf> {
        let model = self.model()?;
        user.check_reserved()?;
        if prefix.contains(['/', '\0']) {
            return Err(Error::InvalidMetadata {
                key: "prefix".into(),
                reason: format!("{prefix:?} may not contain '/' or NUL"),
            });
        }
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let training = kind == FileKind::Checkpoint;
        let optimizer = self.optimizer.as_ref().filter(|_| training);
        let scheduler = self.scheduler.as_ref().filter(|_| training);

        let mut internals = Map::new();
        internals.insert("format_version".into(), FORMAT_VERSION.into());
        internals.insert("kind".into(), kind.as_str().into());
        internals.insert("model".into(), serde_json::json!({ "class": model.class }));
        let mut metadata = Map::new();
        metadata.insert("model_kwargs".into(), Value::Object(model.kwargs.clone()));
        let opt_state = optimizer.map(Optimizer::state_dict).transpose()?;
        if let (Some(opt), Some(sd)) = (optimizer, &opt_state) {
            metadata.insert("optim_kwargs".into(), Value::Object(opt.kwargs().clone()));
            internals.insert("optimizer".into(), optimizer_internals(opt.class(), sd));
        }
        if let Some(sched) = scheduler {
            metadata.insert("scheduler_kwargs".into(), Value::Object(sched.kwargs().clone()));
            internals.insert(
                "scheduler".into(),
                serde_json::json!({ "class": sched.class(), "state": Value::Object(sched.state_dict()) }),
            );
        }
        let producer = Producer {
            language: self.language.clone(),
            ..Producer::this_library()
        };
        internals.insert("producer".into(), producer.to_json());
        metadata.insert("timestamp".into(), timestamp.into());
        for (k, v) in &user.map {
            metadata.insert(k.clone(), v.clone());
        }
        metadata.insert(INTERNALS_KEY.into(), Value::Object(internals));

        let state = model.state_dict();
        let model_sources = state
            .iter()
            .map(|(name, t)| TchSource::new(name.clone(), t))
            .collect::<Result<Vec<_>>>()?;
        let mut members = vec![TensorMember {
            name: MemberName::Model,
            tensors: model_sources.iter().map(|s| s as &dyn TensorSource).collect(),
        }];
        let opt_sources = match &opt_state {
            Some(sd) => sd
                .state
                .iter()
                .flat_map(|(i, s)| s.iter().map(move |(k, t)| (format!("state.{i}.{k}"), t)))
                .map(|(name, t)| TchSource::new(name, t))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        if opt_state.is_some() {
            members.push(TensorMember {
                name: MemberName::Optimizer,
                tensors: opt_sources.iter().map(|s| s as &dyn TensorSource).collect(),
            });
        }
        let stem = match prefix {
            "" => format!("{}_{timestamp}", kind.as_str()),
            p => format!("{p}_{}_{timestamp}", kind.as_str()),
        };
        Ok(format::write_checkpoint(
            dir,
            &stem,
            &metadata,
            &members,
            &self.write_options,
        )?)
    }

    /// Loads a file: validates it completely, rebuilds the model, optimizer
    /// and scheduler it names through the registry, and loads their state,
    /// with the default [`LoadOptions`] (verified, zero-copy from a private
    /// mapping of the file). Returns the flat metadata (`model_kwargs`,
    /// `optim_kwargs`, `scheduler_kwargs`, `timestamp`, the user's
    /// keys...). All or nothing: on any error the container keeps what it
    /// held before.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<Map<String, Value>> {
        self.load_with(path, &LoadOptions::default())
    }

    /// [`load`](Self::load) with options: copy instead of mapping, or skip
    /// the CRC-32 of the tensor data.
    pub fn load_with(&mut self, path: impl AsRef<Path>, options: &LoadOptions) -> Result<Map<String, Value>> {
        let ckpt = Checkpoint::open_with(path, options.read_options())?;
        let built = Built::from_file(&self.registry, &ckpt, self.device, options)?;
        self.install(built);
        Ok(flat_metadata(&ckpt))
    }

    /// Loads a file's state into the objects the container already holds,
    /// keeping the tensors' storage (so that tensors the caller holds see
    /// the values). The file must hold the same parts as the container
    /// (model class, optimizer class, scheduler class; an inference file
    /// restores a container that has a model only). Every check runs, and
    /// the optimizer and scheduler state is prepared, before any byte of
    /// the model is copied; constructor kwargs are not compared: state
    /// that fits is loaded.
    pub fn restore(&mut self, path: impl AsRef<Path>) -> Result<Map<String, Value>> {
        self.restore_with(path, &LoadOptions::default())
    }

    /// [`restore`](Self::restore) with options: `verify` as for a load
    /// (`copy` does not apply: restoring always copies, straight from the
    /// file's mapping into the existing tensors, on several threads).
    pub fn restore_with(&mut self, path: impl AsRef<Path>, options: &LoadOptions) -> Result<Map<String, Value>> {
        let ckpt = Checkpoint::open_with(path, options.read_options())?;
        let manifest = ckpt.manifest();
        let model = self.model.as_ref().ok_or(Error::NotInitialized)?;
        let parts = [
            ("model", Some(model.class.as_str()), Some(manifest.model_class.as_str())),
            (
                "optimizer",
                self.optimizer.as_ref().map(Optimizer::class),
                manifest.optimizer_class.as_deref(),
            ),
            (
                "scheduler",
                self.scheduler.as_ref().map(Scheduler::class),
                manifest.scheduler_class.as_deref(),
            ),
        ];
        for (part, ours, theirs) in parts {
            if ours != theirs {
                return Err(Error::StateMismatch {
                    tensor: part.into(),
                    reason: format!(
                        "the file holds {}, the container {}",
                        theirs.unwrap_or("none"),
                        ours.unwrap_or("none")
                    ),
                });
            }
        }
        model.check_state(&ckpt)?;
        let copying = options.with_copy(true);
        let prepared = match &self.optimizer {
            Some(opt) => Some(opt.prepare_load(optimizer_state(&ckpt, &copying)?)?),
            None => None,
        };
        let scheduler = match (&self.scheduler, &prepared) {
            (Some(sched), Some(p)) => {
                let mut s = sched.clone();
                s.load_state_dict(scheduler_state(&ckpt)?, &p.groups)?;
                Some(s)
            }
            _ => None,
        };
        self.model.as_mut().expect("checked above").copy_state(&ckpt)?;
        if let (Some(opt), Some(p)) = (self.optimizer.as_mut(), prepared) {
            opt.commit_load(p);
        }
        if scheduler.is_some() {
            self.scheduler = scheduler;
        }
        Ok(flat_metadata(&ckpt))
    }
}

/// `__pytorch_saver__.optimizer` for a state (FORMAT.md section 5).
fn optimizer_internals(class: &str, sd: &OptimizerState) -> Value {
    let state: Map<String, Value> = sd
        .state
        .keys()
        .map(|i| (i.to_string(), Value::Object(Map::new())))
        .collect();
    serde_json::json!({
        "class": class,
        "param_groups": sd.param_groups.iter().map(ParamGroup::to_json).collect::<Vec<_>>(),
        "param_names": sd.param_names,
        "state": state,
    })
}

/// The optimizer state of a checkpoint (its layout is validated by
/// `Checkpoint::open`): groups and names from the JSON, tensors mapped
/// from the file or copied into new CPU tensors, as `options` say.
fn optimizer_state(ckpt: &Checkpoint, options: &LoadOptions) -> Result<OptimizerState> {
    let invalid = |what: &str, reason: String| Error::InvalidState {
        what: format!("{INTERNALS_KEY}.optimizer.{what}"),
        reason,
    };
    let internals = &ckpt.metadata()[INTERNALS_KEY]["optimizer"];
    let param_groups = internals["param_groups"]
        .as_array()
        .map(|g| g.iter().map(ParamGroup::from_json).collect::<Result<Vec<_>>>())
        .transpose()?
        .unwrap_or_default();
    let param_names = internals["param_names"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut state: BTreeMap<usize, ParamState> = BTreeMap::new();
    for (index, plain) in internals["state"].as_object().into_iter().flatten() {
        if let Some(key) = plain.as_object().and_then(|o| o.keys().next()) {
            return Err(invalid(
                &format!("state.{index}.{key}"),
                "non-tensor state values are not used by the built-in optimizers".into(),
            ));
        }
        let i = index
            .parse()
            .map_err(|_| invalid("state", format!("bad index {index:?}")))?;
        state.insert(i, ParamState::new());
    }
    let layout = ckpt
        .manifest()
        .optimizer
        .as_ref()
        .expect("a file with an optimizer has its layout");
    for entry in ckpt.tensors(MemberName::Optimizer) {
        let (i, key) = layout
            .check_tensor_name(&entry.name)
            .map_err(|reason| invalid("state", reason))?;
        let tensor = match options.copy {
            true => read_new(ckpt, entry)?,
            false => mapped(ckpt, entry)?,
        };
        state.entry(i).or_default().insert(key.to_owned(), tensor);
    }
    Ok(OptimizerState {
        param_groups,
        param_names,
        state,
    })
}

/// `__pytorch_saver__.scheduler.state` (an object: checked at open).
fn scheduler_state(ckpt: &Checkpoint) -> Result<&Map<String, Value>> {
    ckpt.metadata()[INTERNALS_KEY]["scheduler"]["state"]
        .as_object()
        .ok_or_else(|| Error::InvalidState {
            what: format!("{INTERNALS_KEY}.scheduler.state"),
            reason: "must be an object".into(),
        })
}

/// Every top-level key but the format internals.
pub(crate) fn flat_metadata(ckpt: &Checkpoint) -> Map<String, Value> {
    ckpt.metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != INTERNALS_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
