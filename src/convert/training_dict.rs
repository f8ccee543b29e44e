//! From an unpickled object to [`Contents`]: a state dict (names to
//! tensors), or a training dict (`{"model": state dict, "optimizer": ...,
//! "scheduler": ..., "epoch": 3}`), its optimizer and scheduler state dicts
//! as FORMAT.md sections 5 and 6 hold them, and its plain values as user
//! metadata.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value as Json};

use super::pickle::{Arena, Dict, DictKind, Obj, Value};
use super::torch_file::Tensors;
use super::{foreign, Contents, ForeignOptimizer, ForeignScheduler, ForeignTensor, RecordedKwargs, SourceKind};
use crate::error::Result;
use crate::format::metadata::encode_float;

/// Keys a training dict may hold its state dicts under, in the order they
/// are looked for.
const MODEL_KEYS: &[&str] = &["model", "model_state_dict", "state_dict"];
const OPTIMIZER_KEYS: &[&str] = &["optimizer", "optimizer_state_dict", "optim_state_dict", "optim"];
const SCHEDULER_KEYS: &[&str] = &["scheduler", "scheduler_state_dict", "lr_scheduler"];
/// Deepest nesting of plain values read (PyTorch's are a few levels deep).
const MAX_DEPTH: usize = 64;

/// How non-finite floats become JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonFinite {
    /// `{"__float__": "inf"}` (FORMAT.md 3.4: optimizer and scheduler state).
    Tagged,
    /// Refused (user metadata).
    Refused,
}

/// The contents of a `torch.save` file's object.
pub(crate) fn contents(path: &Path, arena: &Arena<'_>, root: Value<'_>, tensors: &Tensors<'_, '_>) -> Result<Contents> {
    let Some(dict) = as_dict(arena, root) else {
        return Err(foreign(
            path,
            "holds neither a state dict (a dict of names to tensors) nor a training dict (a dict with a \
             state dict under \"model\", \"model_state_dict\" or \"state_dict\")",
        ));
    };
    let entries = string_keys(path, dict, "the top-level dict")?;
    let all_tensors = entries.iter().all(|(_, v)| is_tensor(arena, *v));
    if all_tensors {
        return Ok(Contents {
            source: SourceKind::TorchStateDict,
            model: state_dict(path, arena, root, tensors, "the state dict")?,
            model_class: None,
            optimizer: None,
            scheduler: None,
            user: Map::new(),
            recorded_kwargs: RecordedKwargs::default(),
            timestamp: None,
        });
    }
    let find = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| entries.iter().find(|(name, v)| name == k && !matches!(v, Value::None)))
            .map(|(name, v)| (*name, *v))
    };
    let Some((model_key, model)) = find(MODEL_KEYS) else {
        return Err(foreign(
            path,
            "holds a dict that is neither a state dict (it has values that are not tensors) nor a training \
             dict (no state dict under \"model\", \"model_state_dict\" or \"state_dict\")",
        ));
    };
    let optimizer = find(OPTIMIZER_KEYS);
    let scheduler = find(SCHEDULER_KEYS);
    let used: Vec<&str> = [Some(model_key), optimizer.map(|o| o.0), scheduler.map(|s| s.0)]
        .into_iter()
        .flatten()
        .collect();
    let mut user = Map::new();
    for (key, value) in &entries {
        if used.contains(key) {
            continue;
        }
        let json = to_json(arena, *value, NonFinite::Refused, 0).map_err(|why| {
            foreign(
                path,
                format!(
                    "entry {key:?} of the training dict {why}; only the model's, the optimizer's and the \
                     scheduler's state dicts (under their usual keys) and plain values (numbers, strings, \
                     lists, dicts) are carried: remove the entry, or save it separately"
                ),
            )
        })?;
        user.insert((*key).to_owned(), json);
    }
    Ok(Contents {
        source: SourceKind::TorchTrainingDict,
        model: state_dict(path, arena, model, tensors, model_key)?,
        model_class: None,
        optimizer: optimizer
            .map(|(key, v)| optimizer_state(path, arena, v, tensors, key))
            .transpose()?,
        scheduler: scheduler
            .map(|(key, v)| scheduler_state(path, arena, v, key))
            .transpose()?,
        user,
        recorded_kwargs: RecordedKwargs::default(),
        timestamp: None,
    })
}

