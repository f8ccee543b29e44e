//! [`Built`]: the three objects of a container, built from a
//! [`ContainerSpec`] but not yet in a container.

use tch::Device;

use super::{ContainerSpec, Model};
use crate::error::{Error, Result};
use crate::optim::Optimizer;
use crate::registry::Registry;
use crate::sched::Scheduler;

/// The three objects, built but not yet in a container.
pub(super) struct Built {
    pub(super) model: Model,
    pub(super) optimizer: Option<Optimizer>,
    pub(super) scheduler: Option<Scheduler>,
}

impl Built {
    /// Builds what `spec` names, with freshly initialized state. A
    /// scheduler without an optimizer is an error, as is any unknown name
    /// or kwarg.
    pub(super) fn new(registry: &Registry, spec: ContainerSpec, device: Device) -> Result<Self> {
        if spec.scheduler.is_some() && spec.optimizer.is_none() {
            return Err(Error::Usage(
                "a scheduler needs an optimizer: give an optimizer too, or no scheduler".into(),
            ));
        }
        let model = Model::build(registry, spec.model, device, false)?;
        let mut optimizer = match spec.optimizer {
            Some(o) => Some(registry.build_optimizer(&o.class, &o.kwargs, model.parameters())?),
            None => None,
        };
        let scheduler = match (spec.scheduler, optimizer.as_mut()) {
            (Some(s), Some(opt)) => Some(Scheduler::new(&s.class, &s.kwargs, opt.param_groups_mut())?),
            _ => None,
        };
        Ok(Built {
            model,
            optimizer,
            scheduler,
        })
    }
}
