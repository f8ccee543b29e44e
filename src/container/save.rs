//! Writing a container's objects: the typed metadata document of
//! what it holds (its tracked extra state included), and the tensor
//! members, handed to the format's writer, either straight from the
//! tensors or (for a save that runs in the background) from a snapshot
//! of their bytes (`snapshot.rs`).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Map;
use tch::Tensor;

use super::{ModelContainer, UserMetadata};
use crate::error::{Error, Result};
use crate::format::{
    self, FileKind, FormatError, ManagerRecord, MemberName, Metadata, OptimizerMetadata, SchedulerMetadata,
    TensorMember, TensorSource,
};
use crate::optim::OptimizerState;
use crate::tch_bridge::TchSource;

/// Everything a save writes, decided: the metadata document, the file
/// name stem, and each tensor member's tensors (handles on the live
/// tensors, not copies) in member order.
pub(crate) struct SavePlan {
    pub(crate) metadata: Metadata,
    pub(crate) stem: String,
    pub(crate) members: Vec<(MemberName, Vec<(String, Tensor)>)>,
}

impl ModelContainer {
    /// Writes `kind` (a checkpoint holds the optimizer, scheduler and
    /// tracked extra state, an inference file the model alone) into `dir` as
    /// `{prefix}_{kind}_{unix seconds}.zip`.
    pub(super) fn write(&self, dir: &Path, prefix: &str, user: &UserMetadata, kind: FileKind) -> Result<PathBuf> {
        let plan = self.plan_save(prefix, user, kind, None)?;
        self.write_plan(dir, &plan)
    }

    /// Saves a checkpoint as [`save`](Self::save) does, with a checkpoint
    /// manager's block (FORMAT.md 11.4) in its metadata.
    pub(crate) fn save_managed(
        &self,
        dir: &Path,
        prefix: &str,
        user: &UserMetadata,
        record: ManagerRecord,
    ) -> Result<PathBuf> {
        let plan = self.plan_save(prefix, user, FileKind::Checkpoint, Some(record))?;
        self.write_plan(dir, &plan)
    }

    /// Writes a plan from the live tensors.
    fn write_plan(&self, dir: &Path, plan: &SavePlan) -> Result<PathBuf> {
        let sources = plan
            .members
            .iter()
            .map(|(_, tensors)| {
                tensors
                    .iter()
                    .map(|(name, t)| TchSource::new(name.clone(), t))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let members: Vec<TensorMember<'_>> = plan
            .members
            .iter()
            .zip(&sources)
            .map(|((name, _), sources)| TensorMember {
                name: *name,
                tensors: sources.iter().map(|s| s as &dyn TensorSource).collect(),
            })
            .collect();
        Ok(format::write_checkpoint(
            dir,
            &plan.stem,
            &plan.metadata,
            &members,
            &self.write_options,
        )?)
    }

    /// Decides what a save of `kind` writes: checks the user metadata and
    /// prefix, builds the metadata document (with `manager` as its manager
    /// block) and collects the tensors of each member.
    pub(crate) fn plan_save(
        &self,
        prefix: &str,
        user: &UserMetadata,
        kind: FileKind,
        manager: Option<ManagerRecord>,
    ) -> Result<SavePlan> {
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

        let extra = match training && !self.tracked.is_empty() {
            true => Some(self.saved_extra()?),
            false => None,
        };
        if let (1, Some(extra)) = (self.format_version, &extra) {
            let names: Vec<&str> = extra.entries.iter().map(|e| e.name.as_str()).collect();
            return Err(FormatError::InvalidInput(format!(
                "format version 1 cannot hold extra state, and the container tracks {names:?}: \
                 save version 2, or untrack them"
            ))
            .into());
        }

        let mut metadata = Metadata::new(kind, model.spec().clone(), timestamp);
        metadata.format_version = self.format_version;
        metadata.producer.language = self.language.clone();
        metadata.manager = manager;
        let mut members = vec![(MemberName::Model, model.state_dict().into_iter().collect())];
        if let Some(opt) = optimizer {
            let OptimizerState {
                param_groups,
                param_names,
                state,
                mut values,
            } = opt.state_dict()?;
            // Every index with state has a JSON object, holding its
            // non-tensor values (LBFGS's), empty for the others.
            for &i in state.keys() {
                values.entry(i).or_insert_with(Map::new);
            }
            metadata.optimizer = Some(OptimizerMetadata {
                class: opt.class().into(),
                kwargs: opt.kwargs().clone(),
                param_groups,
                param_names,
                state: values,
            });
            let tensors = state
                .into_iter()
                .flat_map(|(i, s)| s.into_iter().map(move |(k, t)| (format!("state.{i}.{k}"), t)))
                .collect();
            members.push((MemberName::Optimizer, tensors));
        }
        if let Some(sched) = scheduler {
            metadata.scheduler = Some(SchedulerMetadata {
                class: sched.class().into(),
                kwargs: sched.kwargs().clone(),
                state: sched.state_dict(),
            });
        }
        metadata.extra = extra.as_ref().map(|e| e.entries.clone());
        metadata.user = user.as_map().clone();
        if let Some(extra) = extra {
            let tensors = extra.states.into_iter().flat_map(|s| s.tensors.into_iter()).collect();
            members.push((MemberName::Extra, tensors));
        }
        let stem = match prefix {
            "" => format!("{}_{timestamp}", kind.as_str()),
            p => format!("{p}_{}_{timestamp}", kind.as_str()),
        };
        Ok(SavePlan {
            metadata,
            stem,
            members,
        })
    }
}
