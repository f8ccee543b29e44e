//! [`UserMetadata`]: the free keys saved beside the state, checked as
//! they are inserted.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::RESERVED_KEYS;

/// Free user metadata saved beside the state (`loss`, `epoch`, ...).
///
/// Values are checked as they are inserted: JSON has no NaN or infinity,
/// so a non-finite float is refused here rather than silently written as
/// `null`. Reserved keys are refused by `save`, before anything is written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserMetadata {
    map: Map<String, Value>,
}

/// A value that can go into [`UserMetadata`].
pub trait MetadataValue {
    /// The JSON value, or why there is none.
    fn to_json(self) -> std::result::Result<Value, String>;
}

macro_rules! exact_metadata_value {
    ($($t:ty),*) => {$(
        impl MetadataValue for $t {
            fn to_json(self) -> std::result::Result<Value, String> {
                Ok(Value::from(self))
            }
        }
    )*};
}
exact_metadata_value!(bool, i8, i16, i32, i64, u8, u16, u32, u64, usize, &str, String);

impl MetadataValue for f64 {
    fn to_json(self) -> std::result::Result<Value, String> {
        serde_json::Number::from_f64(self)
            .map(Value::Number)
            .ok_or_else(|| format!("{self} is not representable in JSON (NaN and infinities are not)"))
    }
}

impl MetadataValue for f32 {
    fn to_json(self) -> std::result::Result<Value, String> {
        f64::from(self).to_json()
    }
}

impl MetadataValue for Value {
    /// A `serde_json::Value` cannot hold a non-finite number, so any is valid.
    fn to_json(self) -> std::result::Result<Value, String> {
        Ok(self)
    }
}

impl UserMetadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`; fails on a value JSON cannot represent.
    pub fn insert(&mut self, key: impl Into<String>, value: impl MetadataValue) -> Result<&mut Self> {
        let key = key.into();
        let value = value.to_json().map_err(|reason| Error::InvalidMetadata {
            key: key.clone(),
            reason,
        })?;
        self.map.insert(key, value);
        Ok(self)
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, key: impl Into<String>, value: impl MetadataValue) -> Result<Self> {
        self.insert(key, value)?;
        Ok(self)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// Fails on the first key the format reserves for itself.
    pub(super) fn check_reserved(&self) -> Result<()> {
        match self.map.keys().find(|k| RESERVED_KEYS.contains(&k.as_str())) {
            Some(k) => Err(Error::ReservedMetadataKey(k.clone())),
            None => Ok(()),
        }
    }
}

impl TryFrom<Map<String, Value>> for UserMetadata {
    type Error = Error;
    fn try_from(map: Map<String, Value>) -> Result<Self> {
        let m = UserMetadata { map };
        m.check_reserved()?;
        Ok(m)
    }
}
