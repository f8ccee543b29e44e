//! Typed values (FORMAT.md 11.2): plain JSON in which an object with the
//! key `"__type__"` is a tag standing for what JSON has no form for (a
//! class reference, a tuple, a dict with other keys, a dtype, a
//! non-finite float, an object rebuilt by a codec, a class with its
//! kwargs, a caller-supplied callable, a tensor of `extra.safetensors`).
//! The one owner of tags:
//!
//! - [`check`]: the validating walk of step 16.14 (FORMAT.md 11.6), in
//!   document order, which also collects the `tensor` tags for step 21;
//! - builders ([`class_ref`], [`tuple`], [`dict`], [`dtype`],
//!   [`nonfinite`], [`tensor`], [`object`], [`spec`], [`callable`]) and
//!   accessors ([`as_class_ref`], [`as_tuple`], [`as_float`], ...);
//! - [`plain_view`]: tuples as lists, the view kwargs getters read;
//! - the conversions of version 1 kwargs (11.7, [`escape_v1`]) and back
//!   ([`to_v1`], which refuses what version 1 cannot hold, 11.8).

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Number, Value};

use crate::format::FormatError;

/// The key that makes a JSON object a tag.
pub const TYPE_KEY: &str = "__type__";
/// Every tag's `__type__`, in FORMAT.md's order.
pub const TAGS: &[&str] = &[
    "class", "tuple", "dict", "dtype", "float", "object", "spec", "callable", "tensor",
];
/// The names a `dtype` tag may hold (PyTorch's, without `torch.`).
pub const DTYPE_NAMES: &[&str] = &[
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "complex128",
    "complex64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "bool",
    "float8_e4m3fn",
    "float8_e5m2",
];
/// The longest class name a tag may hold, in bytes (FORMAT.md 11.2.1).
pub const MAX_CLASS_NAME_BYTES: usize = 512;

/// Where a typed value sits, which decides the tags it may hold:
/// `callable` only in `scheduler_kwargs`, `tensor` only in extra state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    ModelKwargs,
    OptimKwargs,
    SchedulerKwargs,
    ExtraState,
}

/// A `tensor` tag: the tensor of `extra.safetensors` it names and the
/// JSON path of the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub name: String,
    pub path: String,
}

/// The `tensor` tags one validation has met, in walk order.
#[derive(Debug, Default)]
pub struct TensorRefs {
    pub refs: Vec<TensorRef>,
    by_name: HashMap<String, usize>,
}

