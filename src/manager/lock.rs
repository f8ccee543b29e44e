//! The manager's lock (FORMAT.md 12.2, 12.6), held for the manager's life.
//!
//! In a directory: an exclusive, non-blocking `flock(2)` on `D/.P.lock`;
//! the kernel releases it when the file is closed or the process dies.
//!
//! On an object store: the object `D/.P.lock`, holding
//! `{"owner": "<hostname>:<pid>:<uuid4 hex>", "timestamp": <unix seconds>,
//! "lease_seconds": <int>}`, created create-only. One whose lease has run
//! out (`timestamp + lease_seconds < now`) is taken over with a write
//! conditional on its ETag. The holder rewrites it, conditional on its own
//! last ETag, before every save (a refused rewrite: the lock was lost),
//! and deletes it when the manager closes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::state::uuid4_bytes;
use super::store::SeriesDir;
use crate::error::{Error, Result};
use crate::format::FormatError;
use crate::storage::{Conditional, Remote};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub(super) enum SeriesLock {
    /// Held while the file is open.
    File(#[allow(dead_code)] File),
    Object(ObjectLock),
}

/// The name of the lock of series `prefix`.
fn lock_name(prefix: &str) -> String {
    format!(".{prefix}.lock")
}

fn locked(dir: &Path, prefix: &str, holder: String) -> Error {
    Error::Locked {
        dir: dir.to_path_buf(),
        prefix: prefix.to_owned(),
        holder,
    }
}

impl SeriesLock {
    /// Takes the lock of `prefix` in `dir`, or fails with [`Error::Locked`]
    /// when another manager holds it. `lease_seconds` is the lease an
    /// object store lock is written with.
    pub(super) fn acquire(dir: &SeriesDir, prefix: &str, lease_seconds: u64) -> Result<Self> {
        match dir.object(&lock_name(prefix)) {
            None => Self::acquire_file(&dir.path(), prefix),
            Some(object) => ObjectLock::acquire(dir.path(), prefix, object, lease_seconds).map(SeriesLock::Object),
        }
    }

    fn acquire_file(dir: &Path, prefix: &str) -> Result<Self> {
        let path = dir.join(lock_name(prefix));
        // Opened close-on-exec (Rust's default): a child process does not
        // inherit the lock.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| FormatError::io("cannot open lock file", &path, e))?;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => locked(dir, prefix, format!("its lock file .{prefix}.lock is locked")),
                _ => FormatError::io("cannot lock", &path, err).into(),
            });
        }
        Ok(SeriesLock::File(file))
    }

    /// Called before every save: renews an object store lock's lease, and
    /// fails with [`Error::Locked`] when another manager took it over. A
    /// `flock` lasts as long as its file: nothing to renew.
    pub(super) fn refresh(&mut self) -> Result<()> {
        match self {
            SeriesLock::File(_) => Ok(()),
            SeriesLock::Object(lock) => lock.refresh(),
        }
    }

    /// Releases the lock now (an object store lock is deleted); later
    /// calls, and the drop, do nothing.
    pub(super) fn release(&mut self) -> Result<()> {
        match self {
            // The flock goes with the file, when the manager is dropped.
            SeriesLock::File(_) => Ok(()),
            SeriesLock::Object(lock) => lock.release(),
        }
    }
}

/// The lock object of a series on an object store.
#[derive(Debug)]
pub(super) struct ObjectLock {
    /// The series' directory (its URL) and prefix, for errors.
    dir: PathBuf,
    prefix: String,
    object: Remote,
    owner: String,
    lease_seconds: u64,
    /// The ETag of the lock as this manager last wrote it; `None` once
    /// released or lost.
    etag: Option<String>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A lock object's owner, timestamp and lease; `None` when it is not one.
fn parse_lock(bytes: &[u8]) -> Option<(String, i64, i64)> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let owner = value.get("owner")?.as_str()?.to_owned();
    let timestamp = value.get("timestamp")?.as_i64()?;
    let lease = value.get("lease_seconds")?.as_i64()?;
    Some((owner, timestamp, lease))
}

