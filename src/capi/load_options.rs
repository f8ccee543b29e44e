//! Load options from C: one opaque handle, so that later options fit
//! without another change of the functions that take it.

use std::ffi::c_void;

use super::progress::progress_from_c;
use super::*;
use crate::container::LoadOptions;

/// How `pts_container_load_ex`, `pts_container_restore_ex`,
/// `pts_model_load` and `pts_checkpoint_open_ex` read a file. New options
/// start at the defaults: verified (every CRC-32 checked), zero-copy
/// (tensors point into a private, copy-on-write mapping of the file).
/// Owned by the caller; free it with `pts_load_options_free`. A `const
/// pts_load_options_t *` may be shared by threads.
pub struct pts_load_options_t {
    pub(crate) inner: LoadOptions,
}

/// The options a NULL `pts_load_options_t *` stands for.
pub(crate) fn options_or_default(options: *const pts_load_options_t) -> LoadOptions {
    // SAFETY: NULL or a live handle (header contract).
    unsafe { options.as_ref() }.map_or_else(LoadOptions::default, |o| o.inner.clone())
}

/// New options at the defaults (verify, zero-copy). The caller frees `*out`.
#[no_mangle]
pub unsafe extern "C" fn pts_load_options_new(out: *mut *mut pts_load_options_t) -> *mut pts_error_t {
    boundary(|| {
        let out = Out::new(out, "out")?;
        out.write(Box::into_raw(Box::new(pts_load_options_t {
            inner: LoadOptions::default(),
        })));
        Ok(())
    })
}

/// Whether to check the CRC-32 of the tensor data before anything is
/// handed out (default true). False is for files verified when they were
/// deployed (`pytorch-saver verify`): the structure is still validated
/// (docs/FORMAT.md section 9), a flipped bit in tensor data is not found.
#[no_mangle]
pub unsafe extern "C" fn pts_load_options_set_verify(
    options: *mut pts_load_options_t,
    verify: bool,
) -> *mut pts_error_t {
    boundary(|| {
        unsafe { arg_mut(options, "options") }?.inner.verify = verify;
        Ok(())
    })
}

/// Whether to copy the tensors into memory of their own (true) instead of
/// pointing them into a private mapping of the file (false, the default).
/// Copy when another process may truncate or rewrite the file while the
/// model is in use: a truncated mapping faults (SIGBUS) on access, a copy
/// does not. Mapping costs no copy, and processes that load the same file
/// share its page cache.
#[no_mangle]
pub unsafe extern "C" fn pts_load_options_set_copy(options: *mut pts_load_options_t, copy: bool) -> *mut pts_error_t {
    boundary(|| {
        unsafe { arg_mut(options, "options") }?.inner.copy = copy;
        Ok(())
    })
}

/// Reports the progress of the loads and opens that use these options to
/// `callback` (NULL: to nobody), with `user_data`. The library takes
/// ownership of `user_data` whatever the outcome: `finalizer` (may be
/// NULL) runs once no call can report to it any more (the callback is
/// replaced, or the options are freed and no call that uses them runs), or
/// before this returns when `callback` is NULL or on error. The total is the bytes the call processes: those whose
/// CRC-32 it checks (every member when verifying, `metadata.json` alone
/// otherwise), plus, for a load that copies (the copy option, and always
/// for `pts_container_restore_ex`), the tensor data of the model and
/// optimizer it copies. Calls come from the calling thread and the
/// library's worker threads (the CRC check and the copy run on several
/// for large files), one at a time, never after the call returned (see
/// `pts_progress_fn`). Options shared by threads share the callback:
/// calls of different operations may then run at the same time.
#[no_mangle]
pub unsafe extern "C" fn pts_load_options_set_progress(
    options: *mut pts_load_options_t,
    callback: pts_progress_fn,
    user_data: *mut c_void,
    finalizer: pts_finalizer_t,
) -> *mut pts_error_t {
    boundary(|| {
        let progress = progress_from_c(callback, user_data, finalizer);
        unsafe { arg_mut(options, "options") }?.inner.progress = progress;
        Ok(())
    })
}

/// Frees options. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_load_options_free(options: *mut pts_load_options_t) {
    if !options.is_null() {
        boundary_or((), || {
            // SAFETY: a handle this library allocated, freed once.
            drop(unsafe { Box::from_raw(options) })
        })
    }
}
