//! The validation of `metadata.json` (FORMAT.md sections 3, 5, 6 and 9)
//! into the typed [`Metadata`]. The format version is checked first, so
//! that a newer file is reported as such and not as a schema violation;
//! the other checks run in a fixed order, so that a file with several
//! defects always gets the same error.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::typed::{self, Place, TensorRefs};
use super::ParamGroup;
use super::{
    is_checkpoint_id, ClassSpec, ExtraEntry, FileKind, ManagerRecord, Metadata, OptimizerMetadata, Producer,
    SchedulerMetadata, ShardBlock, INTERNALS_KEY, SUPPORTED_VERSIONS,
};
use crate::format::{json, FormatError};

impl Metadata {
    /// Parses and validates the bytes of a `metadata.json`: UTF-8 JSON
    /// with no duplicate key, whose top level is an object matching the
    /// schema of its format version (1 or 2).
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::from_json(json::parse_object(bytes).map_err(FormatError::Json)?)
    }

    /// Validates a `metadata.json` object against the schema of its format
    /// version, in the order of FORMAT.md section 9 step 16 (and 11.6).
    /// Keys of `__pytorch_saver__` that the version does not define are
    /// ignored, as the format requires (in a version 1 file, `extra` and
    /// `manager` among them). A version 1 file's kwargs are returned in
    /// the typed form of version 2 (FORMAT.md 11.7).
    pub fn from_json(meta: Map<String, Value>) -> Result<Self, FormatError> {
        let mut top = TopLevel::default();
        for (key, value) in meta {
            match key.as_str() {
                INTERNALS_KEY => top.internals = Some(value),
                "model_kwargs" => top.model_kwargs = Some(value),
                "optim_kwargs" => top.optim_kwargs = Some(value),
                "scheduler_kwargs" => top.scheduler_kwargs = Some(value),
                "timestamp" => top.timestamp = Some(value),
                _ => {
                    top.user.insert(key, value);
                }
            }
        }
        let mut internals = match top.internals {
            Some(Value::Object(o)) => o,
            Some(_) => return Err(schema(INTERNALS_KEY, "must be an object")),
            None => {
                return Err(schema(
                    INTERNALS_KEY,
                    "missing: not a pytorch-saver format file (a file of the original \
                     pytorch-saver 0.1 package must be upgraded first)",
                ))
            }
        };
        let format_version = format_version(internals.get("format_version"))?;
        let v2 = format_version >= 2;
        let kind = match internals.get("kind").and_then(Value::as_str) {
            Some("checkpoint") => FileKind::Checkpoint,
            Some("inference") => FileKind::Inference,
            Some("weights") if v2 => FileKind::Weights,
            _ => {
                let allowed = match v2 {
                    true => "\"checkpoint\", \"inference\" or \"weights\"",
                    false => "\"checkpoint\" or \"inference\" (\"weights\" needs format version 2)",
                };
                return Err(schema(&format!("{INTERNALS_KEY}.kind"), format!("must be {allowed}")));
            }
        };
        let model = class_object(internals.remove("model"), "model")?;
        let model_class = match (model, kind) {
            (Some(_), FileKind::Weights) => {
                return Err(schema(
                    &format!("{INTERNALS_KEY}.model"),
                    "a weights file names no model class",
                ))
            }
            (None, FileKind::Weights) => None,
            (Some(ClassObject { class, .. }), _) => Some(class),
            (None, _) => return Err(schema(&format!("{INTERNALS_KEY}.model"), "missing")),
        };
        let optimizer = class_object(internals.remove("optimizer"), "optimizer")?;
        let scheduler = class_object(internals.remove("scheduler"), "scheduler")?;
        let optimizer = optimizer.map(optimizer_internals).transpose()?;
        let scheduler = match scheduler {
            Some(ClassObject { class, mut rest }) => match rest.remove("state") {
                Some(Value::Object(state)) => Some((class, state)),
                _ => return Err(schema(&format!("{INTERNALS_KEY}.scheduler.state"), "must be an object")),
            },
            None => None,
        };
        // Version 1 ignores the keys it does not define, these among them.
        let (extra, manager, shard) = match v2 {
            true => (
                internals.remove("extra"),
                internals.remove("manager"),
                internals.remove("shard"),
            ),
            false => (None, None, None),
        };
        if kind != FileKind::Checkpoint && (optimizer.is_some() || scheduler.is_some() || extra.is_some()) {
            let reason = match kind {
                FileKind::Weights => "a weights file holds no optimizer, scheduler or extra state",
                _ if v2 => "an inference file holds no optimizer, scheduler or extra state",
                _ => "an inference file holds no optimizer or scheduler",
            };
            return Err(schema(INTERNALS_KEY, reason));
        }
        if scheduler.is_some() && optimizer.is_none() {
            return Err(schema(INTERNALS_KEY, "a scheduler needs an optimizer"));
        }
        let producer = producer(internals.remove("producer"), &format!("{INTERNALS_KEY}.producer"))?;
        let model_kwargs = match kind {
            FileKind::Weights => match top.model_kwargs {
                None => None,
                Some(_) => {
                    return Err(schema(
                        "model_kwargs",
                        "present in a weights file, which names no model",
                    ))
                }
            },
            _ => Some(kwargs(top.model_kwargs, "model_kwargs")?),
        };
        let optim_kwargs = part_kwargs(top.optim_kwargs, "optim_kwargs", optimizer.is_some())?;
        let scheduler_kwargs = part_kwargs(top.scheduler_kwargs, "scheduler_kwargs", scheduler.is_some())?;
        let timestamp = match top.timestamp {
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| schema("timestamp", "must be a non-negative integer (Unix seconds)"))?,
            Some(_) => return Err(schema("timestamp", "must be a non-negative integer (Unix seconds)")),
            None => return Err(schema("timestamp", "missing")),
        };
        let extra = extra_entries(extra)?;
        let manager = manager_record(manager)?;
        let shard = shard_block(shard, kind)?;
        let (model_kwargs, optim_kwargs, scheduler_kwargs) = match v2 {
            true => {
                for (kwargs, key, place) in [
                    (&model_kwargs, "model_kwargs", Place::ModelKwargs),
                    (&optim_kwargs, "optim_kwargs", Place::OptimKwargs),
                    (&scheduler_kwargs, "scheduler_kwargs", Place::SchedulerKwargs),
                ] {
                    if let Some(kwargs) = kwargs {
                        typed::check_kwargs(kwargs, key, place)?;
                    }
                }
                let mut tensors = TensorRefs::default();
                for e in extra.iter().flatten() {
                    let path = format!("{INTERNALS_KEY}.extra.{}.state", e.name);
                    typed::check(&e.state, &path, Place::ExtraState, &mut tensors)?;
                }
                (model_kwargs, optim_kwargs, scheduler_kwargs)
            }
            false => (
                model_kwargs.map(typed::escape_v1),
                optim_kwargs.map(typed::escape_v1),
                scheduler_kwargs.map(typed::escape_v1),
            ),
        };
        Ok(Metadata {
            format_version,
            kind,
            model: model_class
                .zip(model_kwargs)
                .map(|(class, kwargs)| ClassSpec::new(class, kwargs)),
            // Each part has its kwargs: checked above.
            optimizer: optimizer
                .zip(optim_kwargs)
                .map(|(o, kwargs)| OptimizerMetadata { kwargs, ..o }),
            scheduler: scheduler
                .zip(scheduler_kwargs)
                .map(|((class, state), kwargs)| SchedulerMetadata { class, kwargs, state }),
            extra,
            manager,
            shard,
            producer,
            timestamp,
            user: top.user,
        })
    }
}

