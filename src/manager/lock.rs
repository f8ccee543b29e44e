//! The manager's lock (FORMAT.md 12.2): an exclusive, non-blocking
//! `flock(2)` on `D/.P.lock`, held for the manager's life. The kernel
//! releases it when the file is closed or the process dies.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::FormatError;

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `prefix` in `dir`, or fails with [`Error::Locked`]
    /// when another open file description holds it.
    pub(super) fn acquire(dir: &Path, prefix: &str) -> Result<Self> {
        let path = dir.join(format!(".{prefix}.lock"));
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
                Some(libc::EWOULDBLOCK) => Error::Locked {
                    dir: dir.to_path_buf(),
                    prefix: prefix.to_owned(),
                },
                _ => FormatError::io("cannot lock", &path, err).into(),
            });
        }
        Ok(DirLock { _file: file })
    }
}
