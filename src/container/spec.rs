//! [`ContainerSpec`]: what [`ModelContainer::initialize`](super::ModelContainer::initialize)
//! builds, each object as a [`ClassSpec`] (registry class name and
//! constructor kwargs).

use serde_json::{Map, Value};

pub use crate::format::ClassSpec;

/// What [`ModelContainer::initialize`](super::ModelContainer::initialize)
/// builds: a model, and optionally an optimizer over its parameters and a
/// scheduler over that optimizer, each by registry name and constructor
/// kwargs.
///
/// ```no_run
/// # use pytorch_saver::{models, optim, sched, ContainerSpec};
/// # use serde_json::json;
/// # let kw = |v: serde_json::Value| v.as_object().unwrap().clone();
/// let spec = ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
///     .optimizer(optim::ADAM, kw(json!({"lr": 1e-3})))
///     .scheduler(sched::STEP_LR, kw(json!({"step_size": 10})));
/// ```
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub(super) model: ClassSpec,
    pub(super) optimizer: Option<ClassSpec>,
    pub(super) scheduler: Option<ClassSpec>,
}

impl ContainerSpec {
    /// A model alone.
    pub fn model(class: &str, kwargs: Map<String, Value>) -> Self {
        ContainerSpec {
            model: ClassSpec::new(class, kwargs),
            optimizer: None,
            scheduler: None,
        }
    }

    /// Adds an optimizer over the model's parameters (`torch.optim.Adam`, ...).
    pub fn optimizer(mut self, class: &str, kwargs: Map<String, Value>) -> Self {
        self.optimizer = Some(ClassSpec::new(class, kwargs));
        self
    }

    /// Adds an LR scheduler over the optimizer
    /// (`torch.optim.lr_scheduler.StepLR`, ...); it needs an optimizer.
    pub fn scheduler(mut self, class: &str, kwargs: Map<String, Value>) -> Self {
        self.scheduler = Some(ClassSpec::new(class, kwargs));
        self
    }
}