impl TensorRefs {
    /// Whether some tag names `name`.
    pub fn names(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

fn typed_error(path: &str, reason: impl Into<String>) -> FormatError {
    FormatError::TypedValue {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Whether `name` has the form of FORMAT.md 11.2.1: ASCII identifiers
/// joined by single dots, at most 512 bytes.
pub fn is_class_name(name: &str) -> bool {
    let identifier = |part: &str| {
        let mut bytes = part.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    name.len() <= MAX_CLASS_NAME_BYTES && name.split('.').all(identifier)
}

/// The `__type__` of `v` when it is a tag object (whatever its value).
fn tag_value(v: &Value) -> Option<&Value> {
    v.as_object()?.get(TYPE_KEY)
}

/// The tag name of `v` when it is a tag with a string `__type__`.
pub fn tag(v: &Value) -> Option<&str> {
    tag_value(v)?.as_str()
}

/// The keys a tag of type `t` has besides `__type__`.
fn tag_keys(t: &str) -> &'static [&'static str] {
    match t {
        "class" | "dtype" | "callable" | "tensor" => &["name"],
        "tuple" | "dict" => &["items"],
        "float" => &["value"],
        "object" => &["codec", "class", "fields"],
        "spec" => &["class", "kwargs"],
        _ => &[],
    }
}

/// Validates the values of a kwargs object (`model_kwargs`, ...): the
/// object maps names to typed values, its own keys are names.
pub fn check_kwargs(kwargs: &Map<String, Value>, path: &str, place: Place) -> Result<(), FormatError> {
    let mut unused = TensorRefs::default();
    for (k, v) in kwargs {
        check(v, &format!("{path}.{k}"), place, &mut unused)?;
    }
    Ok(())
}

/// Validates a typed value at `path` (FORMAT.md 11.6, step 16.14), depth
/// first in document order: for each tag, its `__type__`, its keys, its
/// payload's JSON types, a class name's form, a dtype name or float value,
/// where the tag may appear, a tensor named twice; then its typed payload.
/// Every `tensor` tag met is added to `tensors`.
pub fn check(value: &Value, path: &str, place: Place, tensors: &mut TensorRefs) -> Result<(), FormatError> {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check(item, &format!("{path}[{i}]"), place, tensors)?;
            }
            Ok(())
        }
        Value::Object(obj) => match obj.get(TYPE_KEY) {
            None => {
                for (k, v) in obj {
                    check(v, &format!("{path}.{k}"), place, tensors)?;
                }
                Ok(())
            }
            Some(t) => check_tag(obj, t, path, place, tensors),
        },
        _ => Ok(()),
    }
}

fn check_tag(
    obj: &Map<String, Value>,
    t: &Value,
    path: &str,
    place: Place,
    tensors: &mut TensorRefs,
) -> Result<(), FormatError> {
    let t = match t.as_str() {
        Some(t) if TAGS.contains(&t) => t,
        Some(t) => {
            return Err(typed_error(
                path,
                format!("unknown type tag {t:?} (known: {})", TAGS.join(", ")),
            ))
        }
        None => {
            return Err(typed_error(
                path,
                format!("\"{TYPE_KEY}\" must be a string naming a type, got {}", obj[TYPE_KEY]),
            ))
        }
    };
    let keys = tag_keys(t);
    if let Some(k) = keys.iter().find(|k| !obj.contains_key(**k)) {
        return Err(typed_error(path, format!("{t:?} tag: needs the key {k:?}")));
    }
    if let Some(k) = obj.keys().find(|k| *k != TYPE_KEY && !keys.contains(&k.as_str())) {
        return Err(typed_error(path, format!("{t:?} tag: has no key {k:?}")));
    }
    let wrong =
        |key: &str, what: &str| typed_error(path, format!("{t:?} tag: {key:?} must be {what}, got {}", obj[key]));
    let class_form = |key: &str, name: &str| {
        if is_class_name(name) {
            Ok(())
        } else {
            Err(typed_error(
                path,
                format!(
                    "{t:?} tag: {key:?} {} is not a class name (ASCII identifiers joined by \
                     single dots, at most {MAX_CLASS_NAME_BYTES} bytes)",
                    short(name)
                ),
            ))
        }
    };
    match t {
        "class" => {
            let name = obj["name"].as_str().ok_or_else(|| wrong("name", "a string"))?;
            class_form("name", name)?;
        }
        "tuple" => {
            let items = obj["items"].as_array().ok_or_else(|| wrong("items", "a list"))?;
            for (i, item) in items.iter().enumerate() {
                check(item, &format!("{path}.items[{i}]"), place, tensors)?;
            }
        }
        "dict" => {
            let items = obj["items"]
                .as_array()
                .ok_or_else(|| wrong("items", "a list of [key, value] pairs"))?;
            if let Some((i, item)) = items
                .iter()
                .enumerate()
                .find(|(_, item)| item.as_array().is_none_or(|pair| pair.len() != 2))
            {
                return Err(typed_error(
                    &format!("{path}.items[{i}]"),
                    format!("\"dict\" tag: items must be two-element lists [key, value], got {item}"),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                for (j, part) in item.as_array().into_iter().flatten().enumerate() {
                    check(part, &format!("{path}.items[{i}][{j}]"), place, tensors)?;
                }
            }
        }
        "dtype" => {
            let name = obj["name"].as_str().ok_or_else(|| wrong("name", "a string"))?;
            if !DTYPE_NAMES.contains(&name) {
                return Err(typed_error(
                    path,
                    format!("\"dtype\" tag: name {name:?} is not one of {}", DTYPE_NAMES.join(", ")),
                ));
            }
        }
        "float" => {
            let value = obj["value"]
                .as_str()
                .ok_or_else(|| wrong("value", "the string \"inf\", \"-inf\" or \"nan\""))?;
            if !matches!(value, "inf" | "-inf" | "nan") {
                return Err(typed_error(
                    path,
                    format!("\"float\" tag: value {value:?} is not \"inf\", \"-inf\" or \"nan\""),
                ));
            }
        }
        "object" => {
            obj["codec"]
                .as_str()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| wrong("codec", "a non-empty string"))?;
            let class = match &obj["class"] {
                Value::Null => None,
                Value::String(s) => Some(s.as_str()),
                _ => return Err(wrong("class", "a class name or null")),
            };
            let fields = obj["fields"].as_object().ok_or_else(|| wrong("fields", "an object"))?;
            if let Some(class) = class {
                class_form("class", class)?;
            }
            for (k, v) in fields {
                check(v, &format!("{path}.fields.{k}"), place, tensors)?;
            }
        }
        "spec" => {
            let class = obj["class"].as_str().ok_or_else(|| wrong("class", "a class name"))?;
            let kwargs = obj["kwargs"].as_object().ok_or_else(|| wrong("kwargs", "an object"))?;
            class_form("class", class)?;
            for (k, v) in kwargs {
                check(v, &format!("{path}.kwargs.{k}"), place, tensors)?;
            }
        }
        "callable" => {
            obj["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| wrong("name", "a non-empty string"))?;
            if place != Place::SchedulerKwargs {
                return Err(typed_error(
                    path,
                    "\"callable\" tag: may only appear in scheduler_kwargs",
                ));
            }
        }
        "tensor" => {
            let name = obj["name"].as_str().ok_or_else(|| wrong("name", "a string"))?;
            if place != Place::ExtraState {
                return Err(typed_error(
                    path,
                    format!(
                        "\"tensor\" tag: may only appear in extra state (__pytorch_saver__.extra), \
                         not in {}",
                        place_name(place)
                    ),
                ));
            }
            if let Some(&first) = tensors.by_name.get(name) {
                return Err(typed_error(
                    path,
                    format!(
                        "\"tensor\" tag: names tensor {name:?}, which the tag at {} names too",
                        tensors.refs[first].path
                    ),
                ));
            }
            tensors.by_name.insert(name.to_owned(), tensors.refs.len());
            tensors.refs.push(TensorRef {
                name: name.to_owned(),
                path: path.to_owned(),
            });
        }
        _ => unreachable!("TAGS lists every tag"),
    }
    Ok(())
}

fn place_name(place: Place) -> &'static str {
    match place {
        Place::ModelKwargs => "model_kwargs",
        Place::OptimKwargs => "optim_kwargs",
        Place::SchedulerKwargs => "scheduler_kwargs",
        Place::ExtraState => "extra state",
    }
}

/// A name for a message: quoted, cut after 80 characters.
fn short(name: &str) -> String {
    match name.char_indices().nth(80) {
        None => format!("{name:?}"),
        Some((at, _)) => format!("{:?}... ({} bytes)", &name[..at], name.len()),
    }
}

/// The `tensor` tags of a value already validated, in walk order.
pub fn tensor_refs(value: &Value, path: &str, out: &mut Vec<TensorRef>) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                tensor_refs(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(obj) => match tag(value) {
            Some("tensor") => {
                if let Some(name) = obj.get("name").and_then(Value::as_str) {
                    out.push(TensorRef {
                        name: name.to_owned(),
                        path: path.to_owned(),
                    });
                }
            }
            Some("tuple") => {
                for (i, item) in obj
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    tensor_refs(item, &format!("{path}.items[{i}]"), out);
                }
            }
            Some("dict") => {
                for (i, item) in obj
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    for (j, part) in item.as_array().into_iter().flatten().enumerate() {
                        tensor_refs(part, &format!("{path}.items[{i}][{j}]"), out);
                    }
                }
            }
            Some("object" | "spec") => {
                let key = if tag(value) == Some("object") {
                    "fields"
                } else {
                    "kwargs"
                };
                if let Some(Value::Object(m)) = obj.get(key) {
                    for (k, v) in m {
                        tensor_refs(v, &format!("{path}.{key}.{k}"), out);
                    }
                }
            }
            Some(_) => {}
            None => {
                for (k, v) in obj {
                    tensor_refs(v, &format!("{path}.{k}"), out);
                }
            }
        },
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Builders

fn tag_object(t: &str, payload: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    let mut m = Map::new();
    m.insert(TYPE_KEY.into(), t.into());
    for (k, v) in payload {
        m.insert(k.into(), v);
    }
    Value::Object(m)
}

/// `{"__type__": "class", "name": name}`: a reference to a class.
pub fn class_ref(name: &str) -> Value {
    tag_object("class", [("name", name.into())])
}

/// `{"__type__": "tuple", "items": [...]}`.
pub fn tuple(items: impl IntoIterator<Item = Value>) -> Value {
    tag_object("tuple", [("items", Value::Array(items.into_iter().collect()))])
}

/// `{"__type__": "dict", "items": [[key, value], ...]}`: a dict whose keys
/// are not all strings (or that has the key `"__type__"`).
pub fn dict(items: impl IntoIterator<Item = (Value, Value)>) -> Value {
    let items = items.into_iter().map(|(k, v)| Value::Array(vec![k, v])).collect();
    tag_object("dict", [("items", Value::Array(items))])
}

/// `{"__type__": "dtype", "name": name}` (`float32`, `bfloat16`, ...).
pub fn dtype(name: &str) -> Value {
    tag_object("dtype", [("name", name.into())])
}

/// A float in its plainest form: a JSON number when finite, else
/// `{"__type__": "float", "value": "inf" | "-inf" | "nan"}`.
pub fn nonfinite(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None => {
            let value = if x.is_nan() {
                "nan"
            } else if x > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            tag_object("float", [("value", value.into())])
        }
    }
}

