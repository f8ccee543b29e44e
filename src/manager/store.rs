//! Where a series lives (FORMAT.md 12.1, 12.6): a local directory, or a
//! prefix in an object store (`s3://bucket/prefix`). The manager, the
//! series and the listing do the same through either; only the operations
//! here differ: how names are listed and metadata read, how a checkpoint
//! is deleted, and how the state file is created and replaced. The lock
//! (`lock.rs`) differs too, and lives with the manager.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::format::{Checkpoint, FormatError, LazyCheckpoint, Metadata, ReadOptions};
use crate::storage::{Conditional, Location, Remote};

/// A series' directory: a local one, or a prefix in an object store.
#[derive(Debug, Clone)]
pub(super) enum SeriesDir {
    Local(PathBuf),
    Remote(Remote),
}

impl SeriesDir {
    /// A path, or a URL (`file://` URLs are local paths).
    pub(super) fn parse(dir: &Path) -> Result<SeriesDir> {
        Ok(match Location::parse(dir)? {
            Location::Local(p) => SeriesDir::Local(p),
            Location::Remote(r) => SeriesDir::Remote(r),
        })
    }

    /// The directory as checkpoints are written into it and reported: the
    /// path, or the URL (`scheme://bucket/prefix`).
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn path(&self) -> PathBuf {
        match self {
            SeriesDir::Local(p) => p.clone(),
            SeriesDir::Remote(r) => PathBuf::from(r.url()),
        }
    }

    /// The file (or object) `name` in the directory.
    pub(super) fn join(&self, name: &str) -> PathBuf {
        match self {
            SeriesDir::Local(p) => p.join(name),
            SeriesDir::Remote(r) => PathBuf::from(r.join(name).url()),
        }
    }

    /// The object `name` under the prefix; `None` for a local directory.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn object(&self, name: &str) -> Option<Remote> {
        match self {
            SeriesDir::Local(_) => None,
            SeriesDir::Remote(r) => Some(r.join(name)),
        }
    }

    /// Creates a local directory with its parents. A prefix needs nothing:
    /// it exists as soon as an object is under it.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn create(&self) -> Result<()> {
        match self {
            SeriesDir::Local(p) => {
                std::fs::create_dir_all(p).map_err(|e| FormatError::io("cannot create directory", p, e).into())
            }
            SeriesDir::Remote(_) => Ok(()),
        }
    }

    /// The names of the files (objects) directly in the directory. An
    /// object store lists final objects only: an upload in progress has
    /// no name yet, and no temporary key matches a checkpoint name.
    pub(super) fn names(&self) -> Result<Vec<String>> {
        match self {
            SeriesDir::Local(dir) => {
                let entries = std::fs::read_dir(dir).map_err(|e| FormatError::io("cannot list", dir, e))?;
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| FormatError::io("cannot list", dir, e))?;
                    if let Some(name) = entry.file_name().to_str() {
                        names.push(name.to_owned());
                    }
                }
                Ok(names)
            }
            SeriesDir::Remote(r) => Ok(r.list()?.into_iter().map(|o| o.name).collect()),
        }
    }

    /// The metadata of checkpoint `path` of this directory, its structure
    /// checked, tensor CRCs not: a mapping of a local file, a few ranged
    /// reads of an object.
    pub(super) fn read_metadata(&self, path: &Path) -> std::result::Result<Metadata, FormatError> {
        match self {
            SeriesDir::Local(_) => {
                let options = ReadOptions {
                    verify: false,
                    ..ReadOptions::default()
                };
                Ok(Checkpoint::open_with(path, options)?.metadata().clone())
            }
            SeriesDir::Remote(_) => Ok(LazyCheckpoint::open(path)?.metadata().clone()),
        }
    }

    /// Deletes the file `name`; false when there was none. On an object
    /// store, true whenever the delete succeeded.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn delete(&self, name: &str) -> Result<bool> {
        match self {
            SeriesDir::Local(dir) => {
                let path = dir.join(name);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(FormatError::io("cannot delete", &path, e).into()),
                }
            }
            SeriesDir::Remote(r) => {
                r.join(name).delete()?;
                Ok(true)
            }
        }
    }

    /// Makes the deletions so far durable: fsyncs a local directory. An
    /// object store's delete is durable when it returns.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn sync(&self) -> Result<()> {
        match self {
            SeriesDir::Local(dir) => sync_dir(dir),
            SeriesDir::Remote(_) => Ok(()),
        }
    }

    /// The bytes of file `name`, or `None` when there is none.
    pub(super) fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            SeriesDir::Local(dir) => {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(FormatError::io("cannot read", &path, e).into()),
                }
            }
            SeriesDir::Remote(r) => Ok(r.join(name).get()?.map(|(bytes, _)| bytes.to_vec())),
        }
    }

    /// Writes file `name` when none exists; false when one does. Locally
    /// the lock holder alone creates it, so this is [`replace`](Self::replace);
    /// on an object store a create-only PUT.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn create_file(&self, name: &str, bytes: Vec<u8>) -> Result<bool> {
        match self {
            SeriesDir::Local(_) => self.replace(name, bytes).map(|()| true),
            SeriesDir::Remote(r) => Ok(matches!(r.join(name).put(bytes, true, None)?, Conditional::Written(_))),
        }
    }

    /// Replaces file `name`: locally atomically (a temporary file, fsynced,
    /// renamed over it, the directory fsynced); on an object store one PUT.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(super) fn replace(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            SeriesDir::Local(dir) => replace_local(dir, name, &bytes),
            SeriesDir::Remote(r) => match r.join(name).put(bytes, false, None)? {
                Conditional::Written(_) => Ok(()),
                // An unconditional PUT has no condition to fail.
                Conditional::Refused => Err(FormatError::storage(
                    "cannot write",
                    r.join(name).url(),
                    "the store refused an unconditional write",
                )
                .into()),
            },
        }
    }
}

#[cfg_attr(not(feature = "torch"), allow(dead_code))]
fn replace_local(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| FormatError::io("cannot create", &tmp, e))?;
        f.write_all(bytes)
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

/// fsyncs a directory, so that names created or removed in it last.
#[cfg_attr(not(feature = "torch"), allow(dead_code))]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FormatError::io("cannot fsync directory", dir, e).into())
}

/// The size in bytes of a checkpoint at a path or URL (one `stat`, or one
/// HEAD request): for listings that show sizes.
pub fn checkpoint_size(path: impl AsRef<Path>) -> Result<u64> {
    let path = path.as_ref();
    match Location::parse(path)? {
        Location::Local(p) => Ok(std::fs::metadata(&p)
            .map_err(|e| FormatError::io("cannot stat", &p, e))?
            .len()),
        Location::Remote(r) => Ok(crate::storage::RemoteObject::open(&r)?.size()),
    }
}
