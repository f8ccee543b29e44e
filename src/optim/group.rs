//! A parameter group: PyTorch's `optimizer.param_groups[i]`, which
//! schedulers read and write as much as optimizers do. No tch here.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::metadata::{decode_float, encode_float};

/// One parameter group: the indices of its parameters (into the
/// optimizer's parameter list) and its hyperparameters, keyed and ordered
/// as PyTorch's dict (`lr`, `betas`, `momentum`, ..., and what schedulers
/// add: `initial_lr`, `max_lr`, ...).
///
/// Floats are stored as JSON numbers, or in the format's encoding of a
/// non-finite float (`{"__float__": "inf"}`), so that a group serializes
/// as it is. Read them with [`f64`](Self::f64), which understands both.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// Indices of the group's parameters, in the group's order.
    pub params: Vec<usize>,
    /// Every other key of PyTorch's group dict, in PyTorch's order.
    pub options: Map<String, Value>,
}

impl ParamGroup {
    pub fn new(params: Vec<usize>, options: Map<String, Value>) -> Self {
        ParamGroup { params, options }
    }

    fn invalid(key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidState {
            what: format!("param_groups key {key:?}"),
            reason: reason.into(),
        }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.options.get(key)
    }

    /// `key` as a float (an integer is accepted, as Python would).
    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self.options.get(key).ok_or_else(|| Self::invalid(key, "missing"))?;
        decode_float(v).ok_or_else(|| Self::invalid(key, format!("must be a number, got {v}")))
    }

    /// Sets `key` to a float (non-finite values use the format's encoding).
    pub fn set_f64(&mut self, key: &str, value: f64) {
        self.options.insert(key.to_owned(), encode_float(value));
    }

    /// `key` as a boolean.
    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.options.get(key) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Self::invalid(key, format!("must be a boolean, got {v}"))),
            None => Err(Self::invalid(key, "missing")),
        }
    }

    /// `key` as a pair of floats (`betas`).
    pub fn f64_pair(&self, key: &str) -> Result<(f64, f64)> {
        let bad = || Self::invalid(key, "must be a list of two numbers");
        match self.options.get(key) {
            Some(Value::Array(a)) if a.len() == 2 => Ok((
                decode_float(&a[0]).ok_or_else(bad)?,
                decode_float(&a[1]).ok_or_else(bad)?,
            )),
            Some(_) => Err(bad()),
            None => Err(Self::invalid(key, "missing")),
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> Result<f64> {
        self.f64("lr")
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.set_f64("lr", lr);
    }

    /// PyTorch's dict: the options, then `params` (as `metadata.json`
    /// holds it).
    pub fn to_json(&self) -> Value {
        let mut m = self.options.clone();
        m.insert("params".into(), self.params.iter().map(|&i| Value::from(i)).collect());
        Value::Object(m)
    }
}
