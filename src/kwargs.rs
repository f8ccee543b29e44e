//! Constructor kwargs as a factory sees them: typed getters whose errors
//! name the class and the kwarg, and a check that every kwarg given was
//! used (PyTorch raises TypeError on an unexpected kwarg). Models,
//! optimizers and schedulers all read their kwargs through this.
//!
//! Kwargs are typed values (docs/FORMAT.md 11.2). The getters read them
//! as Python code does: a `tuple` tag wherever a list is accepted (Adam's
//! `betas`), a `float` tag wherever a float is (`inf`), and
//! [`class_name`](Kwargs::class_name) and [`dtype`](Kwargs::dtype) give a
//! `class` or `dtype` tag's name.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::typed;

/// Constructor kwargs of one class.
pub struct Kwargs<'a> {
    class: &'a str,
    map: &'a Map<String, Value>,
    /// `map` with every tuple read as a list: what the getters read.
    plain: Cow<'a, Map<String, Value>>,
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
            plain: typed::plain_map(map),
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

    /// The JSON object as given, tags included (typed values).
    pub fn as_map(&self) -> &Map<String, Value> {
        self.map
    }

    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::InvalidKwargs {
            class: self.class.to_owned(),
            reason: reason.into(),
        }
    }

    /// The kwarg `key`, `tuple` tags read as lists (None: absent or null),
    /// marked as used.
    pub(crate) fn take(&self, key: &str) -> Option<&Value> {
        self.used.lock().expect("kwargs lock").insert(key.to_owned());
        self.plain.get(key).filter(|v| !v.is_null())
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

    /// A float kwarg with a default (integers are accepted, as in Python,
    /// and a `float` tag's infinity or NaN).
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => typed::as_float(v).ok_or_else(|| self.error(format!("kwarg {key:?} must be a number, got {v}"))),
        }
    }

    /// A class reference kwarg (a `class` tag, FORMAT.md 11.2): the class
    /// name, for the factory to look up; None when absent or null.
    pub fn class_name(&self, key: &str) -> Result<Option<&str>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => typed::as_class_ref(v)
                .map(Some)
                .ok_or_else(|| self.error(format!("kwarg {key:?} must be a class reference, got {v}"))),
        }
    }

    /// A `torch.dtype` kwarg (a `dtype` tag): its name (`float32`); None
    /// when absent or null.
    pub fn dtype(&self, key: &str) -> Result<Option<&str>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => typed::as_dtype(v)
                .map(Some)
                .ok_or_else(|| self.error(format!("kwarg {key:?} must be a torch dtype, got {v}"))),
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