impl ObjectLock {
    fn acquire(dir: PathBuf, prefix: &str, object: Remote, lease_seconds: u64) -> Result<Self> {
        let owner = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            uuid4_bytes()?.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let mut lock = ObjectLock {
            dir,
            prefix: prefix.to_owned(),
            object,
            owner,
            lease_seconds,
            etag: None,
        };
        let name = lock_name(prefix);
        if let Conditional::Written(etag) = lock.object.put(lock.body(), true, None)? {
            lock.etag = Some(lock.held(etag)?);
            return Ok(lock);
        }
        let Some((bytes, etag)) = lock.object.get()? else {
            // Released meanwhile: one more try.
            return match lock.object.put(lock.body(), true, None)? {
                Conditional::Written(etag) => {
                    lock.etag = Some(lock.held(etag)?);
                    Ok(lock)
                }
                Conditional::Refused => {
                    Err(lock.locked(format!("its lock object {name} was taken while this manager opened")))
                }
            };
        };
        let Some((holder, timestamp, lease)) = parse_lock(&bytes) else {
            return Err(lock.locked(format!("its lock object {name} holds something that is not a lock")));
        };
        if i128::from(timestamp) + i128::from(lease) >= i128::from(now()) {
            return Err(lock.locked(format!(
                "its lock object {name} is held by {holder}, written at {timestamp} with a lease of {lease} seconds; \
                 or wait for the lease to run out"
            )));
        }
        let etag = etag.ok_or_else(|| lock.no_etag())?;
        match lock.object.put(lock.body(), false, Some(&etag))? {
            Conditional::Written(etag) => {
                lock.etag = Some(lock.held(etag)?);
                Ok(lock)
            }
            Conditional::Refused => Err(lock.locked(format!(
                "the stale lock object {name} of {holder} was taken over by another manager first"
            ))),
        }
    }

    fn body(&self) -> Vec<u8> {
        let body = json!({"owner": self.owner, "timestamp": now(), "lease_seconds": self.lease_seconds});
        serde_json::to_vec(&body).expect("JSON values serialize")
    }

    fn locked(&self, holder: String) -> Error {
        locked(&self.dir, &self.prefix, holder)
    }

    fn no_etag(&self) -> Error {
        FormatError::storage(
            "cannot lock",
            self.object.url(),
            "the store returned no ETag, and a lock object needs conditional writes",
        )
        .into()
    }

    /// The ETag of a write of the lock, which every store this crate
    /// supports returns.
    fn held(&self, etag: Option<String>) -> Result<String> {
        etag.ok_or_else(|| self.no_etag())
    }

    fn refresh(&mut self) -> Result<()> {
        let name = lock_name(&self.prefix);
        let Some(etag) = self.etag.take() else {
            return Err(self.locked(format!("this manager no longer holds its lock object {name}")));
        };
        match self.object.put(self.body(), false, Some(&etag)) {
            Ok(Conditional::Written(etag)) => {
                self.etag = Some(self.held(etag)?);
                Ok(())
            }
            Ok(Conditional::Refused) => {
                let by = match self.object.get() {
                    Ok(Some((bytes, _))) => parse_lock(&bytes).map(|(owner, ..)| format!(" by {owner}")),
                    _ => None,
                };
                Err(self.locked(format!(
                    "this manager's lock object {name} was taken over{} after its lease of {} seconds ran out; \
                     nothing was saved",
                    by.unwrap_or_default(),
                    self.lease_seconds
                )))
            }
            Err(e) => {
                // Not refused: the lock is still ours as far as we know.
                self.etag = Some(etag);
                Err(e.into())
            }
        }
    }

    fn release(&mut self) -> Result<()> {
        match self.etag.take() {
            Some(_) => Ok(self.object.delete()?),
            None => Ok(()),
        }
    }
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        let _ = self.release();
    }
}
