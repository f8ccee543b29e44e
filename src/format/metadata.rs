//! The `metadata.json` schema of format v1: the original package's flat
//! top-level keys, plus the format internals under one reserved key.

use serde_json::{Map, Number, Value};

use super::{FormatError, MemberName};

/// The format version this library writes.
pub const FORMAT_VERSION: u64 = 1;
/// The versions this library reads.
pub const SUPPORTED_VERSIONS: &[u64] = &[1];
/// The top-level key that holds every format internal.
pub const INTERNALS_KEY: &str = "__pytorch_saver__";
/// Top-level keys that user metadata may not use.
pub const RESERVED_KEYS: &[&str] = &[
    "model_kwargs",
    "optim_kwargs",
    "scheduler_kwargs",
    "timestamp",
    INTERNALS_KEY,
];
/// Largest `metadata.json` a reader accepts.
pub const MAX_METADATA_BYTES: u64 = 16 << 20;

/// Whether a file resumes training or only serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Model, and optionally optimizer and scheduler state.
    Checkpoint,
    /// Model only.
    Inference,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Checkpoint => "checkpoint",
            FileKind::Inference => "inference",
        }
    }
}

/// Who wrote a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    pub library: String,
    pub version: String,
    pub language: String,
    pub torch_version: Option<String>,
}

impl Producer {
    /// This library, as the producer of what it writes.
    pub fn this_library() -> Self {
        Producer {
            library: "pytorch-saver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            language: "rust".into(),
            torch_version: cfg!(feature = "torch").then(|| crate::TORCH_VERSION.into()),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("library".into(), self.library.clone().into());
        m.insert("version".into(), self.version.clone().into());
        m.insert("language".into(), self.language.clone().into());
        if let Some(t) = &self.torch_version {
            m.insert("torch_version".into(), t.clone().into());
        }
        Value::Object(m)
    }
}

/// What `metadata.json` says about the file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub format_version: u64,
    pub kind: FileKind,
    pub model_class: String,
    pub optimizer_class: Option<String>,
    pub scheduler_class: Option<String>,
    pub producer: Producer,
    pub timestamp: u64,
    /// The optimizer's layout, when the file has an optimizer.
    pub optimizer: Option<OptimizerLayout>,
}

/// What the reader checks `optimizer.safetensors` against: how many
/// parameters the optimizer has, and which of them have state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptimizerLayout {
    /// Length of `param_names`: parameter indices are `0..param_count`.
    pub param_count: usize,
    /// The parameter indices with state, with their non-tensor state keys.
    pub state: std::collections::BTreeMap<usize, Vec<String>>,
}

impl OptimizerLayout {
    /// Splits a tensor name `state.<index>.<key>` and checks it against
    /// the layout.
    pub fn check_tensor_name<'n>(&self, name: &'n str) -> Result<(usize, &'n str), String> {
        let rest = name
            .strip_prefix("state.")
            .ok_or_else(|| "optimizer tensors are named state.<index>.<key>".to_string())?;
        let (index, key) = rest
            .split_once('.')
            .filter(|(i, k)| !k.is_empty() && !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| "optimizer tensors are named state.<index>.<key>".to_string())?;
        let canonical = index.parse::<usize>().ok().filter(|i| i.to_string() == index);
        let index = canonical.ok_or_else(|| format!("{index:?} is not a canonical decimal parameter index"))?;
        match self.state.get(&index) {
            None => Err(format!(
                "parameter {index} has no entry in {INTERNALS_KEY}.optimizer.state"
            )),
            Some(plain) if plain.iter().any(|k| k == key) => {
                Err(format!("state key {key:?} is both a tensor and a JSON value"))
            }
            Some(_) => Ok((index, key)),
        }
    }
}