/// The top-level object, split by key.
#[derive(Default)]
struct TopLevel {
    internals: Option<Value>,
    model_kwargs: Option<Value>,
    optim_kwargs: Option<Value>,
    scheduler_kwargs: Option<Value>,
    timestamp: Option<Value>,
    user: Map<String, Value>,
}

fn schema(field: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Schema {
        field: field.into(),
        reason: reason.into(),
    }
}

fn supported_list() -> String {
    SUPPORTED_VERSIONS
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_version(value: Option<&Value>) -> Result<u64, FormatError> {
    let unsupported = |found: String| FormatError::UnsupportedVersion {
        found,
        supported: supported_list(),
    };
    let version = match value {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| unsupported(n.to_string()))?,
        Some(_) => return Err(schema(&format!("{INTERNALS_KEY}.format_version"), "must be an integer")),
        None => return Err(schema(&format!("{INTERNALS_KEY}.format_version"), "missing")),
    };
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(unsupported(version.to_string()));
    }
    Ok(version)
}

/// A non-empty string under `field` of `obj`, taken out of it.
fn take_str(obj: &mut Map<String, Value>, field: &str, path: &str) -> Result<String, FormatError> {
    match obj.remove(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(schema(&format!("{path}.{field}"), "must be a non-empty string")),
        None => Err(schema(&format!("{path}.{field}"), "missing")),
    }
}

/// `__pytorch_saver__.<part>`: an object with a `class`.
struct ClassObject {
    class: String,
    /// The object's other keys.
    rest: Map<String, Value>,
}

