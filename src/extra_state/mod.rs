//! Extra training state (docs/FORMAT.md 11.3): stateful objects saved
//! with a checkpoint besides the model, optimizer and scheduler, such as
//! the RNG and the step counters, under a name of the caller's choice.
//!
//! - [`Stateful`]: what such an object implements;
//! - [`ExtraState`]: one object's state, a typed value whose `tensor`
//!   tags name the tensors it carries;
//! - `rng.rs`: [`Rng`], libtorch's default generators
//!   (`pytorch_saver.RNG`);
//! - `counters.rs`: [`Counters`], named integers (`pytorch_saver.Counters`).
//!
//! A container tracks objects by name
//! ([`ModelContainer::track`](crate::ModelContainer::track)), writes
//! their state into every checkpoint and restores it on load.

mod counters;
mod rng;

use std::any::Any;
use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::format::INTERNALS_KEY;

pub use counters::Counters;
pub use rng::Rng;

/// The key that makes a JSON object a typed-value tag (FORMAT.md 11.2).
const TYPE_KEY: &str = "__type__";

/// An object whose state a checkpoint carries (FORMAT.md 11.3).
///
/// Loading is all or nothing: a container calls [`check_state`] on every
/// tracked object before it calls [`load_state`] on any, so an object
/// refuses in `check_state` whatever its `load_state` could not take.
///
/// [`check_state`]: Stateful::check_state
/// [`load_state`]: Stateful::load_state
pub trait Stateful: AsAny + Send {
    /// The class name written with the state (`pytorch_saver.RNG`); a file
    /// entry is restored only into an object of the same class name.
    fn class_name(&self) -> &str;

    /// The object's current state.
    fn state(&self) -> Result<ExtraState>;

    /// Whether `state` (of this object's class) can be loaded, changing
    /// nothing: its JSON has the expected form and its tensors the
    /// expected dtypes and shapes.
    fn check_state(&self, state: &ExtraState) -> Result<()>;

    /// Loads `state`, which [`check_state`](Stateful::check_state) accepted.
    fn load_state(&mut self, state: &ExtraState) -> Result<()>;
}

/// Lets a container hand out a tracked object as its own type; every
/// `'static` type has it.
pub trait AsAny {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// One object's state: a typed value (FORMAT.md 11.2) in which each
/// tensor is a `tensor` tag, and the tensors those tags name.
///
/// An object builds it with [`add_tensor`](Self::add_tensor), which returns
/// the tag to put into the value, and reads a loaded one with
/// [`tensor`](Self::tensor), which resolves a tag. Tensor names are the
/// object's own (`torch.cpu`); a container prefixes them with the entry's
/// name when it writes them (`rng.torch.cpu`), and a loaded state keeps
/// the file's names, whatever its writer chose.
#[derive(Debug, Default)]
pub struct ExtraState {
    /// The typed value.
    pub value: Value,
    /// The tensors the value's tags name, by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The entry this state was read from (empty for a state an object
    /// made), for error messages.
    entry: String,
}

impl ExtraState {
    /// A state of `value` with no tensors yet.
    pub fn new(value: Value) -> Self {
        ExtraState {
            value,
            tensors: BTreeMap::new(),
            entry: String::new(),
        }
    }

    /// Adds `tensor` under `name` and returns the tag that stands for it.
    pub fn add_tensor(&mut self, name: impl Into<String>, tensor: Tensor) -> Value {
        let name = name.into();
        let tag = tensor_tag(&name);
        self.tensors.insert(name, tensor);
        tag
    }

    /// The tensor a `tensor` tag names; `path` (`torch.cpu`) names the
    /// value's place in errors.
    pub fn tensor(&self, tag: &Value, path: &str) -> Result<&Tensor> {
        let name = tag_name(tag).ok_or_else(|| self.invalid(path, "is not a tensor tag".into()))?;
        self.tensors
            .get(name)
            .ok_or_else(|| self.invalid(path, format!("names tensor {name:?}, which the state does not hold")))
    }

    /// The tensor a tag names, checked to be `kind` with `shape`.
    pub fn tensor_of(&self, tag: &Value, path: &str, kind: Kind, shape: &[i64]) -> Result<&Tensor> {
        let t = self.tensor(tag, path)?;
        if t.kind() != kind || t.size() != shape {
            return Err(self.invalid(
                path,
                format!(
                    "holds a {:?} tensor of shape {:?}, expected {kind:?} of shape {shape:?}",
                    t.kind(),
                    t.size()
                ),
            ));
        }
        Ok(t)
    }

    /// An [`Error::InvalidState`] naming `path` inside this entry's state
    /// (`__pytorch_saver__.extra.rng.state.torch.cpu`).
    pub fn invalid(&self, path: &str, reason: String) -> Error {
        let entry = match self.entry.as_str() {
            "" => "<entry>",
            e => e,
        };
        let what = match path {
            "" => format!("{INTERNALS_KEY}.extra.{entry}.state"),
            p => format!("{INTERNALS_KEY}.extra.{entry}.state.{p}"),
        };
        Error::InvalidState { what, reason }
    }

    /// The state of entry `entry`, as read from a file.
    pub(crate) fn read(entry: &str, value: Value, tensors: BTreeMap<String, Tensor>) -> Self {
        ExtraState {
            value,
            tensors,
            entry: entry.to_owned(),
        }
    }