/// Checks `__pytorch_saver__.optimizer` (FORMAT.md section 5).
fn validate_optimizer(opt: &Map<String, Value>) -> Result<OptimizerLayout, FormatError> {
    let path = format!("{INTERNALS_KEY}.optimizer");
    let field = |f: &str| format!("{path}.{f}");
    let names = match opt.get("param_names") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(schema(&field("param_names"), "must be a list of parameter names")),
        None => return Err(schema(&field("param_names"), "missing")),
    };
    let mut seen_names = std::collections::HashSet::new();
    for (i, n) in names.iter().enumerate() {
        match n.as_str() {
            Some(s) if !s.is_empty() => {
                if !seen_names.insert(s) {
                    return Err(schema(
                        &format!("{}[{i}]", field("param_names")),
                        format!("{s:?} appears twice"),
                    ));
                }
            }
            _ => {
                return Err(schema(
                    &format!("{}[{i}]", field("param_names")),
                    "must be a non-empty string",
                ))
            }
        }
    }
    let param_count = names.len();
    let groups = match opt.get("param_groups") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(schema(&field("param_groups"), "must be a list of objects")),
        None => return Err(schema(&field("param_groups"), "missing")),
    };
    let mut in_group = vec![false; param_count];
    for (g, group) in groups.iter().enumerate() {
        let gpath = format!("{}[{g}]", field("param_groups"));
        let params = match group.as_object().map(|o| o.get("params")) {
            None => return Err(schema(&gpath, "must be an object")),
            Some(Some(Value::Array(p))) => p,
            Some(_) => {
                return Err(schema(
                    &format!("{gpath}.params"),
                    "must be a list of parameter indices",
                ))
            }
        };
        for p in params {
            let i = p
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < param_count)
                .ok_or_else(|| {
                    schema(
                        &format!("{gpath}.params"),
                        format!("{p} is not an index into param_names (0..{param_count})"),
                    )
                })?;
            if std::mem::replace(&mut in_group[i], true) {
                return Err(schema(
                    &format!("{gpath}.params"),
                    format!("parameter {i} is in more than one group"),
                ));
            }
        }
    }
    if let Some(i) = in_group.iter().position(|&x| !x) {
        return Err(schema(&field("param_groups"), format!("parameter {i} is in no group")));
    }
    let state_obj = match opt.get("state") {
        Some(Value::Object(o)) => o,
        Some(_) => return Err(schema(&field("state"), "must be an object")),
        None => return Err(schema(&field("state"), "missing")),
    };
    let mut state = std::collections::BTreeMap::new();
    for (k, v) in state_obj {
        let index = k
            .parse::<usize>()
            .ok()
            .filter(|i| i.to_string() == *k && *i < param_count)
            .ok_or_else(|| {
                schema(
                    &field("state"),
                    format!("key {k:?} is not a parameter index (0..{param_count})"),
                )
            })?;
        let plain = v
            .as_object()
            .ok_or_else(|| schema(&format!("{}.{k}", field("state")), "must be an object"))?;
        state.insert(index, plain.keys().cloned().collect());
    }
    Ok(OptimizerLayout { param_count, state })
}

impl Manifest {
    /// The members a file with this manifest has, in their required order.
    pub fn members(&self) -> Vec<MemberName> {
        let mut m = vec![MemberName::Metadata, MemberName::Model];
        if self.optimizer_class.is_some() {
            m.push(MemberName::Optimizer);
        }
        m
    }
}

fn schema(field: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Schema {
        field: field.into(),
        reason: reason.into(),
    }
}

fn get_str(obj: &Map<String, Value>, field: &str, path: &str) -> Result<String, FormatError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(schema(&format!("{path}.{field}"), "must be a non-empty string")),
        None => Err(schema(&format!("{path}.{field}"), "missing")),
    }
}

fn get_class(internals: &Map<String, Value>, part: &str) -> Result<Option<String>, FormatError> {
    let path = format!("{INTERNALS_KEY}.{part}");
    match internals.get(part) {
        None => Ok(None),
        Some(Value::Object(o)) => get_str(o, "class", &path).map(Some),
        Some(_) => Err(schema(&path, "must be an object")),
    }
}

fn require_object(meta: &Map<String, Value>, key: &str, present: bool) -> Result<(), FormatError> {
    match (meta.get(key), present) {
        (Some(Value::Object(_)), true) | (None, false) => Ok(()),
        (Some(_), true) => Err(schema(key, "must be an object")),
        (None, true) => Err(schema(key, "missing")),
        (Some(_), false) => Err(schema(key, "present although the file has no such part")),
    }
}