/// `{"__type__": "tensor", "name": name}`: a tensor of `extra.safetensors`.
pub fn tensor(name: &str) -> Value {
    tag_object("tensor", [("name", name.into())])
}

/// `{"__type__": "object", "codec": codec, "class": class, "fields": fields}`.
pub fn object(codec: &str, class: Option<&str>, fields: Map<String, Value>) -> Value {
    tag_object(
        "object",
        [
            ("codec", codec.into()),
            ("class", class.map_or(Value::Null, Value::from)),
            ("fields", Value::Object(fields)),
        ],
    )
}

/// `{"__type__": "spec", "class": class, "kwargs": kwargs}`.
pub fn spec(class: &str, kwargs: Map<String, Value>) -> Value {
    tag_object("spec", [("class", class.into()), ("kwargs", Value::Object(kwargs))])
}

/// `{"__type__": "callable", "name": name}`.
pub fn callable(name: &str) -> Value {
    tag_object("callable", [("name", name.into())])
}

// ---------------------------------------------------------------------------
// Accessors (of validated values: a malformed tag reads as None)

fn payload<'v>(v: &'v Value, t: &str, key: &str) -> Option<&'v Value> {
    (tag(v)? == t).then(|| v.get(key)).flatten()
}

/// A `class` tag's name.
pub fn as_class_ref(v: &Value) -> Option<&str> {
    payload(v, "class", "name")?.as_str()
}

