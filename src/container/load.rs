//! The one flow of [`ModelContainer::load`] and [`ModelContainer::restore`]:
//! open and validate the file; build the objects it names (load) or match
//! the container's own against it (restore); check every part and prepare
//! its state, the tracked objects' too; only then fill the model and
//! commit, so that an error at any step leaves the container as it was.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::{Built, LoadOptions, Model, ModelContainer};
use crate::error::{Error, Result};
use crate::format::{Checkpoint, MemberName, Metadata, OptimizerMetadata, INTERNALS_KEY};
use crate::optim::{Optimizer, OptimizerState, ParamState};
use crate::progress::Tracker;
use crate::sched::Scheduler;
use crate::tch_bridge::{mapped, read_new_tracked};

/// Where a file's state goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// Into objects built from the file's class names and kwargs, which
    /// then replace the container's.
    New,
    /// Into the objects the container holds, keeping their tensors'
    /// storage; the file must hold the same classes.
    Held,
}

impl ModelContainer {
    /// Loads the file at `path` into `target`; returns its flat metadata.
    pub(super) fn read_file(
        &mut self,
        path: &Path,
        options: &LoadOptions,
        target: Target,
    ) -> Result<Map<String, Value>> {
        // Restoring copies into the storage held; a load maps the file or
        // copies, as the options say.
        let copy = options.copy || target == Target::Held;
        let copied: &[MemberName] = match copy {
            true => &[MemberName::Model, MemberName::Optimizer],
            false => &[],
        };
        let (ckpt, tracker) = options.open(path, copied)?;
        let meta = ckpt.metadata();

        // Build or match: the model (its state checked to fit, not yet
        // loaded) and the optimizer.
        let mut fresh = match target {
            Target::New => {
                let model = Model::for_file(&self.registry, &ckpt, self.device)?;
                let optimizer = match &meta.optimizer {
                    Some(o) => Some(self.registry.build_optimizer(&o.class, &o.kwargs, model.parameters())?),
                    None => None,
                };
                Some((model, optimizer))
            }
            Target::Held => {
                self.match_parts(meta)?.check_state(&ckpt)?;
                None
            }
        };
        let optimizer = match &fresh {
            Some((_, optimizer)) => optimizer.as_ref(),
            None => self.optimizer.as_ref(),
        };

        // Prepare the optimizer and scheduler state.
        let prepared = match (optimizer, &meta.optimizer) {
            (Some(opt), Some(saved)) => Some(opt.prepare_load(optimizer_state(&ckpt, saved, copy, &tracker)?)?),
            _ => None,
        };
        let scheduler = match (&meta.scheduler, &prepared) {
            (Some(saved), Some(prepared)) => {
                let mut sched = match target {
                    // Constructed over a copy of the loaded groups: the
                    // constructor's side effects (initial_lr, the initial
                    // step) are then replaced by the saved state, and
                    // kwargs such as last_epoch, which need the groups'
                    // initial_lr, work as they did when it was saved.
                    Target::New => Scheduler::new(&saved.class, &saved.kwargs, &mut prepared.groups.clone())?,
                    Target::Held => self.scheduler.clone().expect("matched by match_parts"),
                };
                sched.load_state_dict(&saved.state, &prepared.groups)?;
                Some(sched)
            }
            _ => None,
        };

        // The tracked objects' state, read and checked.
        let extra = self.prepare_extra(&ckpt)?;

        // Every check has passed: fill the model and commit.
        let (model, optimizer) = match &mut fresh {
            Some((model, optimizer)) => (model, optimizer.as_mut()),
            None => (
                self.model.as_mut().expect("matched by match_parts"),
                self.optimizer.as_mut(),
            ),
        };
        model.fill(&ckpt, copy, &tracker)?;
        if let (Some(opt), Some(prepared)) = (optimizer, prepared) {
            opt.commit_load(prepared);
        }
        match fresh {
            Some((model, optimizer)) => self.install(Built {
                model,
                optimizer,
                scheduler,
            }),
            None => self.scheduler = scheduler,
        }
        self.commit_extra(extra)?;
        tracker.finish();
        Ok(meta.flat())
    }

    /// The container's model, once its model, optimizer and scheduler
    /// classes are those of the file (kwargs are not compared).
    fn match_parts(&self, meta: &Metadata) -> Result<&Model> {
        let model = self.model()?;
        let parts = [
            (
                "model",
                Some(model.class()),
                meta.model.as_ref().map(|m| m.class.as_str()),
            ),
            (
                "optimizer",
                self.optimizer.as_ref().map(Optimizer::class),
                meta.optimizer.as_ref().map(|o| o.class.as_str()),
            ),
            (
                "scheduler",
                self.scheduler.as_ref().map(Scheduler::class),
                meta.scheduler.as_ref().map(|s| s.class.as_str()),
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
        Ok(model)
    }
}

/// The optimizer state of a file: groups and names from its metadata,
/// tensors mapped from the file or copied into new CPU tensors.
fn optimizer_state(
    ckpt: &Checkpoint,
    saved: &OptimizerMetadata,
    copy: bool,
    tracker: &Tracker,
) -> Result<OptimizerState> {
    let invalid = |what: &str, reason: String| Error::InvalidState {
        what: format!("{INTERNALS_KEY}.optimizer.{what}"),
        reason,
    };
    let mut state: BTreeMap<usize, ParamState> = BTreeMap::new();
    let mut values = BTreeMap::new();
    // Non-tensor values go to the optimizer, which refuses those its
    // class does not keep (only LBFGS keeps any).
    for (&index, plain) in &saved.state {
        state.insert(index, ParamState::new());
        if !plain.is_empty() {
            values.insert(index, plain.clone());
        }
    }
    for entry in ckpt.tensors(MemberName::Optimizer) {
        let (index, key) = saved
            .check_tensor_name(&entry.name)
            .map_err(|reason| invalid("state", reason))?;
        let tensor = match copy {
            true => read_new_tracked(ckpt, entry, tracker)?,
            false => mapped(ckpt, entry)?,
        };
        state.entry(index).or_default().insert(key.to_owned(), tensor);
    }
    Ok(OptimizerState {
        param_groups: saved.param_groups.clone(),
        param_names: saved.param_names.clone(),
        state,
        values,
    })
}
