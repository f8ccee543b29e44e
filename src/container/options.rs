//! [`LoadOptions`]: how a load reads a file and where its tensors live.

use crate::format::ReadOptions;

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
/// when they were deployed (`pytorch-saver verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Check the CRC-32 of every member before any tensor is handed out.
    pub verify: bool,
    /// Copy tensors into memory of their own instead of mapping the file.
    pub copy: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verify: true,
            copy: false,
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

    pub(crate) fn read_options(&self) -> ReadOptions {
        ReadOptions { verify: self.verify }
    }
}
