//! Writing a container's objects: the typed metadata document of
//! what it holds (its tracked extra state included), and the tensor
//! members, handed to the format's writer.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Map;

use super::{ModelContainer, UserMetadata};
use crate::error::{Error, Result};
use crate::format::{
    self, FileKind, FormatError, MemberName, Metadata, OptimizerMetadata, SchedulerMetadata, TensorMember, TensorSource,
};
use crate::optim::OptimizerState;
use crate::tch_bridge::TchSource;

impl ModelContainer {
    /// Writes `kind` (a checkpoint holds the optimizer, scheduler and
    /// tracked extra state, an inference file the model alone) into `dir` as
    /// `{prefix}_{kind}_{unix seconds}.zip`.
    pub(super) fn write(&self, dir: &Path, prefix: &str, user: &UserMetadata, kind: FileKind) -> Result<PathBuf> {
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
        let mut opt_tensors = None;
        if let Some(opt) = optimizer {
            let OptimizerState {
                param_groups,
                param_names,
                state,
            } = opt.state_dict()?;
            metadata.optimizer = Some(OptimizerMetadata {
                class: opt.class().into(),
                kwargs: opt.kwargs().clone(),
                param_groups,
                param_names,
                state: state.keys().map(|&i| (i, Map::new())).collect(),
            });
            opt_tensors = Some(state);
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

        let model_state = model.state_dict();
        let model_sources = model_state
            .iter()
            .map(|(name, t)| TchSource::new(name.clone(), t))
            .collect::<Result<Vec<_>>>()?;
        let mut members = vec![TensorMember {
            name: MemberName::Model,
            tensors: model_sources.iter().map(|s| s as &dyn TensorSource).collect(),
        }];
        let opt_sources = match &opt_tensors {
            Some(state) => state
                .iter()
                .flat_map(|(i, s)| s.iter().map(move |(k, t)| (format!("state.{i}.{k}"), t)))
                .map(|(name, t)| TchSource::new(name, t))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        if opt_tensors.is_some() {
            members.push(TensorMember {
                name: MemberName::Optimizer,
                tensors: opt_sources.iter().map(|s| s as &dyn TensorSource).collect(),
            });
        }
        let extra_sources = match &extra {
            Some(extra) => extra
                .states
                .iter()
                .flat_map(|s| s.tensors.iter())
                .map(|(name, t)| TchSource::new(name.clone(), t))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        if extra.is_some() {
            members.push(TensorMember {
                name: MemberName::Extra,
                tensors: extra_sources.iter().map(|s| s as &dyn TensorSource).collect(),
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
}