/// Checks `metadata.json` against the v1 schema. The format version is
/// checked first, so that a newer file is reported as such and not as a
/// schema violation.
pub fn validate(meta: &Map<String, Value>) -> Result<Manifest, FormatError> {
    let internals = match meta.get(INTERNALS_KEY) {
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
    let version_field = format!("{INTERNALS_KEY}.format_version");
    let format_version = match internals.get("format_version") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => v,
            None => {
                return Err(FormatError::UnsupportedVersion {
                    found: n.to_string(),
                    supported: supported_list(),
                })
            }
        },
        Some(_) => return Err(schema(&version_field, "must be an integer")),
        None => return Err(schema(&version_field, "missing")),
    };
    if !SUPPORTED_VERSIONS.contains(&format_version) {
        return Err(FormatError::UnsupportedVersion {
            found: format_version.to_string(),
            supported: supported_list(),
        });
    }
    let kind = match internals.get("kind").and_then(Value::as_str) {
        Some("checkpoint") => FileKind::Checkpoint,
        Some("inference") => FileKind::Inference,
        _ => {
            return Err(schema(
                &format!("{INTERNALS_KEY}.kind"),
                "must be \"checkpoint\" or \"inference\"",
            ))
        }
    };
    let model_class =
        get_class(internals, "model")?.ok_or_else(|| schema(&format!("{INTERNALS_KEY}.model"), "missing"))?;
    let optimizer_class = get_class(internals, "optimizer")?;
    let scheduler_class = get_class(internals, "scheduler")?;
    let optimizer = match internals.get("optimizer") {
        Some(Value::Object(o)) => Some(validate_optimizer(o)?),
        _ => None,
    };
    if let Some(Value::Object(sched)) = internals.get("scheduler") {
        if !matches!(sched.get("state"), Some(Value::Object(_))) {
            return Err(schema(&format!("{INTERNALS_KEY}.scheduler.state"), "must be an object"));
        }
    }
    if kind == FileKind::Inference && (optimizer_class.is_some() || scheduler_class.is_some()) {
        return Err(schema(
            INTERNALS_KEY,
            "an inference file holds no optimizer or scheduler",
        ));
    }
    if scheduler_class.is_some() && optimizer_class.is_none() {
        return Err(schema(INTERNALS_KEY, "a scheduler needs an optimizer"));
    }
    let producer_path = format!("{INTERNALS_KEY}.producer");
    let producer = match internals.get("producer") {
        Some(Value::Object(p)) => Producer {
            library: get_str(p, "library", &producer_path)?,
            version: get_str(p, "version", &producer_path)?,
            language: get_str(p, "language", &producer_path)?,
            torch_version: match p.get("torch_version") {
                None => None,
                Some(_) => Some(get_str(p, "torch_version", &producer_path)?),
            },
        },
        Some(_) => return Err(schema(&producer_path, "must be an object")),
        None => return Err(schema(&producer_path, "missing")),
    };
    require_object(meta, "model_kwargs", true)?;
    require_object(meta, "optim_kwargs", optimizer_class.is_some())?;
    require_object(meta, "scheduler_kwargs", scheduler_class.is_some())?;
    let timestamp = match meta.get("timestamp") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| schema("timestamp", "must be a non-negative integer (Unix seconds)"))?,
        Some(_) => return Err(schema("timestamp", "must be a non-negative integer (Unix seconds)")),
        None => return Err(schema("timestamp", "missing")),
    };
    Ok(Manifest {
        format_version,
        kind,
        model_class,
        optimizer_class,
        scheduler_class,
        producer,
        timestamp,
        optimizer,
    })
}

fn supported_list() -> String {
    SUPPORTED_VERSIONS
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Encodes a float for the internals: finite values as JSON numbers,
/// non-finite ones as `{"__float__": "inf" | "-inf" | "nan"}` (FORMAT.md 4.3).
pub fn encode_float(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None => {
            let tag = if x.is_nan() {
                "nan"
            } else if x > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            let mut m = Map::new();
            m.insert("__float__".into(), tag.into());
            Value::Object(m)
        }
    }
}

/// Decodes what [`encode_float`] wrote; `None` if `v` is neither form.
pub fn decode_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Object(m) if m.len() == 1 => match m.get("__float__")?.as_str()? {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_including_non_finite() {
        for x in [0.0, -1.5, 1e300, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(decode_float(&encode_float(x)), Some(x));
        }
        assert!(decode_float(&encode_float(f64::NAN)).unwrap().is_nan());
        let text = serde_json::to_string(&encode_float(f64::INFINITY)).unwrap();
        assert_eq!(text, r#"{"__float__":"inf"}"#);
    }
}
