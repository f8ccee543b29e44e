//! Crash points for tests: with the `fault-injection` feature, the
//! environment variable `PTS_KILL_AT=NAME:N` makes the N-th time this
//! process reaches the point NAME kill the process with SIGKILL, so a test
//! can crash a save at an exact step (the temporary file's data, its
//! fsync, the link that publishes it, the directory fsync, a deletion of
//! retention). Without the feature every point is an empty inline
//! function.
//!
//! The points: `write.data` (before each tensor's bytes are written),
//! `write.fsync` (before the temporary file's fsync), `write.link` (before
//! it is linked under its final name), `write.dir_fsync` (before the
//! directory's fsync after the link), `manager.unlink` (before each file
//! that retention deletes), `upload.part` (before each part of an object
//! store upload is sent), `upload.complete` (before the upload is
//! completed under its final name).
//!
//! `PTS_DELAY_AT=NAME:MILLIS` makes every pass through the point NAME
//! sleep that long first: two writers can be held inside the same window.
//!
//! Failing system calls, for filesystems a test machine may not have: with
//! the feature, `PTS_LINK_ERRNO=NAME` makes every `link(2)` that publishes
//! a file fail with that errno instead of running (`EPERM` is what vfat
//! and many FUSE mounts answer), and `PTS_RENAMEAT2_ERRNO=NAME` does the
//! same for `renameat2(RENAME_NOREPLACE)` (`EINVAL` is what a FUSE server
//! without rename2 answers); see `src/format/publish.rs`. NAME is one of
//! `EPERM`, `EOPNOTSUPP`, `ENOSYS`, `EINVAL`, `EMLINK`, `EEXIST`, `EIO`,
//! or a number. Both are read at each call, so a process may change them
//! between saves. Without the feature both functions return `None`.

#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static COUNTS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    if let Some(millis) = std::env::var("PTS_DELAY_AT")
        .ok()
        .and_then(|spec| spec.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(millis));
    }
    let Ok(spec) = std::env::var("PTS_KILL_AT") else {
        return;
    };
    let Some((target, nth)) = spec.rsplit_once(':') else {
        return;
    };
    if target != name {
        return;
    }
    let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let count = counts
        .get_or_insert_with(HashMap::new)
        .entry(name.to_owned())
        .or_insert(0);
    *count += 1;
    if nth.parse() == Ok(*count) {
        // SAFETY: kill(2) on this process; nothing after it runs.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}

/// The errno `PTS_LINK_ERRNO` asks `link(2)` to fail with (module docs).
#[cfg(feature = "fault-injection")]
pub(crate) fn link_errno() -> Option<i32> {
    errno_from_env("PTS_LINK_ERRNO")
}

/// The errno `PTS_RENAMEAT2_ERRNO` asks `renameat2(2)` to fail with.
#[cfg(feature = "fault-injection")]
pub(crate) fn renameat2_errno() -> Option<i32> {
    errno_from_env("PTS_RENAMEAT2_ERRNO")
}

#[cfg(feature = "fault-injection")]
fn errno_from_env(var: &str) -> Option<i32> {
    let value = std::env::var(var).ok()?;
    Some(match value.as_str() {
        "EPERM" => libc::EPERM,
        "EOPNOTSUPP" => libc::EOPNOTSUPP,
        "ENOSYS" => libc::ENOSYS,
        "EINVAL" => libc::EINVAL,
        "EMLINK" => libc::EMLINK,
        "EEXIST" => libc::EEXIST,
        "EIO" => libc::EIO,
        other => other.parse().ok()?,
    })
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn link_errno() -> Option<i32> {
    None
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn renameat2_errno() -> Option<i32> {
    None
}
