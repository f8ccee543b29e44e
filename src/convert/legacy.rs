//! Files of the original package (0.1.x): read without running any of
//! their pickle.

use std::path::Path;

use super::{foreign, Contents};
use crate::error::Result;

/// Whether `path` is a file of the original package (by its members).
pub(crate) fn is_legacy_zip(path: &Path) -> bool {
    let _ = path;
    false
}

/// Reads a file of the original package.
pub(crate) fn read_legacy_file(path: &Path) -> Result<Contents> {
    Err(foreign(path, "reading files of the original package is being built"))
}
