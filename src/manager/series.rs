//! The checkpoints that belong to a series (FORMAT.md 12.1), read from the
//! directory or prefix (metadata only, tensor CRCs not checked), and
//! retention applied to them (12.3 step 2).

use std::path::{Path, PathBuf};

use super::retention::{self, Candidate};
use super::store::SeriesDir;
use super::{CheckpointInfo, Policy, SeriesListing};
use crate::error::{Error, Result};

/// Where a series lives and what identifies it.
#[derive(Debug, Clone)]
pub(super) struct Series {
    pub(super) dir: SeriesDir,
    pub(super) prefix: String,
    pub(super) id: String,
}

/// The directory's view of a series.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// The checkpoints that belong to the series (unordered), `pinned`
    /// not yet set.
    pub(super) members: Vec<(PathBuf, Candidate)>,
    /// Files named as checkpoints of the prefix that cannot be read.
    pub(super) unreadable: Vec<(PathBuf, Error)>,
}

/// Whether `name` is `P_checkpoint_{digits}.zip` or
/// `P_checkpoint_{digits}-{digits}.zip`.
pub(super) fn is_checkpoint_name(name: &str, prefix: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = name
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("_checkpoint_"))
        .and_then(|r| r.strip_suffix(".zip"))
    else {
        return false;
    };
    match rest.split_once('-') {
        Some((ts, n)) => digits(ts) && digits(n),
        None => digits(rest),
    }
}

impl Series {
    pub(super) fn scan(&self) -> Result<Scan> {
        let mut scan = Scan::default();
        for name in self.dir.names()? {
            if !is_checkpoint_name(&name, &self.prefix) {
                continue;
            }
            let path = self.dir.join(&name);
            let meta = match self.dir.read_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    scan.unreadable.push((path, e.into()));
                    continue;
                }
            };
            let Some(record) = meta.manager.as_ref().filter(|r| r.id == self.id) else {
                continue;
            };
            let candidate = Candidate {
                name,
                step: record.step,
                timestamp: meta.timestamp,
                metrics: record.metrics.clone(),
                pinned: false,
            };
            scan.members.push((path, candidate));
        }
        Ok(scan)
    }

    /// The series' checkpoints with `pinned` set, oldest first.
    pub(super) fn candidates(&self, pinned: &[String]) -> Result<Scan> {
        let mut scan = self.scan()?;
        for (_, c) in &mut scan.members {
            c.pinned = pinned.contains(&c.name);
        }
        scan.members.sort_by(|a, b| retention::newer(&a.1, &b.1));
        Ok(scan)
    }

    /// The series' checkpoints, oldest first, with the rules of `policy`
    /// that keep them, and the files named as its checkpoints that cannot
    /// be read. Reads metadata only.
    pub(super) fn list(&self, policy: &Policy, pinned: &[String]) -> Result<SeriesListing> {
        let Scan { members, unreadable } = self.candidates(pinned)?;
        let candidates: Vec<Candidate> = members.iter().map(|(_, c)| c.clone()).collect();
        let rules = retention::decide(&candidates, policy);
        let infos = members
            .into_iter()
            .zip(rules)
            .map(|((path, c), kept_by)| CheckpointInfo {
                path,
                step: c.step,
                timestamp: c.timestamp,
                metrics: c.metrics,
                kept_by,
            })
            .collect();
        Ok(SeriesListing {
            prefix: self.prefix.clone(),
            id: self.id.clone(),
            checkpoints: infos,
            unreadable,
        })
    }

    /// Deletes the checkpoints that `policy` does not keep, then fsyncs
    /// a local directory.
    // Only a manager deletes, and it needs the `torch` feature.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn apply_retention(&self, policy: &Policy, pinned: &[String]) -> Result<()> {
        let members = self.candidates(pinned)?.members;
        let candidates: Vec<Candidate> = members.iter().map(|(_, c)| c.clone()).collect();
        let rules = retention::decide(&candidates, policy);
        let mut removed = false;
        for ((_, c), kept_by) in members.iter().zip(&rules) {
            if kept_by.is_empty() {
                crate::fault::point("manager.unlink");
                removed |= self.dir.delete(&c.name)?;
            }
        }
        if removed {
            self.dir.sync()?;
        }
        Ok(())
    }
}

/// The file name of `path`, as a string.
#[cfg_attr(not(feature = "torch"), allow(dead_code))]
pub(super) fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}

#[cfg(test)]
mod tests {
    use super::is_checkpoint_name;

    #[test]
    fn checkpoint_names() {
        assert!(is_checkpoint_name("run_checkpoint_17.zip", "run"));
        assert!(is_checkpoint_name("run_checkpoint_17-3.zip", "run"));
        for other in [
            "run_checkpoint_.zip",
            "run_checkpoint_17-.zip",
            "run_checkpoint_1a.zip",
            "run_inference_17.zip",
            "runx_checkpoint_17.zip",
            "run_checkpoint_17.zip.tmp",
            ".run_checkpoint_17.zip.1.0.tmp",
        ] {
            assert!(!is_checkpoint_name(other, "run"), "{other}");
        }
    }
}
