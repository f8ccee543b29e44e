//! [`Contents`] to a file of this format: a checkpoint when a model class
//! is known (with the optimizer and the scheduler when the input has their
//! state and their classes are known), an inference file when asked, and
//! otherwise a weights file. State the output would lose is refused, never
//! dropped silently.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::publish::split_output;
use super::{tensor_bytes, Contents, ConvertOptions, ForeignOptimizer, ForeignTensor};
use crate::error::{Error, Result};
use crate::format::metadata::ParamGroup;
use crate::format::{
    write_checkpoint, ClassSpec, Dtype, FileKind, MemberName, Metadata, OptimizerMetadata, Producer, SchedulerMetadata,
    TensorMember, TensorSource, WriteOptions, FORMAT_VERSION,
};
use crate::progress::Tracker;

/// The per-parameter optimizer state that torch 2.13 keeps as one-element
/// tensors, whatever the parameter's shape (FORMAT.md 5): every
/// optimizer's `step`, NAdam's `mu_product`, ASGD's `eta` and `mu`.
const RANK0_STATE: [&str; 4] = ["step", "mu_product", "eta", "mu"];

/// Whether optimizer state `key` of shape `state` fits a parameter of
/// shape `param`: one element for the [`RANK0_STATE`], Adafactor's
/// factored `row_var` (last dimension 1) and `col_var` (second-to-last 1)
/// for a parameter of two or more dimensions, else the parameter's shape.
fn state_fits(key: &str, state: &[usize], param: &[usize]) -> bool {
    let n = param.len();
    match key {
        k if RANK0_STATE.contains(&k) => state.iter().product::<usize>() == 1,
        "row_var" if n > 1 => state[..] == [&param[..n - 1], &[1]].concat()[..],
        "col_var" if n > 1 => state[..] == [&param[..n - 2], &[1], &param[n - 1..]].concat()[..],
        _ => state == param,
    }
}

/// Buffers have no optimizer state: the entries of a state dict that are
/// not parameters, by the suffixes of torch.nn's normalization layers.
const BUFFER_SUFFIXES: &[&str] = &["running_mean", "running_var", "num_batches_tracked"];

/// A tensor source that reports its bytes to a tracker as the writer takes
/// them.
struct Tracked<'a> {
    tensor: &'a ForeignTensor,
    /// The name in its member (`state.<i>.<key>` for optimizer state).
    name: Cow<'a, str>,
    tracker: &'a Tracker,
}

impl TensorSource for Tracked<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn dtype(&self) -> Dtype {
        self.tensor.dtype
    }
    fn shape(&self) -> Vec<usize> {
        self.tensor.shape.clone()
    }
    fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>> {
        let bytes = self.tensor.data.as_slice();
        self.tracker.advance(bytes.len() as u64);
        Ok(Cow::Borrowed(bytes))
    }
}

fn usage(output: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{}: {reason}", output.display()))
}

