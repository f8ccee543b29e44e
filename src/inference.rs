//! `InferenceModel`: a loaded model that serves forward passes from many
//! threads at once, for inference servers. Read-only by construction: eval
//! mode, no gradients, no optimizer, no train-flag switching.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};
use tch::{Device, Tensor};

use crate::container::{LoadOptions, Model};
use crate::error::Result;
use crate::format::MemberName;
use crate::registry::Registry;

/// A model loaded for inference, shareable between threads (`&self`
/// forward; put it in an `Arc`).
///
/// Models whose eval-mode forward only reads their tensors (the built-in
/// models, and registered models whose [`Forward::as_sync`](crate::Forward::as_sync)
/// says so) run concurrently, with no lock; any other runs one call at a
/// time. Loaded zero-copy by default: several server processes loading
/// the same file share its page cache instead of each holding a copy.
pub struct InferenceModel {
    model: Model,
    /// Serializes forward for models that do not declare themselves safe
    /// to run concurrently.
    serial: Mutex<()>,
}

// SAFETY: `forward` reaches the module either through `as_sync` (a module
// that declares its eval-mode forward safe to run concurrently) or under
// `serial`; the var store is behind its own mutex; nothing else is
// reachable through `&self` except clones of tensor handles, whose
// reference counts are atomic.
unsafe impl Sync for InferenceModel {}

impl std::fmt::Debug for InferenceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceModel")
            .field("model", &self.model)
            .field("concurrent", &self.is_concurrent())
            .finish()
    }
}

impl InferenceModel {
    /// Loads the model of a checkpoint or inference file (an optimizer and
    /// scheduler in it are ignored), on the CPU, with the same checks as
    /// [`ModelContainer::load`](crate::ModelContainer::load). Returns the
    /// model and the flat metadata.
    pub fn load(
        path: impl AsRef<Path>,
        registry: &Registry,
        options: &LoadOptions,
    ) -> Result<(Self, Map<String, Value>)> {
        let copied: &[MemberName] = match options.copy {
            true => &[MemberName::Model],
            false => &[],
        };
        let (ckpt, tracker) = options.open(path.as_ref(), copied)?;
        let model = Model::from_file(registry, &ckpt, Device::Cpu, options, &tracker)?;
        tracker.finish();
        Ok((Self::new(model), ckpt.metadata().flat()))
    }

    /// Serves a model that was built or trained elsewhere.
    pub fn new(model: Model) -> Self {
        InferenceModel {
            model,
            serial: Mutex::new(()),
        }
    }

    /// Eval-mode forward with no gradient tracking; may be called from
    /// several threads at once.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| match self.model.forward_module().as_sync() {
            Some(module) => module.forward_t(xs, false),
            None => {
                // A poisoned lock only means another call failed; the model
                // itself is unchanged by a failed forward.
                let _one_at_a_time = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                self.model.forward_t(xs, false)
            }
        })
    }

    /// Whether forward calls run concurrently (true) or one at a time.
    pub fn is_concurrent(&self) -> bool {
        self.model.forward_module().as_sync().is_some()
    }

    /// The registry name of the model's class.
    pub fn class(&self) -> &str {
        self.model.class()
    }

    /// The constructor kwargs the model was built from.
    pub fn kwargs(&self) -> &Map<String, Value> {
        self.model.kwargs()
    }

    /// The state dict, sorted by name: handles that share the model's
    /// storage. Read them; writing to them while forward calls run is a
    /// data race.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.model.state_dict()
    }
}
