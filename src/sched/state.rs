//! Reading a scheduler's `state_dict()` back: typed getters whose errors
//! name the key, and a final check that no key was left unread. Every
//! scheduler parses a whole new state through this before replacing its
//! own, so a bad state leaves the scheduler as it was.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::pymath::Num;
use crate::error::{Error, Result};
use crate::format::metadata::{decode_float, encode_float};

/// Keys that PyTorch versions before 2.13 wrote (or did not yet write);
/// accepted so that a state saved by an older torch still loads.
const LEGACY_KEYS: [&str; 1] = ["verbose"];

/// A scheduler state being read.
pub(crate) struct StateReader<'a> {
    class: &'a str,
    map: &'a Map<String, Value>,
    used: HashSet<&'a str>,
    groups: usize,
}

impl<'a> StateReader<'a> {
    /// A reader for the state of `class` over `groups` param groups.
    pub(crate) fn new(class: &'a str, map: &'a Map<String, Value>, groups: usize) -> Self {
        StateReader {
            class,
            map,
            used: HashSet::new(),
            groups,
        }
    }

    /// An error about `key`.
    pub(crate) fn invalid(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidState {
            what: format!("{} state_dict key {key:?}", self.class),
            reason: reason.into(),
        }
    }

    fn get(&mut self, key: &str) -> Result<&'a Value> {
        let (k, v) = self
            .map
            .get_key_value(key)
            .ok_or_else(|| self.invalid(key, "missing"))?;
        self.used.insert(k.as_str());
        Ok(v)
    }

    fn typed<T>(&mut self, key: &str, kind: &str, parse: impl FnOnce(&'a Value) -> Option<T>) -> Result<T> {
        let v = self.get(key)?;
        parse(v).ok_or_else(|| self.invalid(key, format!("must be {kind}, got {v}")))
    }

    /// An integer.
    pub(crate) fn i64(&mut self, key: &str) -> Result<i64> {
        self.typed(key, "an integer", Value::as_i64)
    }

    /// An integer that may be absent.
    pub(crate) fn i64_opt(&mut self, key: &str) -> Result<Option<i64>> {
        if self.map.contains_key(key) {
            self.i64(key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A boolean.
    pub(crate) fn bool(&mut self, key: &str) -> Result<bool> {
        self.typed(key, "a boolean", Value::as_bool)
    }

    /// A boolean that older PyTorch versions did not write (`false` then).
    pub(crate) fn bool_or_false(&mut self, key: &str) -> Result<bool> {
        if self.map.contains_key(key) {
            self.bool(key)
        } else {
            Ok(false)
        }
    }

    /// A boolean that may be absent.
    pub(crate) fn bool_opt(&mut self, key: &str) -> Result<Option<bool>> {
        if self.map.contains_key(key) {
            self.bool(key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A float (JSON number or the format's non-finite encoding).
    pub(crate) fn f64(&mut self, key: &str) -> Result<f64> {
        self.typed(key, "a number", decode_float)
    }

    /// A Python int or float.
    pub(crate) fn num(&mut self, key: &str) -> Result<Num> {
        self.typed(key, "a number", Num::from_json)
    }

    /// A Python int or float, or `None` (JSON null).
    pub(crate) fn num_or_null(&mut self, key: &str) -> Result<Option<Num>> {
        self.typed(key, "a number or null", |v| match v {
            Value::Null => Some(None),
            v => Num::from_json(v).map(Some),
        })
    }

    /// A string.
    pub(crate) fn str(&mut self, key: &str) -> Result<&'a str> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A list of the raw values, one per param group.
    pub(crate) fn per_group(&mut self, key: &str) -> Result<&'a [Value]> {
        let items = self.typed(key, "a list", Value::as_array)?;
        if items.len() != self.groups {
            return Err(self.invalid(
                key,
                format!(
                    "has {} values, the optimizer has {} param groups",
                    items.len(),
                    self.groups
                ),
            ));
        }
        Ok(items)
    }

    /// A list of floats, one per param group.
    pub(crate) fn f64_per_group(&mut self, key: &str) -> Result<Vec<f64>> {
        let items = self.per_group(key)?;
        items
            .iter()
            .map(|v| decode_float(v).ok_or_else(|| self.invalid(key, format!("{v} is not a number"))))
            .collect()
    }

    /// A list of Python numbers, one per param group.
    pub(crate) fn num_per_group(&mut self, key: &str) -> Result<Vec<Num>> {
        let items = self.per_group(key)?;
        items
            .iter()
            .map(|v| Num::from_json(v).ok_or_else(|| self.invalid(key, format!("{v} is not a number"))))
            .collect()
    }

    /// The raw value.
    pub(crate) fn raw(&mut self, key: &str) -> Result<&'a Value> {
        self.get(key)
    }

    /// Fails on the first key that no getter read (legacy keys excepted).
    pub(crate) fn finish(&self) -> Result<()> {
        match self
            .map
            .keys()
            .find(|k| !self.used.contains(k.as_str()) && !LEGACY_KEYS.contains(&k.as_str()))
        {
            Some(k) => Err(self.invalid(k, format!("not a key of {}'s state_dict", self.class))),
            None => Ok(()),
        }
    }
}

/// A list of floats as JSON.
pub(crate) fn f64_list(values: &[f64]) -> Value {
    Value::Array(values.iter().map(|&x| encode_float(x)).collect())
}

/// A list of Python numbers as JSON.
pub(crate) fn num_list(values: &[Num]) -> Value {
    Value::Array(values.iter().map(|x| x.to_json()).collect())
}
