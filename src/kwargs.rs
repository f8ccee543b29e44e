//! Constructor kwargs as a factory sees them: typed getters whose errors
//! name the class and the kwarg, and a check that every kwarg given was
//! used (PyTorch raises TypeError on an unexpected kwarg). Models,
//! optimizers and schedulers all read their kwargs through this.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Constructor kwargs of one class.
pub struct Kwargs<'a> {
    class: &'a str,
    map: &'a Map<String, Value>,
    used: Mutex<HashSet<String>>,
    loading: bool,
}

impl<'a> Kwargs<'a> {
    /// Kwargs for building `class`; `loading` says the model is rebuilt
    /// from a file (see [`loading`](Self::loading)).
    pub fn new(class: &'a str, map: &'a Map<String, Value>, loading: bool) -> Self {
        Kwargs {
            class,
            map,
            used: Mutex::new(HashSet::new()),
            loading,
        }
    }

    /// True when the model is being rebuilt from a file: every initial
    /// value will be overwritten by the file's, so a factory may skip a
    /// costly random init (PyTorch's `skip_init`). Random init of a 1 GiB
    /// model costs about ten times the load itself.
    pub fn loading(&self) -> bool {
        self.loading
    }

    pub fn class(&self) -> &str {
        self.class
    }

    /// The raw JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        self.map
    }

    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::InvalidKwargs {
            class: self.class.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn take(&self, key: &str) -> Option<&'a Value> {
        self.used.lock().expect("kwargs lock").insert(key.to_owned());
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// An integer kwarg that must be present.
    pub fn required_i64(&self, key: &str) -> Result<i64> {
        self.optional_i64(key)?
            .ok_or_else(|| self.error(format!("missing required kwarg {key:?}")))
    }

    /// An integer kwarg with a default.
    pub fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        Ok(self.optional_i64(key)?.unwrap_or(default))
    }

    /// An integer kwarg whose default is `None`.
    pub fn optional_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.error(format!("kwarg {key:?} must be an integer, got {v}"))),
        }
    }

    /// An integer kwarg that must be present and at least `min`.
    pub fn required_i64_at_least(&self, key: &str, min: i64) -> Result<i64> {
        let v = self.required_i64(key)?;
        if v < min {
            return Err(self.error(format!("kwarg {key:?} must be at least {min}, got {v}")));
        }
        Ok(v)
    }

    /// A float kwarg with a default (integers are accepted, as in Python).
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(format!("kwarg {key:?} must be a number, got {v}"))),
        }
    }

    /// A boolean kwarg with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(format!("kwarg {key:?} must be a boolean, got {v}"))),
        }
    }

    /// Marks every kwarg as used: for a factory that reads the whole JSON
    /// object itself and so answers for its own validation.
    pub fn accept_all(&self) {
        self.used.lock().expect("kwargs lock").extend(self.map.keys().cloned());
    }

    /// Fails on the first kwarg that no getter asked for.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.lock().expect("kwargs lock");
        match self.map.keys().find(|k| !used.contains(*k)) {
            Some(k) => Err(self.error(format!("unexpected kwarg {k:?}"))),
            None => Ok(()),
        }
    }
}
