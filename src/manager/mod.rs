//! The checkpoint manager (FORMAT.md section 12): a series of checkpoints
//! in one directory under one prefix, a retention policy that deletes the
//! ones it no longer keeps, and resuming from the newest good one. The
//! directory is a path or an object store URL (`s3://bucket/prefix`,
//! FORMAT.md 12.6), with the same behaviour.
//!
//! Torch-free (the CLI's `ls` builds without libtorch):
//! - `store.rs`: the series' directory, a local one or an object store
//!   prefix: listing names, reading metadata, deleting, the state file;
//! - `retention.rs`: the retention rules, a pure function (12.4);
//! - `state.rs`: `.P.manager.json`, the series id and the pins;
//! - `series.rs`: the series' checkpoints as the directory holds them,
//!   with the rules that keep them, and retention applied to them;
//! - `listing.rs`: a series listed from outside, without its lock, and
//!   the series a directory holds.
//!
//! With the `torch` feature (they save and load a `ModelContainer`):
//! - `checkpoint_manager.rs`: [`CheckpointManager`];
//! - `lock.rs`: what keeps a second manager out (12.2): a `flock(2)`, or
//!   on an object store a lock object with a lease (12.6);
//! - `background.rs`: saves written by a thread of the manager from a
//!   snapshot;
//! - `resume.rs`: loading the newest checkpoint that loads (12.5).

#[cfg(feature = "torch")]
mod background;
#[cfg(feature = "torch")]
mod checkpoint_manager;
mod listing;
#[cfg(feature = "torch")]
mod lock;
#[cfg(feature = "torch")]
mod resume;
pub mod retention;
mod series;
mod state;
mod store;

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
#[cfg(feature = "torch")]
pub use checkpoint_manager::CheckpointManager;
pub use listing::{list_series, scan_series, series_prefixes, SeriesListing};
#[cfg(feature = "torch")]
pub use resume::{Loaded, Restored};
pub use retention::Rule;
pub use store::checkpoint_size;

/// The lease of an object store lock when none is given (FORMAT.md 12.6).
pub const DEFAULT_LOCK_LEASE_SECONDS: u64 = 900;

/// How a manager opens its series, beyond the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagerOptions {
    /// On an object store, the lease written into the lock object
    /// (FORMAT.md 12.6): another manager takes the lock over once this
    /// many seconds passed since the holder last wrote it (at open and
    /// before every save). Longer than the longest time between two
    /// saves. Unused in a local directory (a `flock` dies with its
    /// process). Default [`DEFAULT_LOCK_LEASE_SECONDS`].
    pub lock_lease_seconds: u64,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            lock_lease_seconds: DEFAULT_LOCK_LEASE_SECONDS,
        }
    }
}

impl ManagerOptions {
    /// Fails with [`Error::Usage`] naming the setting that is not valid.
    pub fn validate(&self) -> Result<()> {
        if self.lock_lease_seconds == 0 || i64::try_from(self.lock_lease_seconds).is_err() {
            return Err(Error::Usage(format!(
                "lock_lease_seconds must be at least 1 and fit in a signed 64-bit integer, got {}",
                self.lock_lease_seconds
            )));
        }
        Ok(())
    }
}

/// Which way the policy's metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Lower is better (a loss).
    #[default]
    Min,
    /// Higher is better (an accuracy).
    Max,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Min => "min",
            Mode::Max => "max",
        }
    }
}

/// A manager's prefix and retention policy (FORMAT.md 12.4). Setting none
/// of `keep_last`, `keep_best`, `keep_every_steps` keeps every checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file name stem of the series (`{prefix}_checkpoint_{ts}.zip`).
    pub prefix: String,
    /// Keep the N newest.
    pub keep_last: Option<usize>,
    /// Keep the K best by `metric` (needs `metric`).
    pub keep_best: Option<usize>,
    /// The user-metadata key every save must carry as a finite number.
    pub metric: Option<String>,
    pub mode: Mode,
    /// Keep every checkpoint whose step is a multiple of S.
    pub keep_every_steps: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new("checkpoint")
    }
}

impl Policy {
    /// A policy that keeps everything, with prefix `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Policy {
            prefix: prefix.into(),
            keep_last: None,
            keep_best: None,
            metric: None,
            mode: Mode::Min,
            keep_every_steps: None,
        }
    }

    /// Fails with [`Error::Usage`] naming the first setting that is not
    /// valid.
    pub fn validate(&self) -> Result<()> {
        let usage = |m: String| Err(Error::Usage(m));
        let p = &self.prefix;
        if p.is_empty() || p.starts_with('.') || p.contains(['/', '\0']) {
            return usage(format!(
                "prefix {p:?}: a checkpoint manager's prefix is a non-empty file name stem without '/', not starting with '.'"
            ));
        }
        if self.keep_last == Some(0) {
            return usage("keep_last must be at least 1 (None keeps every checkpoint)".into());
        }
        if self.keep_best == Some(0) {
            return usage("keep_best must be at least 1".into());
        }
        if self.keep_every_steps == Some(0) {
            return usage("keep_every_steps must be at least 1".into());
        }
        if self.keep_best.is_some() && self.metric.is_none() {
            return usage("keep_best needs a metric: name the user-metadata key to rank checkpoints by".into());
        }
        if self.metric.as_deref() == Some("") {
            return usage("metric must be a non-empty user-metadata key".into());
        }
        Ok(())
    }
}

/// A checkpoint of the series, as [`list_series`] and
/// `CheckpointManager::list` report it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    pub step: u64,
    /// The file's `timestamp` (Unix seconds).
    pub timestamp: u64,
    /// The manager block's metrics.
    pub metrics: Map<String, Value>,
    /// The rules that keep it now (FORMAT.md 12.4).
    pub kept_by: Vec<Rule>,
}
