//! Progress callbacks from C: a function pointer and its user data,
//! wrapped as the core's [`Progress`].

use std::ffi::c_void;

use crate::progress::Progress;

/// A progress callback: `done` of `total` bytes, and the `user_data`
/// given with it. The first call is `(0, total)`; `done` grows strictly
/// from call to call; the last call is `(total, total)`, made only when
/// the operation succeeded. Called on the thread that runs the operation
/// or on its worker threads, one call at a time, never after the
/// operation returned. It must return normally (no C++ exception, no
/// longjmp) and must not call back into the operation that reports to it.
pub type pts_progress_fn = Option<unsafe extern "C" fn(done: u64, total: u64, user_data: *mut c_void)>;

/// The caller's user data: handed back to its callback, never read here.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);

// SAFETY: the pointer is only passed back to the caller's function, which
// the header documents may be called from worker threads.
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

/// The callback as a [`Progress`]; `None` for a NULL function.
pub(crate) fn progress_from_c(callback: pts_progress_fn, user_data: *mut c_void) -> Option<Progress> {
    let callback = callback?;
    let data = UserData(user_data);
    Some(Progress::new(move |done, total| {
        let data = data;
        // SAFETY: the caller's function with its own user data (header
        // contract).
        unsafe { callback(done, total, data.0) }
    }))
}
