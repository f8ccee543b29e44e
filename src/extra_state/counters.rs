//! [`Counters`]: named integers (step, epoch) as a [`Stateful`] object,
//! class `pytorch_saver.Counters` (FORMAT.md 11.3).

use serde_json::{Map, Value};

use super::{ExtraState, Stateful};
use crate::error::Result;

/// The class name of [`Counters`]' state.
pub const COUNTERS_CLASS: &str = "pytorch_saver.Counters";

/// Named integers that a training loop bumps (`step`, `epoch`), in the
/// order they were first set. Their state is an object of integers
/// (`{"step": 30, "epoch": 2}`); loading replaces every counter with the
/// file's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    values: Vec<(String, i64)>,
}

impl Counters {
    /// No counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// These counters with `name` set to `value`.
    pub fn with(mut self, name: &str, value: i64) -> Self {
        self.set(name, value);
        self
    }

    /// The counter `name`, if set.
    pub fn get(&self, name: &str) -> Option<i64> {
        self.values.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// Sets `name` to `value` (a new name goes last).
    pub fn set(&mut self, name: &str, value: i64) {
        match self.values.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.values.push((name.to_owned(), value)),
        }
    }

    /// Adds 1 to `name` (from 0 if unset) and returns the new value.
    pub fn increment(&mut self, name: &str) -> i64 {
        let value = self.get(name).unwrap_or(0) + 1;
        self.set(name, value);
        value
    }

    /// Every counter, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.values.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// The counters of a state, checked.
    fn parse(state: &ExtraState) -> Result<Vec<(String, i64)>> {
        let object = state
            .value
            .as_object()
            .ok_or_else(|| state.invalid("", "a pytorch_saver.Counters state is an object of integers".into()))?;
        object
            .iter()
            .map(|(name, v)| match v.as_i64() {
                Some(i) => Ok((name.clone(), i)),
                None => Err(state.invalid(name, format!("{v} is not a 64-bit signed integer"))),
            })
            .collect()
    }
}

impl Stateful for Counters {
    fn class_name(&self) -> &str {
        COUNTERS_CLASS
    }

    fn state(&self) -> Result<ExtraState> {
        let values: Map<String, Value> = self.values.iter().map(|(n, v)| (n.clone(), (*v).into())).collect();
        Ok(ExtraState::new(Value::Object(values)))
    }

    fn check_state(&self, state: &ExtraState) -> Result<()> {
        Self::parse(state).map(|_| ())
    }

    fn load_state(&mut self, state: &ExtraState) -> Result<()> {
        self.values = Self::parse(state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counters_keep_their_order_and_load_what_the_state_holds() {
        let mut c = Counters::new().with("step", 3).with("epoch", 1);
        assert_eq!(c.increment("step"), 4);
        assert_eq!(c.increment("new"), 1);
        let state = c.state().unwrap();
        assert_eq!(state.value.to_string(), r#"{"step":4,"epoch":1,"new":1}"#);
        let mut other = Counters::new().with("stale", 9);
        other.load_state(&state).unwrap();
        assert_eq!(other, c);
        assert_eq!(other.get("stale"), None);
    }

    #[test]
    fn a_non_integer_counter_is_refused_naming_it() {
        let c = Counters::new();
        for bad in [
            json!({"step": 1.5}),
            json!({"step": "1"}),
            json!({"step": u64::MAX}),
            json!([1]),
        ] {
            let e = c.check_state(&ExtraState::new(bad.clone())).unwrap_err();
            assert_eq!(e.kind(), "InvalidState", "{bad}");
        }
        let e = c.check_state(&ExtraState::new(json!({"epoch": 2.5}))).unwrap_err();
        assert!(e.to_string().contains("state.epoch"), "{e}");
    }
}
