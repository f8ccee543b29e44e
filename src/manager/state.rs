//! The manager's state file `D/.P.manager.json` (FORMAT.md 12.1):
//! `{"id": ID, "pinned": [file names]}`, replaced atomically.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::format::FormatError;

/// The series id and the pinned file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct State {
    pub(super) id: String,
    pub(super) pinned: Vec<String>,
}

pub(super) fn state_path(dir: &Path, prefix: &str) -> PathBuf {
    dir.join(format!(".{prefix}.manager.json"))
}

impl State {
    /// Reads the state file, or creates it with a new id and no pins.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn read_or_create(dir: &Path, prefix: &str) -> Result<Self> {
        if let Some(state) = Self::read(dir, prefix)? {
            return Ok(state);
        }
        let state = State {
            id: new_id()?,
            pinned: Vec::new(),
        };
        state.write(dir, prefix)?;
        Ok(state)
    }

    /// Reads the state file; `None` when there is none. Never writes.
    pub(super) fn read(dir: &Path, prefix: &str) -> Result<Option<Self>> {
        let path = state_path(dir, prefix);
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FormatError::io("cannot read", &path, e).into()),
        }
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidState {
            what: path.display().to_string(),
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

    /// Replaces the state file atomically: a temporary file, fsynced,
    /// renamed over the old one, then the directory fsynced.
    pub(super) fn write(&self, dir: &Path, prefix: &str) -> Result<()> {
        let path = state_path(dir, prefix);
        let tmp = dir.join(format!(".{prefix}.manager.json.{}.tmp", std::process::id()));
        let bytes =
            serde_json::to_vec_pretty(&json!({"id": self.id, "pinned": self.pinned})).expect("strings serialize");
        let result = (|| {
            let mut f = File::create(&tmp).map_err(|e| FormatError::io("cannot create", &tmp, e))?;
            f.write_all(&bytes)
                .map_err(|e| FormatError::io("cannot write", &tmp, e))?;
            f.sync_all().map_err(|e| FormatError::io("cannot fsync", &tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| FormatError::io("cannot replace", &path, e))?;
            sync_dir(dir)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// fsyncs a directory, so that names created or removed in it last.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FormatError::io("cannot fsync directory", dir, e).into())
}

/// A random version 4 UUID in its 36-character text form.
fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| FormatError::io("cannot read", "/dev/urandom", e))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
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
