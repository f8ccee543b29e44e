//! `ModelContainer`: initialize objects by name and kwargs, save them with
//! metadata, load them back with nothing but the file.
//!
//! - `options.rs`: [`LoadOptions`];
//! - `user_metadata.rs`: [`UserMetadata`], the user's keys of a file;
//! - `spec.rs`: [`ContainerSpec`], what [`ModelContainer::initialize`] builds;
//! - `model.rs`: [`Model`], a model built through the registry, and how a
//!   file's model state reaches it;
//! - `built.rs`: the three objects built from a spec;
//! - `save.rs`: the metadata document and tensor members of a save;
//! - `load.rs`: the one flow of `load` and `restore`;
//! - `tracked.rs`: the extra state objects tracked by name (FORMAT.md
//!   11.3), and how a save writes and a load restores them;
//! - `snapshot.rs`: a save's tensors copied into a reused buffer, written
//!   later on another thread (the checkpoint manager's background saves).

mod built;
mod load;
mod model;
mod options;
mod save;
mod snapshot;
mod spec;
mod tracked;
mod user_metadata;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use tch::Device;

use crate::error::{Error, Result};
use crate::extra_state::Stateful;
use crate::format::{FileKind, WriteOptions, FORMAT_VERSION};
use crate::optim::Optimizer;
use crate::progress::Progress;
use crate::registry::Registry;
use crate::sched::Scheduler;
use built::Built;
use load::Target;
pub use model::Model;
pub use options::LoadOptions;
pub(crate) use snapshot::Snapshot;
pub use spec::{ClassSpec, ContainerSpec};
pub use user_metadata::{MetadataValue, UserMetadata};

/// The objects a container holds, borrowed together so that a training
/// loop can use all three (PyTorch's `objs.model`, `.optimizer`, `.scheduler`).
#[derive(Debug)]
pub struct Parts<'a> {
    pub model: &'a mut Model,
    pub optimizer: Option<&'a mut Optimizer>,
    pub scheduler: Option<&'a mut Scheduler>,
}

