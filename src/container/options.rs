//! [`LoadOptions`]: how a load reads a file and where its tensors live.

use std::path::Path;

use crate::format::{Checkpoint, FormatError, MemberName, ReadOptions};
use crate::progress::{Progress, Tracker};

/// How a load reads a file and where the loaded tensors live.
///
/// The default is the fast path: every CRC-32 is checked (over the file's
/// mapping, on several threads), then the model's and the optimizer's
/// tensors point into a private, copy-on-write mapping of the file. No
/// random init, no copy: the load costs what reading the pages costs, and
/// processes that load the same file share its page cache. Training
/// afterwards writes private pages and never changes the file.
///
/// `copy` gives tensors in memory of their own instead, independent of
/// the file: pick it when another process may truncate or rewrite the
/// file while it is loaded (a truncated mapping faults, SIGBUS, on
/// access; a copy does not), or when the file lives on a network file
/// system that may go away. `verify: false` skips the CRC-32 of the tensor
/// data (the structure is still validated) for files that were verified
/// when they were deployed (`pytorch-saver verify`). `progress` hears how
/// far the load is (see [`with_progress`](Self::with_progress)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Check the CRC-32 of every member before any tensor is handed out.
    pub verify: bool,
    /// Copy tensors into memory of their own instead of mapping the file.
    pub copy: bool,
    /// Hears the load's progress, in bytes.
    pub progress: Option<Progress>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verify: true,
            copy: false,
            progress: None,
        }
    }
}

impl LoadOptions {
    /// The defaults: verified, zero-copy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to check the CRC-32 of the tensor data.
    pub fn with_verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Whether to copy tensors out of the file instead of mapping it.
    pub fn with_copy(mut self, copy: bool) -> Self {
        self.copy = copy;
        self
    }

    /// Reports the load's progress to `progress`. The total is the bytes
    /// the load processes: those whose CRC-32 it checks (every member
    /// with `verify`, `metadata.json` alone without), plus, when it
    /// copies (`copy`, and always for a restore), the tensor data of the
    /// model and optimizer members it copies. A load that neither
    /// verifies nor copies reports its start and its end. Calls come from
    /// the loading thread and the worker threads of the CRC check and the
    /// copy, one at a time (see [`crate::progress`]).
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Opens `path` as these options say, reporting to their progress a
    /// load that goes on to copy the tensor data of the `copied` members
    /// (the caller advances the tracker as it copies, and finishes it when
    /// the whole load succeeded).
    pub(crate) fn open(&self, path: &Path, copied: &[MemberName]) -> Result<(Checkpoint, Tracker), FormatError> {
        Checkpoint::open_tracked(path, self.verify, self.progress.as_ref(), |members| {
            members
                .iter()
                .filter(|(m, _)| copied.contains(m))
                .map(|(_, len)| len)
                .sum()
        })
    }

    pub(crate) fn read_options(&self) -> ReadOptions {
        ReadOptions {
            verify: self.verify,
            progress: self.progress.clone(),
        }
    }
}
