//! [`CheckpointManager`]: a series held under its lock, saved to (in the
//! foreground or the background) with retention applied after each save.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::background::Background;
use super::lock::SeriesLock;
use super::series::{self, Series};
use super::state::State;
use super::store::SeriesDir;
use super::{CheckpointInfo, ManagerOptions, Mode, Policy};
use crate::container::{ModelContainer, UserMetadata};
use crate::error::{Error, Result};
use crate::format::ManagerRecord;

/// A series of checkpoints in one directory under one prefix (FORMAT.md
/// section 12), or under an object store prefix (`s3://bucket/prefix`,
/// FORMAT.md 12.6) with the same behaviour. Holds the series' lock until
/// it is closed or dropped.
///
/// ```no_run
/// use pytorch_saver::manager::{CheckpointManager, Policy};
/// use pytorch_saver::{LoadOptions, ModelContainer, UserMetadata};
/// # let container = ModelContainer::new();
/// let policy = Policy { keep_last: Some(3), ..Policy::new("run") };
/// let mut manager = CheckpointManager::open("./checkpoints", policy)?;
/// if let Some(resumed) = manager.load_latest(&LoadOptions::default())? {
///     // resumed.container, resumed.metadata
/// }
/// for step in 0..1000u64 {
///     // ... train ...
///     if step % 100 == 0 {
///         manager.save_async(&container, step, &UserMetadata::new().with("loss", 0.5)?)?;
///     }
/// }
/// manager.wait()?;
/// # Ok::<(), pytorch_saver::Error>(())
/// ```
pub struct CheckpointManager {
    /// The directory as given (a path, or the URL).
    directory: PathBuf,
    pub(super) series: Series,
    policy: Policy,
    pub(super) pinned: Vec<String>,
    background: Background,
    // Dropped last: released only once the background save has finished.
    lock: SeriesLock,
}

