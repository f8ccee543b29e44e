//! `ModelContainer`: initialize objects by name and kwargs, save them with
//! metadata, load them back with nothing but the file.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tch::{nn, Device, Tensor};

use crate::error::{panic_message, Error, Result};
use crate::format::{
    self, Checkpoint, FileKind, MemberName, Producer, TensorMember, TensorSource, WriteOptions, FORMAT_VERSION,
    INTERNALS_KEY, RESERVED_KEYS,
};
use crate::registry::{BoxedModel, Registry};
use crate::tensors::{check_fits, read_into, TchSource};

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

    /// The state dict, sorted by name (shallow clones: they share storage).
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// Runs the model. A libtorch error (say, a wrong input shape) is an
    /// error, not a panic.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        catch_unwind(AssertUnwindSafe(|| self.module.forward_t(xs, train)))
            .map_err(|p| Error::Torch(panic_message(&*p)))
    }

    /// Eval-mode forward with no gradient tracking.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.forward_t(xs, false))
    }

    /// Loads the file's model tensors into this model: every name must be
    /// present on both sides with the same dtype and shape, and all of that
    /// is checked before the first byte is copied.
    fn load_state(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let entries = ckpt.tensors(MemberName::Model);
        let mut vars = self.vs.variables();
        for e in entries {
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
        for e in entries {
            let dst = vars.get_mut(&e.name).expect("checked above");
            read_into(ckpt, e, dst)?;
        }
        Ok(())
    }
}

/// Saves and loads a model with its constructor kwargs and free metadata.
///
/// ```no_run
/// use pytorch_saver::{ModelContainer, UserMetadata, models};
/// use serde_json::json;
///
/// let mut container = ModelContainer::new();
/// let kwargs = json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3});
/// container.initialize(models::MLP, kwargs.as_object().unwrap().clone())?;
/// let meta = UserMetadata::new().with("loss", 0.55)?.with("epoch", 5)?;
/// let path = container.save("./", "tutorial", &meta)?;
///
/// let mut restored = ModelContainer::new();
/// let metadata = restored.load(&path)?;
/// assert_eq!(metadata["epoch"], 5);
/// # Ok::<(), pytorch_saver::Error>(())
/// ```
pub struct ModelContainer {
    registry: Arc<Registry>,
    device: Device,
    model: Option<Model>,
    write_options: WriteOptions,
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
            write_options: WriteOptions::default(),
        }
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

    /// Builds a model by registry name and kwargs, replacing any model the
    /// container held (only once the new one is built).
    pub fn initialize(&mut self, model: &str, kwargs: Map<String, Value>) -> Result<&mut Model> {
        let built = Model::build(&self.registry, model, kwargs, self.device, false)?;
        Ok(self.model.insert(built))
    }

    pub fn model(&self) -> Result<&Model> {
        self.model.as_ref().ok_or(Error::NotInitialized)
    }

    pub fn model_mut(&mut self) -> Result<&mut Model> {
        self.model.as_mut().ok_or(Error::NotInitialized)
    }

    /// Saves a training checkpoint into `dir` as
    /// `{prefix}_checkpoint_{unix seconds}.zip` and returns its path.
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

        let mut internals = Map::new();
        internals.insert("format_version".into(), FORMAT_VERSION.into());
        internals.insert("kind".into(), kind.as_str().into());
        internals.insert("model".into(), serde_json::json!({ "class": model.class }));
        internals.insert("producer".into(), Producer::this_library().to_json());
        let mut metadata = Map::new();
        metadata.insert("model_kwargs".into(), Value::Object(model.kwargs.clone()));
        metadata.insert("timestamp".into(), timestamp.into());
        for (k, v) in &user.map {
            metadata.insert(k.clone(), v.clone());
        }
        metadata.insert(INTERNALS_KEY.into(), Value::Object(internals));

        let state = model.state_dict();
        let sources = state
            .iter()
            .map(|(name, t)| TchSource::new(name.clone(), t))
            .collect::<Result<Vec<_>>>()?;
        let members = [TensorMember {
            name: MemberName::Model,
            tensors: sources.iter().map(|s| s as &dyn TensorSource).collect(),
        }];
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

    /// Loads a file: validates it completely, rebuilds the model it names
    /// through the registry, and loads its state. Returns the flat metadata
    /// (`model_kwargs`, `timestamp`, the user's keys...). On any error the
    /// container keeps what it held before.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<Map<String, Value>> {
        let ckpt = Checkpoint::open(path)?;
        let manifest = ckpt.manifest();
        // The format layer has checked that model_kwargs is an object.
        let kwargs = ckpt
            .metadata()
            .get("model_kwargs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut model = Model::build(&self.registry, &manifest.model_class, kwargs, self.device, true)?;
        model.load_state(&ckpt)?;
        self.model = Some(model);
        Ok(flat_metadata(&ckpt))
    }

    /// Loads a file's state into the model the container already holds
    /// (same class; every tensor must fit), keeping the tensors' storage,
    /// so that tensors the caller holds (an optimizer's) see the values.
    /// All checks run before any byte is copied. The file's model kwargs
    /// are not compared with the container's: tensors that fit are loaded.
    pub fn restore(&mut self, path: impl AsRef<Path>) -> Result<Map<String, Value>> {
        let ckpt = Checkpoint::open(path)?;
        let model = self.model.as_mut().ok_or(Error::NotInitialized)?;
        if model.class != ckpt.manifest().model_class {
            return Err(Error::StateMismatch {
                tensor: "model".into(),
                reason: format!(
                    "the file holds {}, the container {}",
                    ckpt.manifest().model_class,
                    model.class
                ),
            });
        }
        model.load_state(&ckpt)?;
        Ok(flat_metadata(&ckpt))
    }
}

/// Every top-level key but the format internals.
fn flat_metadata(ckpt: &Checkpoint) -> Map<String, Value> {
    ckpt.metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != INTERNALS_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