/// A state dict: names to tensors, in order.
pub(crate) fn state_dict(
    path: &Path,
    arena: &Arena<'_>,
    value: Value<'_>,
    tensors: &Tensors<'_, '_>,
    what: &str,
) -> Result<Vec<ForeignTensor>> {
    let dict = as_dict(arena, value)
        .ok_or_else(|| foreign(path, format!("{what} is not a state dict (a dict of names to tensors)")))?;
    let mut out = Vec::with_capacity(dict.entries.len());
    for (name, v) in string_keys(path, dict, what)? {
        let Value::Obj(id) = v else {
            return Err(foreign(path, format!("{what}: {name} is not a tensor")));
        };
        if !is_tensor(arena, v) {
            return Err(foreign(path, format!("{what}: {name} is not a tensor")));
        }
        out.push(tensors.tensor(id, name)?);
    }
    Ok(out)
}

/// PyTorch's `Optimizer.state_dict()`: `{"state": {index: {key: tensor or
/// value}}, "param_groups": [...]}`.
pub(crate) fn optimizer_state(
    path: &Path,
    arena: &Arena<'_>,
    value: Value<'_>,
    tensors: &Tensors<'_, '_>,
    what: &str,
) -> Result<ForeignOptimizer> {
    let bad = |reason: String| foreign(path, format!("{what} (an optimizer state dict): {reason}"));
    let dict = as_dict(arena, value).ok_or_else(|| bad("not a dict".into()))?;
    let entries = string_keys(path, dict, what)?;
    for (key, _) in &entries {
        if *key != "state" && *key != "param_groups" {
            return Err(bad(format!(
                "unexpected key {key:?} (PyTorch's has state and param_groups)"
            )));
        }
    }
    let get = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let state = get("state")
        .and_then(|v| as_dict(arena, v))
        .ok_or_else(|| bad("no state dict".into()))?;
    let groups = get("param_groups")
        .and_then(|v| as_list(arena, v))
        .ok_or_else(|| bad("no list of param_groups".into()))?;

    let mut param_groups = Vec::with_capacity(groups.len());
    let mut names: Option<BTreeMap<usize, String>> = Some(BTreeMap::new());
    for (g, group) in groups.iter().enumerate() {
        let json =
            to_json(arena, *group, NonFinite::Tagged, 0).map_err(|why| bad(format!("param_groups[{g}] {why}")))?;
        let Json::Object(mut group) = json else {
            return Err(bad(format!("param_groups[{g}] is not a dict")));
        };
        let params: Option<Vec<usize>> = group.get("params").and_then(Json::as_array).and_then(|a| {
            a.iter()
                .map(|p| p.as_u64().and_then(|p| usize::try_from(p).ok()))
                .collect()
        });
        let params = params.ok_or_else(|| bad(format!("param_groups[{g}].params is not a list of indices")))?;
        // PyTorch's param_names (an optimizer built on named_parameters)
        // travel as ForeignOptimizer::param_names.
        match group.remove("param_names") {
            Some(Json::Array(group_names)) if group_names.len() == params.len() => {
                if let Some(all) = names.as_mut() {
                    for (index, name) in params.iter().zip(group_names) {
                        let Json::String(name) = name else {
                            return Err(bad(format!("param_groups[{g}].param_names holds a non-string")));
                        };
                        all.insert(*index, name);
                    }
                }
            }
            Some(_) => {
                return Err(bad(format!("param_groups[{g}].param_names does not match its params")));
            }
            None => names = None,
        }
        param_groups.push(group);
    }
    let param_names = match names {
        Some(names) if !names.is_empty() => {
            if names.keys().copied().ne(0..names.len()) {
                return Err(bad("param_names that do not name the indices 0..N once each".into()));
            }
            Some(names.into_values().collect())
        }
        _ => None,
    };

    let mut out_state = BTreeMap::new();
    for (key, entry) in &state.entries {
        let index = match key {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        };
        let index = index.ok_or_else(|| bad(format!("a state key {} that is not an index", describe(*key))))?;
        let entry = as_dict(arena, *entry).ok_or_else(|| bad(format!("state[{index}] is not a dict")))?;
        let mut state_tensors = Vec::new();
        let mut values = Map::new();
        for (name, v) in string_keys(path, entry, &format!("{what}.state[{index}]"))? {
            if is_tensor(arena, v) {
                let Value::Obj(id) = v else {
                    unreachable!("a tensor is an object")
                };
                let mut t = tensors.tensor(id, &format!("{what}.state.{index}.{name}"))?;
                t.name = name.to_owned();
                state_tensors.push(t);
            } else {
                let json = to_json(arena, v, NonFinite::Tagged, 0)
                    .map_err(|why| bad(format!("state[{index}].{name} {why}")))?;
                values.insert(name.to_owned(), json);
            }
        }
        out_state.insert(index, (state_tensors, values));
    }
    Ok(ForeignOptimizer {
        class: None,
        param_groups,
        state: out_state,
        param_names,
    })
}