impl std::fmt::Debug for CheckpointManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointManager")
            .field("dir", &self.directory)
            .field("id", &self.series.id)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl CheckpointManager {
    /// Opens the series `policy.prefix` in `dir`, a path or an object
    /// store URL (FORMAT.md 12.2, 12.6): creates a local directory if
    /// needed, takes the lock ([`Error::Locked`] if another manager holds
    /// it), reads or creates the state file. Default options.
    pub fn open(dir: impl AsRef<Path>, policy: Policy) -> Result<Self> {
        Self::open_with(dir, policy, ManagerOptions::default())
    }

    /// [`open`](Self::open) with `options` (the lease of an object store
    /// lock).
    pub fn open_with(dir: impl AsRef<Path>, policy: Policy, options: ManagerOptions) -> Result<Self> {
        policy.validate()?;
        options.validate()?;
        let store = SeriesDir::parse(dir.as_ref())?;
        store.create()?;
        let lock = SeriesLock::acquire(&store, &policy.prefix, options.lock_lease_seconds)?;
        let state = State::read_or_create(&store, &policy.prefix)?;
        Ok(CheckpointManager {
            directory: store.path(),
            series: Series {
                dir: store,
                prefix: policy.prefix.clone(),
                id: state.id,
            },
            policy,
            pinned: state.pinned,
            background: Background::default(),
            lock,
        })
    }

    /// The directory: the path, or the URL (`scheme://bucket/prefix`).
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The series id (`.P.manager.json`'s `id`).
    pub fn id(&self) -> &str {
        &self.series.id
    }

    /// The manager block of a save at `step` with `metadata`: the finite
    /// numbers of the user metadata as metrics, the policy's metric
    /// required among them.
    fn record(&self, step: u64, metadata: &UserMetadata) -> Result<ManagerRecord> {
        let metrics: Map<String, Value> = metadata
            .as_map()
            .iter()
            .filter(|(_, v)| v.as_f64().is_some_and(f64::is_finite))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(metric) = &self.policy.metric {
            if !metrics.contains_key(metric) {
                let reason = match metadata.as_map().get(metric) {
                    Some(v) => format!("the policy's metric must be a finite number, got {v}"),
                    None => "the policy's metric is missing from the save's metadata".into(),
                };
                return Err(Error::InvalidMetadata {
                    key: metric.clone(),
                    reason,
                });
            }
        }
        Ok(ManagerRecord {
            id: self.series.id.clone(),
            step,
            metrics,
        })
    }

    /// Saves `container` as the series' checkpoint of `step` (FORMAT.md
    /// 12.3), then deletes what the policy no longer keeps. Waits for a
    /// background save first, and returns its error if nobody collected it.
    pub fn save(&mut self, container: &ModelContainer, step: u64, metadata: &UserMetadata) -> Result<PathBuf> {
        self.background.take_uncollected_error()?;
        let record = self.record(step, metadata)?;
        self.lock.refresh()?;
        let path = container.save_managed(&self.directory, &self.series.prefix, metadata, record)?;
        self.series.apply_retention(&self.policy, &self.pinned)?;
        Ok(path)
    }

    /// Saves in the background: waits for the save in flight (returning
    /// its error if nobody collected it), copies every tensor and the
    /// metadata into the manager's snapshot buffer (reused from save to
    /// save), and returns; a thread of the manager writes the file and
    /// applies retention. [`wait`](Self::wait) collects the outcome.
    pub fn save_async(&mut self, container: &ModelContainer, step: u64, metadata: &UserMetadata) -> Result<()> {
        self.background.take_uncollected_error()?;
        let record = self.record(step, metadata)?;
        self.lock.refresh()?;
        let buffer = self.background.take_buffer();
        let snapshot = container.snapshot(&self.series.prefix, metadata, Some(record), buffer)?;
        self.background
            .start(snapshot, self.series.clone(), self.policy.clone(), self.pinned.clone())
    }

    /// Waits for the background save in flight: its path, its error, or
    /// `None` when there was nothing to wait for.
    pub fn wait(&mut self) -> Result<Option<PathBuf>> {
        self.background.wait()
    }

    /// The series' checkpoints, oldest first, with the rules that keep
    /// them. Reads metadata only; files that cannot be read are left out.
    pub fn list(&self) -> Result<Vec<CheckpointInfo>> {
        Ok(self.series.list(&self.policy, &self.pinned)?.checkpoints)
    }

    /// The newest checkpoint (by step, timestamp, file name).
    pub fn latest(&self) -> Result<Option<CheckpointInfo>> {
        Ok(self.list()?.pop())
    }

    /// The checkpoint with the best value of the policy's metric (ties go
    /// to the newer); `None` without a metric or a checkpoint that has it.
    pub fn best(&self) -> Result<Option<CheckpointInfo>> {
        let Some(metric) = &self.policy.metric else {
            return Ok(None);
        };
        let value = |i: &CheckpointInfo| i.metrics.get(metric).and_then(Value::as_f64).filter(|v| v.is_finite());
        let mut best: Option<(f64, CheckpointInfo)> = None;
        // Oldest first: a later one replaces an equal value.
        for info in self.list()? {
            let Some(v) = value(&info) else { continue };
            let better = match (&best, self.policy.mode) {
                (None, _) => true,
                (Some((b, _)), Mode::Min) => v <= *b,
                (Some((b, _)), Mode::Max) => v >= *b,
            };
            if better {
                best = Some((v, info));
            }
        }
        Ok(best.map(|(_, info)| info))
    }

    /// Pins a checkpoint of the series (by path or file name): retention
    /// keeps it until it is unpinned. The state file is replaced
    /// atomically.
    pub fn pin(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let name = self.member_name(path.as_ref())?;
        if !self.pinned.contains(&name) {
            let mut pinned = self.pinned.clone();
            pinned.push(name);
            self.write_pins(pinned)?;
        }
        Ok(())
    }

    /// Unpins a checkpoint (a name that is not pinned is left as it is).
    /// Retention applies to it again at the next save.
    pub fn unpin(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let name = series::file_name(path.as_ref()).unwrap_or_default().to_owned();
        if self.pinned.contains(&name) {
            let pinned = self.pinned.iter().filter(|p| **p != name).cloned().collect();
            self.write_pins(pinned)?;
        }
        Ok(())
    }

    fn write_pins(&mut self, pinned: Vec<String>) -> Result<()> {
        // A background save applies retention with the pins it started
        // with: let it finish first.
        self.background.settle();
        let state = State {
            id: self.series.id.clone(),
            pinned,
        };
        state.write(&self.series.dir, &self.series.prefix)?;
        self.pinned = state.pinned;
        Ok(())
    }

    /// The file name of a checkpoint of the series, or a usage error.
    fn member_name(&self, path: &Path) -> Result<String> {
        let name = series::file_name(path).unwrap_or_default();
        let members = self.series.candidates(&self.pinned)?.members;
        match members.iter().any(|(_, c)| c.name == name) {
            true => Ok(name.to_owned()),
            false => Err(Error::Usage(format!(
                "{} is not a checkpoint of the series {:?} in {}",
                path.display(),
                self.series.prefix,
                self.directory.display()
            ))),
        }
    }

    /// Waits for the background save, releases the lock (deletes an object
    /// store's lock object), and returns the background save's error if
    /// nobody collected it, else the release's.
    pub fn close(mut self) -> Result<()> {
        let saved = self.background.take_uncollected_error();
        let released = self.lock.release();
        saved.and(released)
    }
}

impl Drop for CheckpointManager {
    fn drop(&mut self) {
        self.background.settle();
    }
}