fn class_object(value: Option<Value>, part: &str) -> Result<Option<ClassObject>, FormatError> {
    let path = format!("{INTERNALS_KEY}.{part}");
    match value {
        None => Ok(None),
        Some(Value::Object(mut rest)) => Ok(Some(ClassObject {
            class: take_str(&mut rest, "class", &path)?,
            rest,
        })),
        Some(_) => Err(schema(&path, "must be an object")),
    }
}

/// `__pytorch_saver__.optimizer` without its class (FORMAT.md section 5);
/// the kwargs are filled in once the top level is checked.
fn optimizer_internals(ClassObject { class, rest: mut opt }: ClassObject) -> Result<OptimizerMetadata, FormatError> {
    let field = |f: &str| format!("{INTERNALS_KEY}.optimizer.{f}");
    let param_names = param_names(opt.remove("param_names"), &field("param_names"))?;
    let param_groups = param_groups(opt.remove("param_groups"), &field("param_groups"), param_names.len())?;
    let state = state(opt.remove("state"), &field("state"), param_names.len())?;
    Ok(OptimizerMetadata {
        class,
        kwargs: Map::new(),
        param_groups,
        param_names,
        state,
    })
}

/// `param_names`: non-empty strings, no two equal.
fn param_names(value: Option<Value>, path: &str) -> Result<Vec<String>, FormatError> {
    let names = match value {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(schema(path, "must be a list of parameter names")),
        None => return Err(schema(path, "missing")),
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for (i, n) in names.into_iter().enumerate() {
        match n {
            Value::String(s) if !s.is_empty() => {
                if !seen.insert(s.clone()) {
                    return Err(schema(&format!("{path}[{i}]"), format!("{s:?} appears twice")));
                }
                out.push(s);
            }
            _ => return Err(schema(&format!("{path}[{i}]"), "must be a non-empty string")),
        }
    }
    Ok(out)
}

/// `param_groups`: objects whose `params` put every index `0..count` in
/// exactly one group.
fn param_groups(value: Option<Value>, path: &str, count: usize) -> Result<Vec<ParamGroup>, FormatError> {
    let groups = match value {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(schema(path, "must be a list of objects")),
        None => return Err(schema(path, "missing")),
    };
    let mut in_group = vec![false; count];
    let mut out = Vec::with_capacity(groups.len());
    for (g, group) in groups.into_iter().enumerate() {
        let gpath = format!("{path}[{g}]");
        let Value::Object(group) = group else {
            return Err(schema(&gpath, "must be an object"));
        };
        let mut params = None;
        let mut options = Map::new();
        for (k, v) in group {
            match k.as_str() {
                "params" => params = Some(v),
                _ => {
                    options.insert(k, v);
                }
            }
        }
        let Some(Value::Array(params)) = params else {
            return Err(schema(
                &format!("{gpath}.params"),
                "must be a list of parameter indices",
            ));
        };
        let mut indices = Vec::with_capacity(params.len());
        for p in &params {
            let i = p
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < count)
                .ok_or_else(|| {
                    schema(
                        &format!("{gpath}.params"),
                        format!("{p} is not an index into param_names (0..{count})"),
                    )
                })?;
            if std::mem::replace(&mut in_group[i], true) {
                return Err(schema(
                    &format!("{gpath}.params"),
                    format!("parameter {i} is in more than one group"),
                ));
            }
            indices.push(i);
        }
        out.push(ParamGroup::new(indices, options));
    }
    if let Some(i) = in_group.iter().position(|&x| !x) {
        return Err(schema(path, format!("parameter {i} is in no group")));
    }
    Ok(out)
}

/// `state`: canonical decimal indices below `count`, each to an object.
fn state(value: Option<Value>, path: &str, count: usize) -> Result<BTreeMap<usize, Map<String, Value>>, FormatError> {
    let entries = match value {
        Some(Value::Object(o)) => o,
        Some(_) => return Err(schema(path, "must be an object")),
        None => return Err(schema(path, "missing")),
    };
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        let index = k
            .parse::<usize>()
            .ok()
            .filter(|i| i.to_string() == k && *i < count)
            .ok_or_else(|| schema(path, format!("key {k:?} is not a parameter index (0..{count})")))?;
        let Value::Object(plain) = v else {
            return Err(schema(&format!("{path}.{k}"), "must be an object"));
        };
        out.insert(index, plain);
    }
    Ok(out)
}

