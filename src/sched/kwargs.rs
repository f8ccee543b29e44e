//! The kwarg getters the schedulers need beyond the common ones: Python
//! numbers that keep their int/float type, per-group values ("float or
//! list"), strings, lists of ints and optional ints, and the composites'
//! lists of child scheduler specs.

use serde_json::{Map, Value};

use super::pymath::Num;
use crate::error::Result;
use crate::format::typed;
use crate::kwargs::Kwargs;

/// A kwarg that PyTorch's `_format_param` accepts as one value for every
/// param group or as a list with one value per group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PerGroup {
    /// One value for all groups (`max_lr=0.1`).
    One(Num),
    /// One value per group (`max_lr=[0.1, 0.01]`).
    List(Vec<Num>),
}

impl PerGroup {
    /// The value of each of `n` groups; a list of another length is an error
    /// with PyTorch's message (`"max_lr must have the same length ..."`).
    pub(crate) fn expand(&self, kw: &Kwargs<'_>, key: &str, n: usize) -> Result<Vec<Num>> {
        match self {
            PerGroup::One(x) => Ok(vec![*x; n]),
            PerGroup::List(v) if v.len() == n => Ok(v.clone()),
            PerGroup::List(v) => Err(kw.error(format!(
                "{key} must have the same length as optimizer.param_groups: {key} has {} values, param_groups has {n}",
                v.len()
            ))),
        }
    }
}

fn num(kw: &Kwargs<'_>, key: &str, v: &Value) -> Result<Num> {
    Num::from_json(v)
        .or_else(|| typed::as_float(v).map(Num::Float))
        .ok_or_else(|| kw.error(format!("kwarg {key:?} must be a number, got {v}")))
}

impl Kwargs<'_> {
    /// A number kwarg with a default, keeping Python's int/float type.
    pub(crate) fn num_or(&self, key: &str, default: Num) -> Result<Num> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => num(self, key, v),
        }
    }

    /// A number kwarg that must be present.
    pub(crate) fn required_num(&self, key: &str) -> Result<Num> {
        match self.take(key) {
            None => Err(self.error(format!("missing required kwarg {key:?}"))),
            Some(v) => num(self, key, v),
        }
    }

    /// A number or a list of numbers (one per param group); `default`
    /// `None` makes the kwarg required.
    pub(crate) fn per_group_or(&self, key: &str, default: Option<Num>) -> Result<PerGroup> {
        match (self.take(key), default) {
            (None, Some(d)) => Ok(PerGroup::One(d)),
            (None, None) => Err(self.error(format!("missing required kwarg {key:?}"))),
            (Some(Value::Array(items)), _) => Ok(PerGroup::List(
                items.iter().map(|v| num(self, key, v)).collect::<Result<_>>()?,
            )),
            (Some(v), _) => num(self, key, v).map(PerGroup::One),
        }
    }

    /// A string kwarg with a default.
    pub(crate) fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.take(key) {
            None => Ok(default.to_owned()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.error(format!("kwarg {key:?} must be a string, got {v}"))),
        }
    }

    /// A list of integers that must be present (MultiStepLR's milestones).
    pub(crate) fn required_i64_list(&self, key: &str) -> Result<Vec<i64>> {
        let bad = |v: &Value| self.error(format!("kwarg {key:?} must be a list of integers, got {v}"));
        match self.take(key) {
            None => Err(self.error(format!("missing required kwarg {key:?}"))),
            Some(v @ Value::Array(items)) => items.iter().map(|x| x.as_i64().ok_or_else(|| bad(v))).collect(),
            Some(v) => Err(bad(v)),
        }
    }
}

impl Kwargs<'_> {
    /// A list of `spec` tags (FORMAT.md 11.2) that must be present: each
    /// child's class name and kwargs (SequentialLR's `schedulers`).
    pub(crate) fn required_spec_list(&self, key: &str) -> Result<Vec<(&str, &Map<String, Value>)>> {
        let bad = |v: &Value| {
            self.error(format!(
                "kwarg {key:?} must be a list of scheduler specs ({{\"__type__\": \"spec\", \"class\": ..., \"kwargs\": {{...}}}}), got {v}"
            ))
        };
        match self.take(key) {
            None => Err(self.error(format!("missing required kwarg {key:?}"))),
            Some(v @ Value::Array(items)) => items.iter().map(|x| typed::as_spec(x).ok_or_else(|| bad(v))).collect(),
            Some(v) => Err(bad(v)),
        }
    }
}
