//! A series seen from outside its manager (FORMAT.md 12.1): listed
//! without taking its lock, so that it works while a training run holds
//! the series, and without writing anything; and the series a directory
//! holds, found by their state files. A directory is a path or an
//! object store URL (`s3://bucket/prefix`).

use std::path::{Path, PathBuf};

use super::series::Series;
use super::state::State;
use super::store::SeriesDir;
use super::{CheckpointInfo, Policy};
use crate::error::{Error, Result};

/// A series' checkpoints as [`scan_series`] finds them.
#[derive(Debug)]
pub struct SeriesListing {
    pub prefix: String,
    /// The series id (`.P.manager.json`'s `id`).
    pub id: String,
    /// The checkpoints that belong to the series, oldest first, with the
    /// rules of the policy that keep them.
    pub checkpoints: Vec<CheckpointInfo>,
    /// The files named as checkpoints of the prefix that cannot be read,
    /// with their errors (FORMAT.md 12.4: in no list).
    pub unreadable: Vec<(PathBuf, Error)>,
}

/// The checkpoints of series `policy.prefix` in `dir`, oldest first, with
/// the rules of `policy` that keep them (pins from the state file); files
/// that cannot be read are left out. Reads metadata only (tensor CRCs are
/// not checked), takes no lock and writes nothing.
pub fn list_series(dir: impl AsRef<Path>, policy: &Policy) -> Result<Vec<CheckpointInfo>> {
    Ok(scan_series(dir, policy)?.checkpoints)
}

/// [`list_series`], with the series id and the files named as its
/// checkpoints that cannot be read. Fails with [`Error::Usage`] when `dir`
/// holds no series of that prefix (no `.P.manager.json`).
pub fn scan_series(dir: impl AsRef<Path>, policy: &Policy) -> Result<SeriesListing> {
    policy.validate()?;
    let dir = dir.as_ref();
    let store = SeriesDir::parse(dir)?;
    let Some(state) = State::read(&store, &policy.prefix)? else {
        return Err(Error::Usage(format!(
            "{}: no checkpoint series with prefix {:?} (no .{}.manager.json)",
            dir.display(),
            policy.prefix,
            policy.prefix
        )));
    };
    let series = Series {
        dir: store,
        prefix: policy.prefix.clone(),
        id: state.id,
    };
    series.list(policy, &state.pinned)
}

/// The prefixes of the series in `dir` (those with a state file
/// `.P.manager.json` whose `P` is a valid prefix), sorted.
pub fn series_prefixes(dir: impl AsRef<Path>) -> Result<Vec<String>> {
    let mut prefixes = Vec::new();
    for name in SeriesDir::parse(dir.as_ref())?.names()? {
        let Some(prefix) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".manager.json")) else {
            continue;
        };
        if Policy::new(prefix).validate().is_ok() {
            prefixes.push(prefix.to_owned());
        }
    }
    prefixes.sort();
    Ok(prefixes)
}
