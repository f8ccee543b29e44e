//! Publishing a conversion's output without ever leaving half of it under
//! the final name or replacing what is there: a file is written under a
//! temporary name beside it, fsynced and given its name by the format's
//! publish step (`crate::format::publish`: a hard link, or a rename with
//! `RENAME_NOREPLACE` where the filesystem has no hard links); a directory
//! is filled under a temporary name, fsynced and renamed with
//! `RENAME_NOREPLACE` by the same module. Both fail if the name is taken,
//! and remove the temporary on any failure.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::format::publish::{is_name_taken, publish_file, rename_noreplace};
use crate::format::FormatError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The directory `output` goes into (which must exist) and its file name.
pub(crate) fn split_output(output: &Path) -> Result<(PathBuf, String)> {
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.starts_with('.'))
        .ok_or_else(|| Error::Usage(format!("{}: the output needs a file name", output.display())))?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::Usage(format!(
            "{}: the output's directory {} does not exist",
            output.display(),
            parent.display()
        )));
    }
    refuse_existing(output)?;
    Ok((parent, name.to_owned()))
}

/// An error if something (even a dangling link) already has the name.
pub(crate) fn refuse_existing(output: &Path) -> Result<()> {
    if std::fs::symlink_metadata(output).is_ok() {
        return Err(Error::Usage(format!(
            "{} already exists: conversions never replace a file",
            output.display()
        )));
    }
    Ok(())
}

fn temp_name(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

fn io_error(what: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::Format(FormatError::io(what, path, e))
}

/// A file being written under a temporary name; removed when dropped.
pub(crate) struct TempFile {
    pub path: PathBuf,
    pub file: File,
    dir: PathBuf,
    name: String,
}

impl TempFile {
    /// Creates the temporary file for `output`, whose directory must exist
    /// and whose name must be free.
    pub(crate) fn for_output(output: &Path) -> Result<TempFile> {
        let (dir, name) = split_output(output)?;
        Self::in_dir(&dir, &name)
    }

    /// Creates a temporary file in `dir` for the name `name`.
    pub(crate) fn in_dir(dir: &Path, name: &str) -> Result<TempFile> {
        let path = temp_name(dir, name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("cannot create", &path, e))?;
        Ok(TempFile {
            path,
            file,
            dir: dir.to_path_buf(),
            name: name.to_owned(),
        })
    }

    /// Fsyncs the file and gives it its name (failing if it is taken),
    /// then fsyncs the directory.
    pub(crate) fn publish(self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| io_error("cannot fsync", &self.path, e))?;
        let target = self.dir.join(&self.name);
        publish_file(&self.path, &target).map_err(|e| taken_or(e, &target))?;
        sync_dir(&self.dir)
    }

    /// Fsyncs the file and renames it to `name` inside its directory (a
    /// directory being filled, whose names are all new).
    pub(crate) fn rename_into_place(self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| io_error("cannot fsync", &self.path, e))?;
        let target = self.dir.join(&self.name);
        std::fs::rename(&self.path, &target).map_err(|e| io_error("cannot rename", &target, e))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot fsync directory", dir, e))
}

/// A directory being filled under a temporary name; removed with its
/// content when dropped unless published.
pub(crate) struct TempDir {
    pub path: PathBuf,
    parent: PathBuf,
    target: PathBuf,
    published: bool,
}

impl TempDir {
    /// Creates the temporary directory for `output`, whose parent must
    /// exist and whose name must be free.
    pub(crate) fn for_output(output: &Path) -> Result<TempDir> {
        let (parent, name) = split_output(output)?;
        let path = temp_name(&parent, &name);
        std::fs::create_dir(&path).map_err(|e| io_error("cannot create directory", &path, e))?;
        Ok(TempDir {
            path,
            target: parent.join(&name),
            parent,
            published: false,
        })
    }

    /// Fsyncs the directory and renames it to its name, which must still
    /// be free (`RENAME_NOREPLACE`: an empty directory is not replaced
    /// either), then fsyncs the parent.
    pub(crate) fn publish(mut self) -> Result<()> {
        sync_dir(&self.path)?;
        rename_noreplace(&self.path, &self.target).map_err(|e| taken_or(e, &self.target))?;
        self.published = true;
        sync_dir(&self.parent)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A conversion's error for a failed publish: a taken name is the
/// caller's mistake (a usage error), anything else the filesystem's.
fn taken_or(e: FormatError, target: &Path) -> Error {
    if is_name_taken(&e) {
        Error::Usage(format!(
            "{} already exists: conversions never replace a file",
            target.display()
        ))
    } else {
        Error::Format(e)
    }
}