/// PyTorch's `LRScheduler.state_dict()` as FORMAT.md section 6's JSON.
pub(crate) fn scheduler_state(
    path: &Path,
    arena: &Arena<'_>,
    value: Value<'_>,
    what: &str,
) -> Result<ForeignScheduler> {
    if as_dict(arena, value).is_none() {
        return Err(foreign(path, format!("{what} (a scheduler state dict) is not a dict")));
    }
    let json = to_json(arena, value, NonFinite::Tagged, 0)
        .map_err(|why| foreign(path, format!("{what} (a scheduler state dict) {why}")))?;
    let Json::Object(state) = json else {
        unreachable!("a dict becomes an object")
    };
    Ok(ForeignScheduler { class: None, state })
}

/// A plain value as JSON: tuples as lists, a `Counter` as an object from
/// each key (an integer, in decimal) to its count. `Err` says why not, to
/// follow the value's name.
pub(crate) fn to_json(
    arena: &Arena<'_>,
    value: Value<'_>,
    non_finite: NonFinite,
    depth: usize,
) -> std::result::Result<Json, String> {
    if depth > MAX_DEPTH {
        return Err(format!("is nested deeper than {MAX_DEPTH} levels"));
    }
    if !arena.visit() {
        return Err("holds more values than its pickle has bytes (containers shared to expand)".into());
    }
    Ok(match value {
        Value::None => Json::Null,
        Value::Bool(b) => Json::Bool(b),
        Value::Int(i) => Json::Number(i.into()),
        Value::Long(_) => return Err("holds an integer beyond 64 bits".into()),
        Value::Float(f) if f.is_finite() || non_finite == NonFinite::Tagged => encode_float(f),
        Value::Float(f) => return Err(format!("holds the non-finite float {f}, which metadata cannot hold")),
        Value::Str(s) => Json::String(s.to_owned()),
        Value::Bytes(_) => return Err("holds bytes".into()),
        Value::Global(g) => return Err(format!("holds {g:?}")),
        Value::Obj(id) => match arena.get(id) {
            Obj::List(items) | Obj::Tuple(items) => Json::Array(
                items
                    .iter()
                    .map(|v| to_json(arena, *v, non_finite, depth + 1))
                    .collect::<std::result::Result<_, _>>()?,
            ),
            Obj::Dict(d) => {
                let mut out = Map::new();
                for (k, v) in &d.entries {
                    let key = match (k, d.kind) {
                        (Value::Str(s), _) => (*s).to_owned(),
                        (Value::Int(i), DictKind::Counter) => i.to_string(),
                        (k, _) => {
                            return Err(format!(
                                "holds a dict with the key {} (JSON keys are strings)",
                                describe(*k)
                            ))
                        }
                    };
                    out.insert(key, to_json(arena, *v, non_finite, depth + 1)?);
                }
                Json::Object(out)
            }
            Obj::Tensor(_) => return Err("holds a tensor".into()),
            Obj::Storage(_) => return Err("holds a storage".into()),
        },
    })
}

fn describe(v: Value<'_>) -> String {
    match v {
        Value::Str(s) => format!("{s:?}"),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::None => "None".into(),
        _ => "of another type".into(),
    }
}

pub(crate) fn as_dict<'r, 'a>(arena: &'r Arena<'a>, value: Value<'a>) -> Option<&'r Dict<'a>> {
    match value {
        Value::Obj(id) => match arena.get(id) {
            Obj::Dict(d) if d.kind != DictKind::Counter => Some(d),
            _ => None,
        },
        _ => None,
    }
}

fn as_list<'r, 'a>(arena: &'r Arena<'a>, value: Value<'a>) -> Option<&'r [Value<'a>]> {
    match value {
        Value::Obj(id) => match arena.get(id) {
            Obj::List(items) | Obj::Tuple(items) => Some(items),
            _ => None,
        },
        _ => None,
    }
}

fn is_tensor(arena: &Arena<'_>, value: Value<'_>) -> bool {
    matches!(value, Value::Obj(id) if matches!(arena.get(id), Obj::Tensor(_)))
}

/// A dict's entries, every key a string.
pub(crate) fn string_keys<'a>(path: &Path, dict: &Dict<'a>, what: &str) -> Result<Vec<(&'a str, Value<'a>)>> {
    dict.entries
        .iter()
        .map(|(k, v)| match k {
            Value::Str(s) => Ok((*s, *v)),
            k => Err(foreign(
                path,
                format!("{what} has the key {}, not a string", describe(*k)),
            )),
        })
        .collect()
}