/// A `tuple` tag's items.
pub fn as_tuple(v: &Value) -> Option<&[Value]> {
    payload(v, "tuple", "items")?.as_array().map(Vec::as_slice)
}

/// A `dict` tag's `[key, value]` pairs.
pub fn as_dict(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    payload(v, "dict", "items")?
        .as_array()?
        .iter()
        .map(|item| match item.as_array()?.as_slice() {
            [k, v] => Some((k, v)),
            _ => None,
        })
        .collect()
}

/// A `dtype` tag's name.
pub fn as_dtype(v: &Value) -> Option<&str> {
    payload(v, "dtype", "name")?.as_str()
}

/// A float: a JSON number, or a `float` tag's non-finite value.
pub fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        _ => match payload(v, "float", "value")?.as_str()? {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            _ => None,
        },
    }
}

/// A `tensor` tag's tensor name.
pub fn as_tensor(v: &Value) -> Option<&str> {
    payload(v, "tensor", "name")?.as_str()
}

/// A `callable` tag's name.
pub fn as_callable(v: &Value) -> Option<&str> {
    payload(v, "callable", "name")?.as_str()
}

/// An `object` tag's codec, class (None for `null`) and fields.
pub fn as_object(v: &Value) -> Option<(&str, Option<&str>, &Map<String, Value>)> {
    let codec = payload(v, "object", "codec")?.as_str()?;
    let class = v.get("class")?.as_str();
    Some((codec, class, v.get("fields")?.as_object()?))
}

/// A `spec` tag's class and kwargs.
pub fn as_spec(v: &Value) -> Option<(&str, &Map<String, Value>)> {
    let class = payload(v, "spec", "class")?.as_str()?;
    Some((class, v.get("kwargs")?.as_object()?))
}

// ---------------------------------------------------------------------------
// The plain view kwargs getters read

