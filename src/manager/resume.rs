//! Resuming (FORMAT.md 12.5): the series' checkpoints are tried newest
//! first, each fully verified; one that fails is skipped and reported,
//! and the next is tried.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{series, CheckpointManager};
use crate::container::{LoadOptions, ModelContainer};
use crate::error::{Error, Result};

/// What [`CheckpointManager::load_latest`] loaded.
pub struct Loaded {
    /// A container holding the objects the file names.
    pub container: ModelContainer,
    /// The file's flat metadata (as [`ModelContainer::load`] returns it).
    pub metadata: Map<String, Value>,
    pub path: PathBuf,
    /// The files tried before it, or found unreadable, with their errors.
    pub skipped: Vec<(PathBuf, Error)>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("path", &self.path)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

/// What [`CheckpointManager::restore_latest`] restored.
#[derive(Debug)]
pub struct Restored {
    pub metadata: Map<String, Value>,
    pub path: PathBuf,
    pub skipped: Vec<(PathBuf, Error)>,
}

impl CheckpointManager {
    /// Loads the newest checkpoint that loads into a new container over the
    /// built-in registry. `None` when the series has no checkpoint.
    pub fn load_latest(&self, options: &LoadOptions) -> Result<Option<Loaded>> {
        self.load_latest_into(ModelContainer::new(), options)
    }

    /// [`load_latest`](Self::load_latest) into `container` (its registry,
    /// its tracked objects) as [`ModelContainer::load_with`] loads: the
    /// container's objects are replaced by those the file names.
    pub fn load_latest_into(&self, mut container: ModelContainer, options: &LoadOptions) -> Result<Option<Loaded>> {
        let found = self.resume(|path| container.load_with(path, &options.clone().with_verify(true)))?;
        Ok(found.map(|(path, metadata, skipped)| Loaded {
            container,
            metadata,
            path,
            skipped,
        }))
    }

    /// Restores the newest checkpoint that restores into the objects
    /// `container` holds ([`ModelContainer::restore_with`], tracked objects
    /// included); a checkpoint that fails leaves the container as it was.
    pub fn restore_latest(&self, container: &mut ModelContainer, options: &LoadOptions) -> Result<Option<Restored>> {
        let found = self.resume(|path| container.restore_with(path, &options.clone().with_verify(true)))?;
        Ok(found.map(|(path, metadata, skipped)| Restored {
            metadata,
            path,
            skipped,
        }))
    }

    /// Tries `attempt` on the series' checkpoints, newest first. `None`
    /// when there is none; the newest one's error when every one failed.
    #[allow(clippy::type_complexity)]
    fn resume<T>(
        &self,
        mut attempt: impl FnMut(&Path) -> Result<T>,
    ) -> Result<Option<(PathBuf, T, Vec<(PathBuf, Error)>)>> {
        let series::Scan { members, unreadable } = self.series.candidates(&self.pinned)?;
        let mut skipped = unreadable;
        let first_tried = skipped.len();
        for (path, _) in members.into_iter().rev() {
            match attempt(&path) {
                Ok(value) => return Ok(Some((path, value, skipped))),
                Err(e) => skipped.push((path, e)),
            }
        }
        // Every file failed: the newest one's error (or, when none could
        // even be listed, the first unreadable one's).
        match skipped.len() {
            0 => Ok(None),
            n => Err(skipped.swap_remove(if first_tried < n { first_tried } else { 0 }).1),
        }
    }
}