/// Writes `contents` as the file `output` (which must end in `.zip` and
/// not exist; its directory must exist).
pub(crate) fn write_pytorch_saver(contents: &Contents, output: &Path, options: &ConvertOptions) -> Result<PathBuf> {
    let (dir, name) = split_output(output)?;
    let stem = name
        .strip_suffix(".zip")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| usage(output, "a pytorch-saver file's name ends in .zip"))?;
    let model_class = options.model.as_ref().or(contents.model_class.as_ref());
    let kind = match (model_class, options.inference) {
        (Some(_), true) => FileKind::Inference,
        (Some(_), false) => FileKind::Checkpoint,
        (None, _) => FileKind::Weights,
    };
    if !options.inference {
        refuse_dropped_state(contents, output, model_class.is_some(), options)?;
    }
    let optimizer = match (kind, &contents.optimizer) {
        (FileKind::Checkpoint, Some(foreign)) => {
            let class = options
                .optimizer
                .as_ref()
                .or(foreign.class.as_ref())
                .expect("refuse_dropped_state checked the class");
            Some(optimizer_metadata(foreign, class, &contents.model, output)?)
        }
        _ => None,
    };
    let scheduler = match (&optimizer, &contents.scheduler) {
        (Some(_), Some(foreign)) => {
            let class = options
                .scheduler
                .as_ref()
                .or(foreign.class.as_ref())
                .expect("refuse_dropped_state checked the class");
            Some(SchedulerMetadata {
                class: class.class.clone(),
                kwargs: class.kwargs.clone(),
                state: foreign.state.clone(),
            })
        }
        _ => None,
    };
    if options.optimizer.is_some() && optimizer.is_none() {
        return Err(usage(
            output,
            "--optimizer was given, but the input holds no optimizer state or the output is no checkpoint",
        ));
    }
    if options.scheduler.is_some() && scheduler.is_none() {
        return Err(usage(
            output,
            "--scheduler was given, but the input holds no scheduler state or the output is no checkpoint",
        ));
    }
    let metadata = Metadata {
        format_version: FORMAT_VERSION,
        kind,
        model: (kind != FileKind::Weights).then(|| model_class.cloned()).flatten(),
        optimizer,
        scheduler,
        extra: None,
        manager: None,
        shard: None,
        producer: Producer::this_library(),
        timestamp: contents
            .timestamp
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())),
        user: contents.user.clone(),
    };

    let optimizer_tensors: Vec<(String, &ForeignTensor)> = match (&metadata.optimizer, &contents.optimizer) {
        (Some(_), Some(o)) => o
            .state
            .iter()
            .flat_map(|(i, (tensors, _))| tensors.iter().map(move |t| (format!("state.{i}.{}", t.name), t)))
            .collect(),
        _ => Vec::new(),
    };
    let total = tensor_bytes(contents.model.iter().chain(optimizer_tensors.iter().map(|(_, t)| *t)));
    let tracker = Tracker::maybe(options.progress.as_ref(), total);
    let model: Vec<Tracked<'_>> = contents
        .model
        .iter()
        .map(|t| Tracked {
            tensor: t,
            name: Cow::Borrowed(&t.name),
            tracker: &tracker,
        })
        .collect();
    let state: Vec<Tracked<'_>> = optimizer_tensors
        .iter()
        .map(|(name, t)| Tracked {
            tensor: t,
            name: Cow::Borrowed(name),
            tracker: &tracker,
        })
        .collect();
    let mut members = vec![TensorMember {
        name: MemberName::Model,
        tensors: model.iter().map(|t| t as &dyn TensorSource).collect(),
    }];
    if metadata.optimizer.is_some() {
        members.push(TensorMember {
            name: MemberName::Optimizer,
            tensors: state.iter().map(|t| t as &dyn TensorSource).collect(),
        });
    }
    let written = write_checkpoint(&dir, stem, &metadata, &members, &WriteOptions::default())?;
    if written != dir.join(&name) {
        // Another process took the name between the check and the write:
        // the file is ours, under a name nobody asked for.
        let _ = std::fs::remove_file(&written);
        return Err(usage(output, "already exists: conversions never replace a file"));
    }
    tracker.finish();
    Ok(output.to_path_buf())
}

/// Refuses a conversion that would drop the input's optimizer or scheduler
/// state because no class is known for it (or for the model).
fn refuse_dropped_state(contents: &Contents, output: &Path, model_known: bool, options: &ConvertOptions) -> Result<()> {
    let Some(optimizer) = &contents.optimizer else {
        return Ok(());
    };
    if !model_known {
        return Err(usage(
            output,
            "the input holds optimizer state, and a checkpoint needs the model class: give --model \
             (with --model-kwargs) and --optimizer, or --inference to write the model's tensors alone",
        ));
    }
    if options.optimizer.is_none() && optimizer.class.is_none() {
        return Err(usage(
            output,
            "the input holds optimizer state but names no optimizer class: give --optimizer (with \
             --optim-kwargs), or --inference to write the model alone",
        ));
    }
    if let Some(scheduler) = &contents.scheduler {
        if options.scheduler.is_none() && scheduler.class.is_none() {
            return Err(usage(
                output,
                "the input holds scheduler state but names no scheduler class: give --scheduler \
                 (with --scheduler-kwargs), or --inference to write the model alone",
            ));
        }
    }
    Ok(())
}