/// Whether `v` holds a `tuple` tag anywhere outside other tags.
fn has_tuple(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().any(has_tuple),
        Value::Object(obj) => match tag(v) {
            Some("tuple") => true,
            Some(_) => false,
            None => obj.values().any(has_tuple),
        },
        _ => false,
    }
}

fn to_plain(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(to_plain).collect()),
        Value::Object(obj) => match as_tuple(v) {
            Some(items) => Value::Array(items.iter().map(to_plain).collect()),
            None if tag(v).is_some() => v.clone(),
            None => Value::Object(obj.iter().map(|(k, v)| (k.clone(), to_plain(v))).collect()),
        },
        _ => v.clone(),
    }
}

/// `v` with every `tuple` tag (outside other tags) read as a list, as
/// Python code that accepts a list accepts a tuple; other tags are kept.
/// Borrowed when there is no tuple.
pub fn plain_view(v: &Value) -> Cow<'_, Value> {
    if has_tuple(v) {
        Cow::Owned(to_plain(v))
    } else {
        Cow::Borrowed(v)
    }
}

/// [`plain_view`] of each value of a kwargs object.
pub fn plain_map(m: &Map<String, Value>) -> Cow<'_, Map<String, Value>> {
    if m.values().any(has_tuple) {
        Cow::Owned(m.iter().map(|(k, v)| (k.clone(), to_plain(v))).collect())
    } else {
        Cow::Borrowed(m)
    }
}

// ---------------------------------------------------------------------------
// Version 1 kwargs (FORMAT.md 11.7 and 11.8)

fn escape_value(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(escape_value).collect()),
        Value::Object(obj) if obj.contains_key(TYPE_KEY) => {
            dict(obj.into_iter().map(|(k, v)| (Value::String(k), escape_value(v))))
        }
        Value::Object(obj) => Value::Object(obj.into_iter().map(|(k, v)| (k, escape_value(v))).collect()),
        v => v,
    }
}

/// A version 1 kwargs object in the typed form: every object below it
/// with the key `"__type__"` (plain JSON in version 1) becomes a `dict`
/// tag. The object's own keys are kwarg names and stay as they are.
pub fn escape_v1(kwargs: Map<String, Value>) -> Map<String, Value> {
    kwargs.into_iter().map(|(k, v)| (k, escape_value(v))).collect()
}

fn unescape_value(v: &Value, path: &str) -> Result<Value, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| unescape_value(item, &format!("{path}[{i}]")))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(obj) => match tag(v) {
            None if tag_value(v).is_none() => obj
                .iter()
                .map(|(k, v)| Ok((k.clone(), unescape_value(v, &format!("{path}.{k}"))?)))
                .collect::<Result<_, _>>()
                .map(Value::Object),
            Some("dict") => {
                let pairs = as_dict(v).ok_or_else(|| format!("a malformed \"dict\" tag at {path}"))?;
                let mut out = Map::new();
                for (i, (k, item)) in pairs.into_iter().enumerate() {
                    let Value::String(k) = k else {
                        return Err(format!(
                            "a dict with the non-string key {k} at {path}.items[{i}] needs version 2"
                        ));
                    };
                    if out.contains_key(k) {
                        return Err(format!("the dict at {path} has the key {k:?} twice"));
                    }
                    out.insert(k.clone(), unescape_value(item, &format!("{path}.items[{i}][1]"))?);
                }
                Ok(Value::Object(out))
            }
            Some(t) => Err(format!("a {t:?} tag at {path} needs version 2")),
            None => Err(format!("a malformed tag at {path} needs version 2")),
        },
        v => Ok(v.clone()),
    }
}

/// A kwargs object in version 1's plain JSON: `dict` tags whose keys are
/// all strings become objects; any other tag cannot be written as version
/// 1 (`InvalidInput` naming the tag and its path).
pub fn to_v1(kwargs: &Map<String, Value>, path: &str) -> Result<Map<String, Value>, FormatError> {
    kwargs
        .iter()
        .map(|(k, v)| Ok((k.clone(), unescape_value(v, &format!("{path}.{k}"))?)))
        .collect::<Result<_, String>>()
        .map_err(|reason| FormatError::InvalidInput(format!("format version 1: {reason}")))
}

