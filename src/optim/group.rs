//! Typed access to a parameter group's hyperparameters, which schedulers
//! read and write as much as optimizers do. The type itself belongs to
//! the metadata schema (`format::metadata::ParamGroup`), where a file's
//! `param_groups` are parsed and written. No tch here.

use serde_json::Value;

use crate::error::{Error, Result};
pub use crate::format::metadata::ParamGroup;
use crate::format::metadata::{decode_float, encode_float};

impl ParamGroup {
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
}
