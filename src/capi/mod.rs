//! The C ABI: every `extern "C"` function of the library, and nothing else
//! in the crate is FFI to C callers. `include/pytorch_saver.h` is generated
//! from this module by cbindgen (`make header`); `docs/C_API.md` is the
//! guide.
//!
//! The conventions every function follows (errors as objects, results
//! only on success, no panic across the boundary, ownership, threads) are
//! stated once, in docs/C_API.md, "Rules every function follows". Here
//! they are kept by construction: every body runs inside [`boundary`],
//! which turns a panic into a `PTS_ERROR_PANIC` error object, and every
//! pointer goes through the `arg_*` checks below.

// Only with libtorch: the ABI is the core's.
#![cfg(feature = "torch")]
// The C names are the API (`pts_tensor_t`, `PTS_DTYPE_F32`).
#![allow(non_camel_case_types)]
// Every exported function checks its pointers before use; the safety
// contract of each is the documentation in the header.
#![allow(clippy::missing_safety_doc)]

mod checkpoint;
mod container;
mod error;
mod extra_state;
mod lbfgs;
mod load_options;
mod manager;
mod model;
mod optim_registry;
mod progress;
mod registry;
mod sharded;
mod tensor;

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

pub use checkpoint::*;
pub use container::*;
pub use error::*;
pub use extra_state::*;
pub use lbfgs::*;
pub use load_options::*;
pub use manager::*;
pub use model::*;
pub use optim_registry::*;
pub use progress::*;
pub use registry::*;
pub use sharded::*;
pub use tensor::*;

/// Major version of the library. The header's `PTS_VERSION` string comes
/// from cbindgen.toml; tests/header.rs checks both against Cargo.toml.
pub const PTS_VERSION_MAJOR: u32 = 0;
/// Minor version of the library.
pub const PTS_VERSION_MINOR: u32 = 2;
/// Patch version of the library.
pub const PTS_VERSION_PATCH: u32 = 0;
/// The newest checkpoint format version this library writes and reads.
pub const PTS_FORMAT_VERSION: u32 = 2;

/// The library's version as `"MAJOR.MINOR.PATCH"`: compare it with the
/// header's `PTS_VERSION_*` macros to detect a header/library mismatch.
/// Static storage; never free it.
#[no_mangle]
pub extern "C" fn pts_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Frees a string the library returned (a saved path, metadata JSON).
/// NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_string_free(string: *mut c_char) {
    if !string.is_null() {
        // SAFETY: the caller passes a string this library allocated with
        // CString::into_raw, once.
        drop(unsafe { CString::from_raw(string) });
    }
}

/// Provokes a panic inside the library's boundary, to test that it comes
/// back as a `PTS_ERROR_PANIC` error and never unwinds into C. Only in
/// builds with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
#[no_mangle]
pub extern "C" fn pts_fault_inject_panic() -> *mut pts_error_t {
    boundary(|| panic!("panic provoked by pts_fault_inject_panic"))
}

/// A result inside an exported body: the error is the object C receives.
pub(crate) type CResult<T> = std::result::Result<T, Box<pts_error_t>>;

/// Runs an exported body: `Ok` becomes NULL, an error becomes the error
/// object the caller frees, a panic becomes a `PTS_ERROR_PANIC` error.
pub(crate) fn boundary(body: impl FnOnce() -> CResult<()>) -> *mut pts_error_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ptr::null_mut(),
        Ok(Err(e)) => Box::into_raw(e),
        Err(payload) => Box::into_raw(pts_error_t::new(
            PTS_ERROR_PANIC,
            format!(
                "internal error (panic) in pytorch-saver: {}",
                crate::error::panic_message(&*payload)
            ),
        )),
    }
}

/// Runs an exported body that returns a value rather than an error
/// (only the `_free` functions and infallible getters): a panic is
/// swallowed and `fallback` returned.
pub(crate) fn boundary_or<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

fn null_argument(name: &str) -> Box<pts_error_t> {
    pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, format!("argument {name} is NULL"))
}

/// A required shared reference.
pub(crate) unsafe fn arg_ref<'a, T>(p: *const T, name: &str) -> CResult<&'a T> {
    // SAFETY: the caller passes a valid pointer or NULL (header contract).
    unsafe { p.as_ref() }.ok_or_else(|| null_argument(name))
}

/// A required exclusive reference.
pub(crate) unsafe fn arg_mut<'a, T>(p: *mut T, name: &str) -> CResult<&'a mut T> {
    // SAFETY: as for arg_ref, and `T *` is exclusive to the caller.
    unsafe { p.as_mut() }.ok_or_else(|| null_argument(name))
}

/// A required NUL-terminated UTF-8 string.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> CResult<&'a str> {
    if p.is_null() {
        return Err(null_argument(name));
    }
    // SAFETY: non-null and NUL-terminated by the header contract.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|e| {
        pts_error_t::new(
            PTS_ERROR_INVALID_ARGUMENT,
            format!("argument {name} is not valid UTF-8: {e}"),
        )
    })
}

/// An optional string: NULL is `None`.
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, name: &str) -> CResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        unsafe { arg_str(p, name) }.map(Some)
    }
}

/// A required input buffer; NULL is accepted when `len` is 0.
pub(crate) unsafe fn arg_bytes<'a>(p: *const u8, len: usize, name: &str) -> CResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null_argument(name));
    }
    // SAFETY: the caller guarantees `len` readable bytes at `p`.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A required output buffer; NULL is accepted when `len` is 0.