/// A producer object (FORMAT.md 3.2) at `path`: of `metadata.json`, or of
/// a sharded checkpoint's `index.json` (13.1), whose caller renames the
/// error's document.
pub(crate) fn producer(value: Option<Value>, path: &str) -> Result<Producer, FormatError> {
    let mut p = match value {
        Some(Value::Object(p)) => p,
        Some(_) => return Err(schema(path, "must be an object")),
        None => return Err(schema(path, "missing")),
    };
    Ok(Producer {
        library: take_str(&mut p, "library", path)?,
        version: take_str(&mut p, "version", path)?,
        language: take_str(&mut p, "language", path)?,
        torch_version: match p.contains_key("torch_version") {
            false => None,
            true => Some(take_str(&mut p, "torch_version", path)?),
        },
    })
}

/// The top-level kwargs object of a part the file has.
fn kwargs(value: Option<Value>, key: &str) -> Result<Map<String, Value>, FormatError> {
    match value {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(schema(key, "must be an object")),
        None => Err(schema(key, "missing")),
    }
}

/// The kwargs of an optional part: an object iff the file has the part.
fn part_kwargs(value: Option<Value>, key: &str, present: bool) -> Result<Option<Map<String, Value>>, FormatError> {
    match (value, present) {
        (value, true) => kwargs(value, key).map(Some),
        (None, false) => Ok(None),
        (Some(_), false) => Err(schema(key, "present although the file has no such part")),
    }
}

/// `__pytorch_saver__.extra` (FORMAT.md 11.3): names to `{class, state}`.
fn extra_entries(value: Option<Value>) -> Result<Option<Vec<ExtraEntry>>, FormatError> {
    let path = format!("{INTERNALS_KEY}.extra");
    let entries = match value {
        None => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(schema(&path, "must be an object")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        let epath = format!("{path}.{name}");
        if name.is_empty() {
            return Err(schema(&path, "an entry name is empty"));
        }
        let Value::Object(mut entry) = entry else {
            return Err(schema(&epath, "must be an object"));
        };
        let class = take_str(&mut entry, "class", &epath)?;
        let state = entry
            .remove("state")
            .ok_or_else(|| schema(&format!("{epath}.state"), "missing"))?;
        out.push(ExtraEntry { name, class, state });
    }
    Ok(Some(out))
}

/// `__pytorch_saver__.manager` (FORMAT.md 11.4).
fn manager_record(value: Option<Value>) -> Result<Option<ManagerRecord>, FormatError> {
    let path = format!("{INTERNALS_KEY}.manager");
    let mut m = match value {
        None => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(schema(&path, "must be an object")),
    };
    let id = take_str(&mut m, "id", &path)?;
    let step = match m.remove("step") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
        Some(v) => {
            return Err(schema(
                &format!("{path}.step"),
                format!("must be an integer >= 0, got {v}"),
            ))
        }
        None => return Err(schema(&format!("{path}.step"), "missing")),
    };
    let metrics = match m.remove("metrics") {
        Some(Value::Object(o)) => o,
        Some(_) => return Err(schema(&format!("{path}.metrics"), "must be an object of numbers")),
        None => return Err(schema(&format!("{path}.metrics"), "missing")),
    };
    if let Some((k, _)) = metrics.iter().find(|(_, v)| !v.is_number()) {
        return Err(schema(
            &format!("{path}.metrics.{k}"),
            "must be a finite number (a metric's value)",
        ));
    }
    Ok(Some(ManagerRecord { id, step, metrics }))
}

/// `__pytorch_saver__.shard` (FORMAT.md 13.2): allowed in weights files
/// only.
fn shard_block(value: Option<Value>, kind: FileKind) -> Result<Option<ShardBlock>, FormatError> {
    let path = format!("{INTERNALS_KEY}.shard");
    let mut block = match value {
        None => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(schema(&path, "must be an object")),
    };
    if kind != FileKind::Weights {
        return Err(schema(
            &path,
            format!(
                "a shard block is allowed in weights files only, not in a {} file",
                kind.as_str()
            ),
        ));
    }
    let checkpoint_id = match block.remove("checkpoint_id") {
        Some(Value::String(s)) if is_checkpoint_id(&s) => s,
        Some(v) => {
            return Err(schema(
                &format!("{path}.checkpoint_id"),
                format!("must be 32 lowercase hexadecimal digits, got {v}"),
            ))
        }
        None => return Err(schema(&format!("{path}.checkpoint_id"), "missing")),
    };
    let rank = match block.remove("rank") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
        Some(v) => {
            return Err(schema(
                &format!("{path}.rank"),
                format!("must be an integer >= 0, got {v}"),
            ))
        }
        None => return Err(schema(&format!("{path}.rank"), "missing")),
    };
    Ok(Some(ShardBlock { checkpoint_id, rank }))
}
