//! The manager's state file `D/.P.manager.json` (FORMAT.md 12.1):
//! `{"id": ID, "pinned": [file names]}`, replaced atomically (on an object
//! store: created create-only, replaced by the lock holder; 12.6).

use std::fs::File;
use std::io::Read;

use serde_json::{json, Value};

use super::store::SeriesDir;
use crate::error::{Error, Result};
use crate::format::FormatError;

/// The series id and the pinned file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct State {
    pub(super) id: String,
    pub(super) pinned: Vec<String>,
}

/// The state file's name for series `prefix`.
pub(super) fn state_name(prefix: &str) -> String {
    format!(".{prefix}.manager.json")
}

impl State {
    /// Reads the state file, or creates it with a new id and no pins. On an
    /// object store the creation is create-only: when another manager
    /// created it first, its state is read.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn read_or_create(dir: &SeriesDir, prefix: &str) -> Result<Self> {
        if let Some(state) = Self::read(dir, prefix)? {
            return Ok(state);
        }
        let state = State {
            id: new_id()?,
            pinned: Vec::new(),
        };
        if dir.create_file(&state_name(prefix), state.to_bytes())? {
            return Ok(state);
        }
        Self::read(dir, prefix)?.ok_or_else(|| {
            FormatError::storage(
                "cannot read",
                dir.join(&state_name(prefix)).display().to_string(),
                "the state object exists (its create-only write was refused) but cannot be found",
            )
            .into()
        })
    }

    /// Reads the state file; `None` when there is none. Never writes.
    pub(super) fn read(dir: &SeriesDir, prefix: &str) -> Result<Option<Self>> {
        let name = state_name(prefix);
        match dir.read(&name)? {
            Some(bytes) => Self::parse(&dir.join(&name).display().to_string(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn parse(what: &str, bytes: &[u8]) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidState {
            what: what.to_owned(),
            reason: reason.to_owned(),
        };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| invalid(&format!("not JSON: {e}")))?;
        let id = value
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("\"id\" must be a non-empty string"))?;
        let pinned = match value.get("pinned") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("\"pinned\" must be an array of file names"))?,
            Some(_) => return Err(invalid("\"pinned\" must be an array of file names")),
        };
        Ok(State {
            id: id.to_owned(),
            pinned,
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&json!({"id": self.id, "pinned": self.pinned})).expect("strings serialize")
    }

    /// Replaces the state file: atomically in a directory, one PUT on an
    /// object store (the lock holder alone writes it).
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn write(&self, dir: &SeriesDir, prefix: &str) -> Result<()> {
        dir.replace(&state_name(prefix), self.to_bytes())
    }
}

/// 16 random bytes, with the version 4 UUID bits set.
pub(super) fn uuid4_bytes() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| FormatError::io("cannot read", "/dev/urandom", e))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b)
}

/// A random version 4 UUID in its 36-character text form.
fn new_id() -> Result<String> {
    let hex: String = uuid4_bytes()?.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_version_4_uuids() {
        let id = super::new_id().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!("89ab".contains(&id[19..20]));
        assert_ne!(id, super::new_id().unwrap());
    }
}
