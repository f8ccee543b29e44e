//! Giving a finished temporary file its final name without ever replacing
//! a file that has that name: the one owner of that step, for the writer
//! and for the conversions.
//!
//! `link(2)` comes first: it fails atomically with `EEXIST` when the name
//! is taken, and the temporary name stays until its owner removes it.
//! Filesystems without hard links (vfat, exfat, many FUSE mounts such as
//! gcsfuse) refuse it with `EPERM`, `EOPNOTSUPP` or `ENOSYS`; there the
//! file is moved with `renameat2(RENAME_NOREPLACE)`, which fails the same
//! way on a taken name and leaves no temporary name behind. Where that is
//! refused too (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`: a FUSE server without
//! rename2) the publish fails with an error that names the filesystem and
//! suggests an object-store URL. A plain `rename(2)`, which replaces the
//! target, is never used.

use std::ffi::CString;
use std::io::{Error as IoError, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::FormatError;

/// A writer gives up after this many taken names (`{stem}-9999.zip`).
const MAX_NAMES: u32 = 10_000;

/// Publishes `tmp` (in `dir`) as `{stem}.zip`, or `{stem}-{n}.zip` with
/// the smallest n >= 1 that no file has, and returns the name it got.
pub(crate) fn publish_numbered(tmp: &Path, dir: &Path, stem: &str) -> Result<PathBuf, FormatError> {
    for n in 0..MAX_NAMES {
        let name = if n == 0 {
            format!("{stem}.zip")
        } else {
            format!("{stem}-{n}.zip")
        };
        let target = dir.join(name);
        match publish_file(tmp, &target) {
            Ok(()) => return Ok(target),
            Err(e) if is_name_taken(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(FormatError::InvalidInput(format!(
        "{MAX_NAMES} files named {stem}-N.zip already exist in {}",
        dir.display()
    )))
}

/// Gives the finished file `tmp` the name `target` in the same directory,
/// never replacing anything that has it. On success `target` names the
/// file, and `tmp` still does after a link or no longer does after a
/// rename (its owner removes it either way, ignoring `ENOENT`). A taken
/// name is an `Io` error whose source is of kind `AlreadyExists`
/// ([`is_name_taken`]), with `tmp` untouched. The caller fsyncs the
/// directory afterwards.
pub(crate) fn publish_file(tmp: &Path, target: &Path) -> Result<(), FormatError> {
    let publish_error = |e| FormatError::io("cannot publish", target, e);
    let link_err = match link(tmp, target) {
        Ok(()) => return Ok(()),
        Err(e) if !means_no_hard_links(&e) => return Err(publish_error(e)),
        Err(e) => e,
    };
    match rename_noreplace_raw(tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if means_unsupported(&e) => Err(publish_error(unsupported(target, Some(&link_err), &e))),
        Err(e) => Err(publish_error(e)),
    }
}

/// Renames `from` to `to` (a directory, or a file whose name only this
/// process uses) unless something has the name `to`, with
/// `renameat2(RENAME_NOREPLACE)`. A taken name is an `Io` error of kind
/// `AlreadyExists` ([`is_name_taken`]); a filesystem without the flag is
/// an `Io` error that names it.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<(), FormatError> {
    rename_noreplace_raw(from, to).map_err(|e| {
        let e = if means_unsupported(&e) {
            unsupported(to, None, &e)
        } else {
            e
        };
        FormatError::io("cannot publish", to, e)
    })
}

/// Whether `e` is a publish that failed only because the name is taken,
/// so that the next name may be tried.
pub(crate) fn is_name_taken(e: &FormatError) -> bool {
    matches!(e, FormatError::Io { source, .. } if source.kind() == ErrorKind::AlreadyExists)
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| IoError::new(ErrorKind::InvalidInput, "the path contains a NUL byte"))
}

fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(errno) = crate::fault::link_errno() {
        return Err(IoError::from_raw_os_error(errno));
    }
    std::fs::hard_link(from, to)
}

fn rename_noreplace_raw(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(errno) = crate::fault::renameat2_errno() {
        return Err(IoError::from_raw_os_error(errno));
    }
    let (cfrom, cto) = (c_path(from)?, c_path(to)?);
    // SAFETY: two NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(IoError::last_os_error())
    }
}

/// The errors of `link(2)` that mean "this filesystem has no hard links"
/// (vfat and some FUSE servers: `EPERM`), not a problem of this one call.
/// `EMLINK` (too many links to one file) is not one of them.
fn means_no_hard_links(e: &IoError) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS))
}

/// The errors of `renameat2(2)` that mean the flag (or the call) is not
/// supported here.
fn means_unsupported(e: &IoError) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP))
}

/// The error for a filesystem that can publish neither way: it names the
/// filesystem of `target`'s directory and says what to do instead.
fn unsupported(target: &Path, link_err: Option<&IoError>, rename_err: &IoError) -> IoError {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fs = filesystem_name(dir);
    let refused = match link_err {
        Some(l) => format!("neither hard links (link: {l}) nor renaming without replacement (renameat2: {rename_err})"),
        None => format!("no renaming without replacement (renameat2: {rename_err})"),
    };
    IoError::new(
        ErrorKind::Unsupported,
        format!(
            "the {fs} filesystem of {} supports {refused}, so a file cannot be published there without \
             risking replacing another; save to an object-store URL (s3://bucket/prefix, gs://, az://) \
             or to a local filesystem such as ext4 or xfs instead",
            dir.display()
        ),
    )
}

/// The name of the filesystem `dir` is on, from `statfs(2)`'s `f_type`:
/// a name for the magic numbers of linux/magic.h that matter here, else
/// the magic in hex; "unknown" when `statfs` fails. (virtiofs and
/// gcsfuse report FUSE's magic.)
pub(crate) fn filesystem_name(dir: &Path) -> String {
    let Ok(c) = c_path(dir) else {
        return "unknown".to_owned();
    };
    // SAFETY: a plain C struct, for which all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs fills `st`; `c` is NUL-terminated and lives across the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".to_owned();
    }
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or i32 depending on the target
    let magic = st.f_type as u32;
    filesystem_magic_name(magic).map_or_else(|| format!("{magic:#x}"), str::to_owned)
}

/// The names of the filesystems' magic numbers (linux/magic.h and the
/// filesystems' own headers).
fn filesystem_magic_name(magic: u32) -> Option<&'static str> {
    Some(match magic {
        0x4d44 => "vfat/msdos",
        0x2011_bab0 => "exfat",
        0x6573_5546 => "fuse (or fuseblk)",
        0x5346_544e => "ntfs",
        0x7366_746e => "ntfs3",
        0x0102_1997 => "9p",
        0x6969 => "nfs",
        0xff53_4d42 => "cifs",
        0xfe53_4d42 => "smb2",
        0x517b => "smb",
        0x794c_7630 => "overlay",
        0x0102_1994 => "tmpfs",
        0xef53 => "ext2/ext3/ext4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x2fc1_2fc1 => "zfs",
        0x00c3_6400 => "ceph",
        0x482b => "hfsplus",
        0x7371_7368 => "squashfs",
        0xe0f5_e1e2 => "erofs",
        _ => return None,
    })
}