pub(crate) unsafe fn arg_bytes_mut<'a>(p: *mut u8, len: usize, name: &str) -> CResult<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(null_argument(name));
    }
    // SAFETY: the caller guarantees `len` writable bytes at `p`, not
    // aliased by anything the call reads.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// An out-pointer, checked up front and written only once the call has
/// succeeded.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    pub(crate) fn new(p: *mut T, name: &str) -> CResult<Self> {
        if p.is_null() {
            Err(null_argument(name))
        } else {
            Ok(Out(p))
        }
    }

    pub(crate) fn write(self, value: T) {
        // SAFETY: checked non-null in `new`; the caller owns the slot.
        unsafe { self.0.write(value) }
    }
}

/// A string for C to own (freed with `pts_string_free`).
pub(crate) fn owned_string(s: impl Into<String>) -> CResult<*mut c_char> {
    CString::new(s.into())
        .map(CString::into_raw)
        .map_err(|e| pts_error_t::new(PTS_ERROR_INVALID_ARGUMENT, format!("string with a NUL byte: {e}")))
}

/// A JSON object given as text (`what` names it in errors), parsed by the
/// format's strict parser: a duplicate key at any depth is refused, as in
/// a file's JSON, so that one text never means two things.
pub(crate) fn json_object_arg(text: &str, what: &str) -> CResult<serde_json::Map<String, serde_json::Value>> {
    match crate::format::json::parse_value(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(pts_error_t::new(
            PTS_ERROR_INVALID_JSON,
            format!("{what} must be a JSON object, got {other}"),
        )),
        Err(e) => Err(pts_error_t::new(
            PTS_ERROR_INVALID_JSON,
            format!("{what} is not valid JSON: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error's code and message, freeing it.
    unsafe fn take(error: *mut pts_error_t) -> (pts_error_code_t, String) {
        assert!(!error.is_null(), "the call succeeded");
        let code = unsafe { pts_error_code(error) };
        let message = unsafe { CStr::from_ptr(pts_error_message(error)) }
            .to_string_lossy()
            .into_owned();
        unsafe { pts_error_free(error) };
        (code, message)
    }

    #[test]
    fn json_arguments_refuse_duplicate_keys_at_any_depth() {
        let map =
            json_object_arg(r#"{"a": 1, "b": {"c": [1, 2]}}"#, "kwargs").unwrap_or_else(|e| panic!("{}", e.message()));
        assert_eq!(map.len(), 2);
        for (text, key) in [(r#"{"a": 1, "a": 2}"#, "a"), (r#"{"x": [{"c": 1, "c": 1}]}"#, "c")] {
            let e = json_object_arg(text, "model_kwargs_json").unwrap_err();
            assert_eq!(e.code(), PTS_ERROR_INVALID_JSON);
            let message = e.message();
            assert!(message.contains("model_kwargs_json is not valid JSON"), "{message}");
            assert!(message.contains(&format!("duplicate key {key:?}")), "{message}");
        }
        let e = json_object_arg("[1, 2]", "metadata_json").unwrap_err();
        assert_eq!(e.code(), PTS_ERROR_INVALID_JSON);
        assert!(e.message().contains("must be a JSON object"), "{}", e.message());
    }

    #[test]
    fn c_calls_refuse_kwargs_and_metadata_with_a_duplicate_key() {
        let mut c = ptr::null_mut();
        assert!(unsafe { pts_container_new(ptr::null(), &mut c) }.is_null());
        let linear = c"torch.nn.Linear";
        let adam = c"torch.optim.Adam";
        let duplicate = c"{\"in_features\": 2, \"out_features\": 1, \"in_features\": 3}";
        let error = unsafe {
            pts_container_initialize(
                c,
                linear.as_ptr(),
                duplicate.as_ptr(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
            )
        };
        let (code, message) = unsafe { take(error) };
        assert_eq!(code, PTS_ERROR_INVALID_JSON, "{message}");
        assert!(message.contains("duplicate key \"in_features\""), "{message}");

        let kwargs = c"{\"in_features\": 2, \"out_features\": 1}";
        let duplicate = c"{\"lr\": 0.1, \"betas\": [0.9, 0.99], \"lr\": 0.2}";
        let error = unsafe {
            pts_container_initialize(
                c,
                linear.as_ptr(),
                kwargs.as_ptr(),
                adam.as_ptr(),
                duplicate.as_ptr(),
                ptr::null(),
                ptr::null(),
            )
        };
        let (code, message) = unsafe { take(error) };
        assert_eq!(code, PTS_ERROR_INVALID_JSON, "{message}");
        assert!(
            message.contains("optim_kwargs_json") && message.contains("duplicate key \"lr\""),
            "{message}"
        );

        let error = unsafe {
            pts_container_initialize(
                c,
                linear.as_ptr(),
                kwargs.as_ptr(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
            )
        };
        assert!(error.is_null(), "{}", unsafe { take(error) }.1);
        let dir = tempfile::tempdir().unwrap();
        let dir_c = CString::new(dir.path().to_str().unwrap()).unwrap();
        let duplicate = c"{\"run\": {\"epoch\": 1, \"epoch\": 2}}";
        let mut path = ptr::null_mut();
        let error = unsafe { pts_container_save(c, dir_c.as_ptr(), ptr::null(), duplicate.as_ptr(), &mut path) };
        let (code, message) = unsafe { take(error) };
        assert_eq!(code, PTS_ERROR_INVALID_JSON, "{message}");
        assert!(
            message.contains("metadata_json") && message.contains("duplicate key \"epoch\""),
            "{message}"
        );
        assert!(path.is_null());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was written");
        unsafe { pts_container_free(c) };
    }
}