/// [`to_v1`] where it succeeds, else the kwargs unchanged: for a
/// serialization that cannot fail (the writer refuses such a document
/// before this matters).
pub(super) fn to_v1_or_same(kwargs: &Map<String, Value>) -> Map<String, Value> {
    to_v1(kwargs, "").unwrap_or_else(|_| kwargs.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: Value, place: Place) -> Result<Vec<TensorRef>, FormatError> {
        let mut refs = TensorRefs::default();
        check(&v, "x", place, &mut refs)?;
        Ok(refs.refs)
    }

    fn reason(v: Value, place: Place) -> (String, String) {
        match run(v, place) {
            Err(FormatError::TypedValue { path, reason }) => (path, reason),
            other => panic!("expected a TypedValue error, got {other:?}"),
        }
    }

    #[test]
    fn class_names_have_the_form_of_dotted_identifiers() {
        for good in ["a", "_", "torch.nn.Linear", "a1._b2", &"x".repeat(512)] {
            assert!(is_class_name(good), "{good}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "1a",
            "a-b",
            "os.system('x')",
            "a b",
            "é",
            &"x".repeat(513),
        ] {
            assert!(!is_class_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_tag_built_here_passes_the_check_and_reads_back() {
        let mut fields = Map::new();
        fields.insert("t".into(), tensor("e.t"));
        let v = json!([
            class_ref("torchvision.models.resnet.BasicBlock"),
            tuple([json!(0.9), json!(0.999)]),
            dict([(json!(1), json!("a")), (json!("__type__"), json!(2))]),
            dtype("bfloat16"),
            nonfinite(f64::NEG_INFINITY),
            object("dataclass", Some("m.Cfg"), fields),
            object("namespace", None, Map::new()),
            spec("torch.optim.lr_scheduler.StepLR", Map::new()),
        ]);
        let refs = run(v.clone(), Place::ExtraState).unwrap();
        assert_eq!(
            refs,
            [TensorRef {
                name: "e.t".into(),
                path: "x[5].fields.t".into()
            }]
        );
        let mut collected = Vec::new();
        tensor_refs(&v, "x", &mut collected);
        assert_eq!(collected, refs);
        assert_eq!(as_class_ref(&v[0]), Some("torchvision.models.resnet.BasicBlock"));
        assert_eq!(as_tuple(&v[1]).unwrap().len(), 2);
        assert_eq!(as_dict(&v[2]).unwrap()[1].0, "__type__");
        assert_eq!(as_dtype(&v[3]), Some("bfloat16"));
        assert_eq!(as_float(&v[4]), Some(f64::NEG_INFINITY));
        assert_eq!(as_float(&nonfinite(0.5)), Some(0.5));
        assert!(as_float(&nonfinite(f64::NAN)).unwrap().is_nan());
        assert_eq!(as_object(&v[6]).unwrap().1, None);
        assert_eq!(as_spec(&v[7]).unwrap().0, "torch.optim.lr_scheduler.StepLR");
        assert_eq!(as_callable(&callable("f")), Some("f"));
        assert_eq!(as_tensor(&tensor("n")), Some("n"));
        assert!(run(json!({"f": callable("m.f")}), Place::SchedulerKwargs).is_ok());
    }

    #[test]
    fn each_defect_is_refused_with_its_path_and_a_reason_naming_the_tag() {
        use Place::*;
        let cases: Vec<(Value, Place, &str, &str)> = vec![
            (
                json!({"a": {"__type__": "set", "items": []}}),
                ModelKwargs,
                "x.a",
                "unknown type tag \"set\"",
            ),
            (
                json!({"__type__": 3}),
                ModelKwargs,
                "x",
                "must be a string naming a type",
            ),
            (
                json!({"__type__": "class"}),
                ModelKwargs,
                "x",
                "\"class\" tag: needs the key \"name\"",
            ),
            (
                json!({"__type__": "dtype", "name": "float32", "x": 1}),
                ModelKwargs,
                "x",
                "has no key \"x\"",
            ),
            (
                json!({"__type__": "tuple", "items": {}}),
                ModelKwargs,
                "x",
                "\"items\" must be a list",
            ),
            (
                json!({"__type__": "dict", "items": [[1]]}),
                ModelKwargs,
                "x.items[0]",
                "two-element lists",
            ),
            (
                json!({"__type__": "class", "name": "a..b"}),
                ModelKwargs,
                "x",
                "is not a class name",
            ),
            (
                json!({"__type__": "class", "name": 7}),
                ModelKwargs,
                "x",
                "\"name\" must be a string",
            ),
            (
                json!({"__type__": "dtype", "name": "float128"}),
                ModelKwargs,
                "x",
                "\"float128\" is not one of",
            ),
            (
                json!({"__type__": "float", "value": "infinity"}),
                ModelKwargs,
                "x",
                "\"infinity\" is not",
            ),
            (
                json!({"__type__": "object", "codec": "dataclass", "class": "m.C", "fields": []}),
                ModelKwargs,
                "x",
                "\"fields\" must be an object",
            ),
            (
                json!({"__type__": "object", "codec": "dataclass", "class": 1, "fields": {}}),
                ModelKwargs,
                "x",
                "\"class\" must be a class name or null",
            ),
            (
                json!({"__type__": "object", "codec": "", "class": null, "fields": {}}),
                ModelKwargs,
                "x",
                "\"codec\" must be a non-empty string",
            ),
            (
                json!({"__type__": "spec", "class": "m.S"}),
                SchedulerKwargs,
                "x",
                "\"spec\" tag: needs the key \"kwargs\"",
            ),
            (
                json!({"__type__": "spec", "class": null, "kwargs": {}}),
                SchedulerKwargs,
                "x",
                "\"class\" must be a class name",
            ),
            (
                json!({"f": {"__type__": "callable", "name": "f"}}),
                ModelKwargs,
                "x.f",
                "only appear in scheduler_kwargs",
            ),
            (
                json!({"__type__": "tensor", "name": "t"}),
                OptimKwargs,
                "x",
                "only appear in extra state",
            ),
            (
                json!([tensor("t"), {"a": tensor("t")}]),
                ExtraState,
                "x[1].a",
                "which the tag at x[0] names too",
            ),
            (
                json!({"__type__": "tuple", "items": [1, {"__type__": "?"}]}),
                ModelKwargs,
                "x.items[1]",
                "unknown type tag",
            ),
        ];
        for (v, place, path, fragment) in cases {
            let (got_path, got) = reason(v.clone(), place);
            assert_eq!(got_path, path, "{v}");
            assert!(got.contains(fragment), "{v}: {got}");
        }
        let long = format!("{}.b", "a".repeat(600));
        let (_, got) = reason(class_ref(&long), ModelKwargs);
        assert!(got.contains("602 bytes"), "{got}");
    }

    #[test]
    fn the_plain_view_reads_tuples_as_lists_and_keeps_other_tags() {
        let v = json!({"betas": tuple([json!(0.9), tuple([json!(1)])]), "c": class_ref("m.C")});
        let plain = plain_map(v.as_object().unwrap());
        assert_eq!(plain["betas"], json!([0.9, [1]]));
        assert_eq!(plain["c"], class_ref("m.C"));
        assert!(matches!(plain_view(&json!([1, {"a": 2}])), Cow::Borrowed(_)));
    }

    #[test]
    fn version_1_objects_with_the_type_key_become_dict_tags_and_back() {
        let v1 = json!({"cfg": {"__type__": "mine", "n": [{"__type__": 1}]}, "plain": {"a": 1}});
        let typed = escape_v1(v1.as_object().unwrap().clone());
        assert_eq!(typed["cfg"]["__type__"], "dict");
        assert_eq!(typed["plain"], json!({"a": 1}));
        let mut refs = TensorRefs::default();
        check(&Value::Object(typed.clone()), "k", Place::ModelKwargs, &mut refs).unwrap();
        assert_eq!(Value::Object(to_v1(&typed, "model_kwargs").unwrap()), v1);
    }

    #[test]
    fn version_1_refuses_tags_it_cannot_hold_naming_tag_and_path() {
        for (v, fragment) in [
            (
                json!({"a": [class_ref("m.C")]}),
                "a \"class\" tag at model_kwargs.a[0] needs version 2",
            ),
            (
                json!({"d": dict([(json!(1), json!(2))])}),
                "non-string key 1 at model_kwargs.d.items[0]",
            ),
            (
                json!({"d": dict([(json!("k"), json!(1)), (json!("k"), json!(2))])}),
                "the key \"k\" twice",
            ),
        ] {
            match to_v1(v.as_object().unwrap(), "model_kwargs") {
                Err(FormatError::InvalidInput(m)) => assert!(m.contains(fragment), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
