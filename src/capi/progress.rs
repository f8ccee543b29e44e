//! Progress callbacks from C: a function pointer and its user data,
//! wrapped as the core's [`Progress`], which owns the user data and runs
//! its finalizer when the last operation that may report to it is done.

use std::ffi::c_void;

use super::registry::{pts_finalizer_t, Owned};
use crate::progress::Progress;

/// A progress callback: `done` of `total` bytes, and the `user_data`
/// given with it. The first call is `(0, total)`; `done` grows strictly
/// from call to call; the last call is `(total, total)`, made only when
/// the operation succeeded. Called on the thread that runs the operation
/// or on its worker threads, one call at a time, never after the
/// operation returned. It must return normally (no C++ exception, no
/// longjmp) and must not call back into the operation that reports to it.
pub type pts_progress_fn = Option<unsafe extern "C" fn(done: u64, total: u64, user_data: *mut c_void)>;

/// The callback as a [`Progress`] that owns `user_data` (its finalizer
/// runs when the last copy of the callback is dropped); `None` for a NULL
/// function, whose user data is finalized now.
pub(crate) fn progress_from_c(
    callback: pts_progress_fn,
    user_data: *mut c_void,
    finalizer: pts_finalizer_t,
) -> Option<Progress> {
    let owned = Owned {
        data: user_data,
        finalizer,
    };
    let callback = callback?;
    Some(Progress::new(move |done, total| {
        // The whole value, not its pointer field alone: it is Send + Sync
        // and finalizes the user data when the callback is dropped.
        let owned = &owned;
        // SAFETY: the caller's function with its own user data (header
        // contract: callable from the library's worker threads).
        unsafe { callback(done, total, owned.data) }
    }))
}