/// Saves and loads a model, its optimizer and its LR scheduler, with their
/// constructor kwargs and free metadata.
///
/// ```no_run
/// use pytorch_saver::{models, optim, sched, ContainerSpec, ModelContainer, UserMetadata};
/// use serde_json::json;
///
/// let kw = |v: serde_json::Value| v.as_object().unwrap().clone();
/// let mut container = ModelContainer::new();
/// container.initialize(
///     ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
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
    /// Extra state objects saved with every checkpoint, by name, in the
    /// order they were tracked.
    tracked: Vec<(String, Box<dyn Stateful>)>,
    /// The format version `save` writes (FORMAT_VERSION, or 1 for old
    /// readers).
    format_version: u64,
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
            tracked: Vec::new(),
            format_version: FORMAT_VERSION,
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

    /// Writer options: forced ZIP64 records (for tests) and the progress
    /// callback of every save.
    pub fn with_write_options(mut self, options: WriteOptions) -> Self {
        self.write_options = options;
        self
    }

    /// Reports the progress of every later save ([`save`](Self::save),
    /// [`save_inference`](Self::save_inference), a checkpoint manager's
    /// saves) to `progress`, or to nobody (`None`): the total is the
    /// file's size, the count the bytes written (see
    /// [`WriteOptions::progress`]). A background save reports from its
    /// writing thread until it is waited for.
    pub fn set_save_progress(&mut self, progress: Option<Progress>) {
        self.write_options.progress = progress;
    }

    /// Writes format version `version` (1 or the current one, 2): version
    /// 1 for readers that know only it. A version 1 save refuses
    /// (`InvalidInput`, before creating a file) what version 1 cannot
    /// hold: tracked extra state, tagged kwargs.
    pub fn with_format_version(mut self, version: u64) -> Result<Self> {
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(Error::Usage(format!(
                "format version {version} cannot be written: 1 to {FORMAT_VERSION}"
            )));
        }
        self.format_version = version;
        Ok(self)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Builds the model, and the optimizer and scheduler if the spec has
    /// them, replacing what the container held (only once all are built:
    /// on error it keeps what it had). A scheduler without an optimizer is
    /// an error, as is any unknown name or kwarg.
    pub fn initialize(&mut self, spec: ContainerSpec) -> Result<Parts<'_>> {
        let built = Built::new(&self.registry, spec, self.device)?;
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

    /// `optimizer.step(closure)`: LBFGS calls `closure` as often as it
    /// needs, any other optimizer once before its step (see
    /// [`Optimizer::step_with_closure`]). The closure zeroes the gradients
    /// (`Tensor::zero_grad` on the parameters), computes the loss, runs
    /// backward and returns the loss; returns its first loss.
    pub fn step_with_closure(&mut self, closure: &mut dyn FnMut() -> Result<f64>) -> Result<f64> {
        self.require_optimizer()?.step_with_closure(closure)
    }

    /// Takes the optimizer out for a step whose closure (a C callback)
    /// may use the container meanwhile; [`lend_back`](Self::lend_back)
    /// returns it.
    pub(crate) fn lend_optimizer(&mut self) -> Result<Optimizer> {
        self.require_optimizer()?;
        Ok(self.optimizer.take().expect("checked above"))
    }

    /// Puts back the optimizer [`lend_optimizer`](Self::lend_optimizer) took.
    pub(crate) fn lend_back(&mut self, optimizer: Optimizer) {
        self.optimizer = Some(optimizer);
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

    /// Saves a training checkpoint (model, optimizer and scheduler, and
    /// the state of every tracked object) into `dir` as
    /// `{prefix}_checkpoint_{unix seconds}.zip` and returns its path.
    pub fn save(&self, dir: impl AsRef<Path>, prefix: &str, metadata: &UserMetadata) -> Result<PathBuf> {
        self.write(dir.as_ref(), prefix, metadata, FileKind::Checkpoint)
    }

    /// Saves the model alone, as `{prefix}_inference_{unix seconds}.zip`.
    pub fn save_inference(&self, dir: impl AsRef<Path>, prefix: &str, metadata: &UserMetadata) -> Result<PathBuf> {
        self.write(dir.as_ref(), prefix, metadata, FileKind::Inference)
    }

    /// Loads a file: validates it completely, rebuilds the model, optimizer
    /// and scheduler it names through the registry, and loads their state
    /// and the file's extra state (into the objects tracked under the same
    /// names; file entries not tracked are left alone, and every tracked
    /// name must have one), with the default [`LoadOptions`] (verified,
    /// zero-copy from a private mapping of the file). Returns the flat metadata (`model_kwargs`,
    /// `optim_kwargs`, `scheduler_kwargs`, `timestamp`, the user's
    /// keys...). All or nothing: on any error the container keeps what it
    /// held before.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<Map<String, Value>> {
        self.load_with(path, &LoadOptions::default())
    }

    /// [`load`](Self::load) with options: copy instead of mapping, or skip
    /// the CRC-32 of the tensor data.
    pub fn load_with(&mut self, path: impl AsRef<Path>, options: &LoadOptions) -> Result<Map<String, Value>> {
        self.read_file(path.as_ref(), options, Target::New)
    }

    /// Loads a file's state into the objects the container already holds,
    /// keeping the tensors' storage (so that tensors the caller holds see
    /// the values). The file must hold the same parts as the container
    /// (model class, optimizer class, scheduler class; an inference file
    /// restores a container that has a model only). Every check runs, and
    /// the optimizer and scheduler state is prepared, before any byte of
    /// the model is copied; constructor kwargs are not compared: state
    /// that fits is loaded. Tracked objects are restored as by a load.
    pub fn restore(&mut self, path: impl AsRef<Path>) -> Result<Map<String, Value>> {
        self.restore_with(path, &LoadOptions::default())
    }

    /// [`restore`](Self::restore) with options: `verify` as for a load
    /// (`copy` does not apply: restoring always copies, straight from the
    /// file's mapping into the existing tensors, on several threads).
    pub fn restore_with(&mut self, path: impl AsRef<Path>, options: &LoadOptions) -> Result<Map<String, Value>> {
        self.read_file(path.as_ref(), options, Target::Held)
    }
}