/// `__pytorch_saver__.optimizer` for `foreign` built as `class`, with each
/// parameter index named: by the input's names, or else by the model's
/// floating-point entries that are not buffers, in order; either way
/// checked against the state's shapes.
fn optimizer_metadata(
    foreign: &ForeignOptimizer,
    class: &ClassSpec,
    model: &[ForeignTensor],
    output: &Path,
) -> Result<OptimizerMetadata> {
    let invalid = |reason: String| Error::InvalidForeign {
        file: output.to_path_buf(),
        reason,
    };
    let mut param_groups = Vec::with_capacity(foreign.param_groups.len());
    for (g, group) in foreign.param_groups.iter().enumerate() {
        let mut options = group.clone();
        let params = options
            .shift_remove("params")
            .and_then(|p| {
                p.as_array()?
                    .iter()
                    .map(|i| i.as_u64().and_then(|i| usize::try_from(i).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| {
                invalid(format!(
                    "optimizer parameter group {g} has no list of parameter indices"
                ))
            })?;
        param_groups.push(ParamGroup::new(params, options));
    }
    let count: usize = param_groups.iter().map(|g| g.params.len()).sum();
    let by_name: HashMap<&str, &ForeignTensor> = model.iter().map(|t| (t.name.as_str(), t)).collect();
    let (param_names, derived) = match &foreign.param_names {
        Some(names) => (names.clone(), false),
        None => (derived_param_names(model), true),
    };
    let cannot = |why: String| {
        invalid(if derived {
            format!(
                "the optimizer's parameter names cannot be derived from the model's state dict ({why}); \
                 convert from Python, where the model is built: load the training dict and save it with \
                 pytorch_saver"
            )
        } else {
            format!("the optimizer's parameter names do not fit the model: {why}")
        })
    };
    if param_names.len() != count {
        return Err(cannot(format!(
            "the optimizer has {count} parameters, the model's state dict {} {}",
            param_names.len(),
            if derived {
                "floating-point entries that are not buffers"
            } else {
                "names"
            }
        )));
    }
    let mut state = BTreeMap::new();
    for (&index, (tensors, plain)) in &foreign.state {
        let name = param_names
            .get(index)
            .ok_or_else(|| cannot(format!("state for parameter {index}, of {count}")))?;
        let param = by_name
            .get(name.as_str())
            .ok_or_else(|| cannot(format!("parameter {index}, {name:?}, is not in the model's state dict")))?;
        for t in tensors {
            if !state_fits(&t.name, &t.shape, &param.shape) {
                return Err(cannot(format!(
                    "state {:?} of parameter {index} has shape {:?}, and {name:?} has {:?}",
                    t.name, t.shape, param.shape
                )));
            }
        }
        state.insert(index, plain.clone());
    }
    Ok(OptimizerMetadata {
        class: class.class.clone(),
        kwargs: class.kwargs.clone(),
        param_groups,
        param_names,
        state,
    })
}

/// The model's parameters as far as a state dict tells: its floating-point
/// entries in order, less the buffers of normalization layers.
fn derived_param_names(model: &[ForeignTensor]) -> Vec<String> {
    model
        .iter()
        .filter(|t| matches!(t.dtype, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16))
        .filter(|t| {
            !BUFFER_SUFFIXES
                .iter()
                .any(|s| t.name.ends_with(&format!(".{s}")) || t.name == *s)
        })
        .map(|t| t.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_parameters_leave_out_integer_entries_and_normalization_buffers() {
        let t = |name: &str, dtype| ForeignTensor {
            name: name.into(),
            dtype,
            shape: vec![1],
            data: super::super::TensorBytes::Owned(std::sync::Arc::new(vec![0; 8])),
        };
        let model = [
            t("conv.weight", Dtype::F32),
            t("bn.weight", Dtype::F32),
            t("bn.running_mean", Dtype::F32),
            t("bn.running_var", Dtype::F32),
            t("bn.num_batches_tracked", Dtype::I64),
            t("mask", Dtype::BOOL),
            t("fc.bias", Dtype::BF16),
        ];
        assert_eq!(derived_param_names(&model), ["conv.weight", "bn.weight", "fc.bias"]);
    }

    #[test]
    fn adafactor_factored_state_fits_its_reduced_shapes() {
        assert!(state_fits("row_var", &[4, 1], &[4, 3]));
        assert!(state_fits("col_var", &[1, 3], &[4, 3]));
        assert!(state_fits("row_var", &[2, 4, 1], &[2, 4, 3]));
        assert!(state_fits("col_var", &[2, 1, 3], &[2, 4, 3]));
        assert!(!state_fits("row_var", &[4, 3], &[4, 3]));
        assert!(!state_fits("col_var", &[4, 1], &[4, 3]));
        // A vector's Adafactor state is `variance`, of its own shape.
        assert!(!state_fits("row_var", &[1], &[4]));
        assert!(state_fits("variance", &[4], &[4]));
        assert!(state_fits("step", &[], &[4, 3]));
        assert!(state_fits("exp_avg", &[4, 3], &[4, 3]));
    }
}