    /// The names of the tensor tags in the value, depth first in document
    /// order (each tag once per occurrence).
    pub fn tag_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        visit_tags(&self.value, &mut |n| names.push(n.to_owned()));
        names
    }

    /// The state with every tensor name `n` (tags and tensors) renamed to
    /// `{prefix}.{n}`: what a container writes for entry `prefix`.
    /// Checks first that every tensor is named by exactly one tag and every
    /// tag names a tensor.
    pub(crate) fn prefixed(mut self, prefix: &str) -> Result<Self> {
        self.entry = prefix.to_owned();
        let names = self.tag_names();
        let mut seen = std::collections::BTreeSet::new();
        for name in &names {
            if !seen.insert(name.as_str()) {
                return Err(self.invalid("", format!("two tensor tags name tensor {name:?}")));
            }
            if !self.tensors.contains_key(name) {
                return Err(self.invalid(
                    "",
                    format!("a tensor tag names {name:?}, which the state does not hold"),
                ));
            }
        }
        if let Some(name) = self.tensors.keys().find(|n| !seen.contains(n.as_str())) {
            return Err(self.invalid("", format!("tensor {name:?} is named by no tensor tag")));
        }
        rename_tags(&mut self.value, &|n| format!("{prefix}.{n}"));
        self.tensors = std::mem::take(&mut self.tensors)
            .into_iter()
            .map(|(n, t)| (format!("{prefix}.{n}"), t))
            .collect();
        Ok(self)
    }
}

/// `{"__type__": "tensor", "name": name}`.
pub fn tensor_tag(name: &str) -> Value {
    let mut m = Map::new();
    m.insert(TYPE_KEY.into(), "tensor".into());
    m.insert("name".into(), name.into());
    Value::Object(m)
}

/// The name a `tensor` tag holds, if `value` is one.
pub fn tag_name(value: &Value) -> Option<&str> {
    let m = value.as_object()?;
    if m.len() != 2 || m.get(TYPE_KEY)?.as_str()? != "tensor" {
        return None;
    }
    m.get("name")?.as_str()
}

/// Calls `f` with the name of every `tensor` tag in `value`, depth first.
fn visit_tags<'v>(value: &'v Value, f: &mut dyn FnMut(&'v str)) {
    match value {
        Value::Object(m) => match tag_name(value) {
            Some(name) => f(name),
            None => m.values().for_each(|v| visit_tags(v, f)),
        },
        Value::Array(items) => items.iter().for_each(|v| visit_tags(v, f)),
        _ => {}
    }
}

/// Replaces the name of every `tensor` tag in `value` with `rename(name)`.
fn rename_tags(value: &mut Value, rename: &dyn Fn(&str) -> String) {
    if let Some(name) = tag_name(value) {
        *value = tensor_tag(&rename(name));
        return;
    }
    match value {
        Value::Object(m) => m.values_mut().for_each(|v| rename_tags(v, rename)),
        Value::Array(items) => items.iter_mut().for_each(|v| rename_tags(v, rename)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefixing_renames_tags_and_tensors_together() {
        let mut s = ExtraState::new(Value::Null);
        let a = s.add_tensor("torch.cpu", Tensor::from_slice(&[1u8, 2]));
        let b = s.add_tensor("x", Tensor::from_slice(&[3i64]));
        s.value = json!({"torch": {"cpu": a}, "list": [{"__type__": "tuple", "items": [b]}]});
        let s = s.prefixed("rng").unwrap();
        assert_eq!(s.tag_names(), ["rng.torch.cpu", "rng.x"]);
        assert_eq!(s.tensors.keys().collect::<Vec<_>>(), ["rng.torch.cpu", "rng.x"]);
        assert_eq!(s.value["torch"]["cpu"], tensor_tag("rng.torch.cpu"));
    }

    #[test]
    fn a_state_whose_tags_and_tensors_differ_is_refused_naming_the_tensor() {
        let mut s = ExtraState::new(Value::Null);
        let tag = s.add_tensor("t", Tensor::from_slice(&[1u8]));
        s.value = json!([tag.clone(), tag]);
        let e = s.prefixed("e").unwrap_err().to_string();
        assert!(e.contains("two tensor tags name tensor \"t\""), "{e}");

        let mut s = ExtraState::new(json!({}));
        s.add_tensor("orphan", Tensor::from_slice(&[1u8]));
        let e = s.prefixed("e").unwrap_err().to_string();
        assert!(
            e.contains("__pytorch_saver__.extra.e.state") && e.contains("orphan"),
            "{e}"
        );

        let s = ExtraState::new(json!({"a": tensor_tag("missing")}));
        let e = s.prefixed("e").unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn resolving_a_tag_checks_what_it_names() {
        let mut s = ExtraState::new(Value::Null);
        let tag = s.add_tensor("t", Tensor::from_slice(&[1u8, 2, 3]));
        assert!(s.tensor_of(&tag, "t", Kind::Uint8, &[3]).is_ok());
        let e = s.tensor_of(&tag, "t", Kind::Uint8, &[4]).unwrap_err().to_string();
        assert!(e.contains("expected Uint8 of shape [4]"), "{e}");
        let e = s.tensor(&json!(1), "p").unwrap_err().to_string();
        assert!(e.contains("state.p") && e.contains("not a tensor tag"), "{e}");
        assert_eq!(tag_name(&json!({"__type__": "tensor", "name": "n", "x": 1})), None);
    }
}
