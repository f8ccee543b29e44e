//! Error objects: a stable numeric code and a message. Codes are never
//! renumbered or reused; new failures get new codes.

use std::ffi::{c_char, CString};

use super::{arg_str, boundary_or};
use crate::error::Error;
use crate::format::FormatError;

/// A stable error code (one of the `PTS_ERROR_*` values).
pub type pts_error_code_t = u32;

/// An argument that must not be NULL was NULL.
pub const PTS_ERROR_NULL_ARGUMENT: pts_error_code_t = 1;
/// An argument is out of range or malformed: bad UTF-8, an unknown dtype
/// or member, a buffer of the wrong length, an index past the end.
pub const PTS_ERROR_INVALID_ARGUMENT: pts_error_code_t = 2;
/// Text that must be a JSON object is not one (kwargs, metadata).
pub const PTS_ERROR_INVALID_JSON: pts_error_code_t = 3;
/// The operating system refused a file operation.
pub const PTS_ERROR_IO: pts_error_code_t = 4;
/// The file is not a valid checkpoint: truncated, corrupt, not a ZIP, or
/// breaking format v1 (the message says which member, tensor and bytes).
pub const PTS_ERROR_FORMAT: pts_error_code_t = 5;
/// The file declares a format version this library does not read.
pub const PTS_ERROR_UNSUPPORTED_VERSION: pts_error_code_t = 6;
/// A class name that the registry does not hold.
pub const PTS_ERROR_UNKNOWN_NAME: pts_error_code_t = 7;
/// A second registration under a name already taken.
pub const PTS_ERROR_DUPLICATE_NAME: pts_error_code_t = 8;
/// Constructor kwargs the class does not accept (unknown, missing, wrong type or range).
pub const PTS_ERROR_INVALID_KWARGS: pts_error_code_t = 9;
/// A model factory failed (a C factory returned an error).
pub const PTS_ERROR_FACTORY: pts_error_code_t = 10;
/// User metadata that uses a reserved key or that JSON cannot hold.
pub const PTS_ERROR_INVALID_METADATA: pts_error_code_t = 11;
/// The container holds no model yet: initialize or load first.
pub const PTS_ERROR_NOT_INITIALIZED: pts_error_code_t = 12;
/// Saved state that does not fit the object it is loaded into.
pub const PTS_ERROR_STATE_MISMATCH: pts_error_code_t = 13;
/// Malformed optimizer, scheduler or extra state.
pub const PTS_ERROR_INVALID_STATE: pts_error_code_t = 14;
/// A call that the container's configuration does not allow (stepping a
/// scheduler that has none, ReduceLROnPlateau without a metric, ...).
pub const PTS_ERROR_USAGE: pts_error_code_t = 15;
/// libtorch reported an error (a wrong input shape in forward, ...).
pub const PTS_ERROR_TORCH: pts_error_code_t = 16;
/// A callback registered by the caller (a forward function, a tracked
/// object's `get_state`, ...) reported an error; the default code of
/// `pts_error_new`.
pub const PTS_ERROR_CALLBACK: pts_error_code_t = 17;
/// A tensor name that the checkpoint or container does not hold.
pub const PTS_ERROR_NOT_FOUND: pts_error_code_t = 18;
/// An internal error (a panic inside the library), caught at the boundary.
pub const PTS_ERROR_PANIC: pts_error_code_t = 19;
/// Another checkpoint manager holds the directory and prefix (its lock).
pub const PTS_ERROR_LOCKED: pts_error_code_t = 20;
/// An object store (a `s3://`, `gs://` or `az://` URL) refused or failed
/// a request, or a URL is malformed or of an unknown scheme; the message
/// names the URL.
pub const PTS_ERROR_STORAGE: pts_error_code_t = 21;
/// A class this library cannot build, though the file may name it:
/// PyTorch's LambdaLR and MultiplicativeLR (their `lr_lambda` is a Python
/// callable, which no file carries: load such a file with the Python
/// package, passing the lambda), SparseAdam. The message names the class
/// and says why.
pub const PTS_ERROR_UNSUPPORTED_CLASS: pts_error_code_t = 22;

/// An error: a code and a message. Owned by whoever received it; free it
/// with `pts_error_free`. Immutable: a `const pts_error_t *` may be read
/// from any thread.
pub struct pts_error_t {
    code: pts_error_code_t,
    kind: CString,
    message: CString,
}

impl pts_error_t {
    pub(crate) fn new(code: pts_error_code_t, message: impl Into<String>) -> Box<Self> {
        Self::with_kind(code, kind_of_code(code), message)
    }

    fn with_kind(code: pts_error_code_t, kind: &str, message: impl Into<String>) -> Box<Self> {
        let message = message.into().replace('\0', "\\0");
        Box::new(pts_error_t {
            code,
            kind: CString::new(kind).expect("kinds are identifiers"),
            message: CString::new(message).expect("NULs replaced"),
        })
    }

    pub(crate) fn code(&self) -> pts_error_code_t {
        self.code
    }

    pub(crate) fn message(&self) -> &str {
        self.message.to_str().unwrap_or("(message is not UTF-8)")
    }
}

/// The code of a crate error.
/// A format error's code; a shard's own error (`InShard`) has the code
/// of the error it wraps, as it has its kind.
fn format_code(f: &FormatError) -> pts_error_code_t {
    match f {
        FormatError::Io { .. } => PTS_ERROR_IO,
        FormatError::UnsupportedVersion { .. } => PTS_ERROR_UNSUPPORTED_VERSION,
        FormatError::TensorNotFound { .. } => PTS_ERROR_NOT_FOUND,
        FormatError::InvalidInput(_) => PTS_ERROR_INVALID_ARGUMENT,
        FormatError::Storage { .. } => PTS_ERROR_STORAGE,
        FormatError::InShard { source, .. } => format_code(source),
        _ => PTS_ERROR_FORMAT,
    }
}

fn code_of(e: &Error) -> pts_error_code_t {
    match e {
        Error::Format(f) => format_code(f),
        Error::UnknownName { .. } => PTS_ERROR_UNKNOWN_NAME,
        Error::DuplicateName { .. } => PTS_ERROR_DUPLICATE_NAME,
        Error::UnsupportedClass { .. } => PTS_ERROR_UNSUPPORTED_CLASS,
        Error::InvalidKwargs { .. } => PTS_ERROR_INVALID_KWARGS,
        Error::Factory { .. } => PTS_ERROR_FACTORY,
        Error::ReservedMetadataKey(_) | Error::InvalidMetadata { .. } => PTS_ERROR_INVALID_METADATA,
        Error::NotInitialized => PTS_ERROR_NOT_INITIALIZED,
        Error::StateMismatch { .. } => PTS_ERROR_STATE_MISMATCH,
        Error::InvalidState { .. } => PTS_ERROR_INVALID_STATE,
        Error::Usage(_) => PTS_ERROR_USAGE,
        Error::Callback { .. } => PTS_ERROR_CALLBACK,
        Error::Torch(_) => PTS_ERROR_TORCH,
        Error::Locked { .. } => PTS_ERROR_LOCKED,
        // Conversion is not in the C ABI; a foreign file is a malformed file.
        Error::UnsafePickle { .. } | Error::InvalidForeign { .. } => PTS_ERROR_FORMAT,
    }
}

/// The kind of an error made from a bare code (argument checks, callback
/// errors): the code's name.
fn kind_of_code(code: pts_error_code_t) -> &'static str {
    match code {
        PTS_ERROR_NULL_ARGUMENT => "NullArgument",
        PTS_ERROR_INVALID_ARGUMENT => "InvalidArgument",
        PTS_ERROR_INVALID_JSON => "InvalidJson",
        PTS_ERROR_IO => "Io",
        PTS_ERROR_FORMAT => "Format",
        PTS_ERROR_UNSUPPORTED_VERSION => "UnsupportedVersion",
        PTS_ERROR_UNKNOWN_NAME => "UnknownName",
        PTS_ERROR_DUPLICATE_NAME => "DuplicateName",
        PTS_ERROR_INVALID_KWARGS => "InvalidKwargs",
        PTS_ERROR_FACTORY => "Factory",
        PTS_ERROR_INVALID_METADATA => "InvalidMetadata",
        PTS_ERROR_NOT_INITIALIZED => "NotInitialized",
        PTS_ERROR_STATE_MISMATCH => "StateMismatch",
        PTS_ERROR_INVALID_STATE => "InvalidState",
        PTS_ERROR_USAGE => "Usage",
        PTS_ERROR_TORCH => "Torch",
        PTS_ERROR_NOT_FOUND => "NotFound",
        PTS_ERROR_PANIC => "Panic",
        PTS_ERROR_LOCKED => "Locked",
        PTS_ERROR_STORAGE => "Storage",
        PTS_ERROR_UNSUPPORTED_CLASS => "UnsupportedClass",
        _ => "Callback",
    }
}

impl From<Error> for Box<pts_error_t> {
    fn from(e: Error) -> Self {
        pts_error_t::with_kind(code_of(&e), e.kind(), e.to_string())
    }
}

impl From<FormatError> for Box<pts_error_t> {
    fn from(e: FormatError) -> Self {
        Error::Format(e).into()
    }
}

impl From<tch::TchError> for Box<pts_error_t> {
    fn from(e: tch::TchError) -> Self {
        Error::from(e).into()
    }
}

/// A new error object, for a callback (a model factory or forward
/// function) to return: `code` is one of `PTS_ERROR_*` (0 means
/// `PTS_ERROR_CALLBACK`), `message` is copied (NULL gives an empty
/// message). Returns NULL only if the allocation failed. The library takes
/// ownership of an error a callback returns.
#[no_mangle]
pub unsafe extern "C" fn pts_error_new(code: pts_error_code_t, message: *const c_char) -> *mut pts_error_t {
    boundary_or(std::ptr::null_mut(), || {
        let code = if code == 0 { PTS_ERROR_CALLBACK } else { code };
        let text = match unsafe { arg_str(message, "message") } {
            Ok(s) => s.to_owned(),
            Err(_) if message.is_null() => String::new(),
            Err(e) => e.message().to_owned(),
        };
        Box::into_raw(pts_error_t::new(code, text))
    })
}

/// The error's stable code (`PTS_ERROR_*`); 0 for a NULL error.
#[no_mangle]
pub unsafe extern "C" fn pts_error_code(error: *const pts_error_t) -> pts_error_code_t {
    // SAFETY: NULL or an error from this library (header contract).
    unsafe { error.as_ref() }.map_or(0, |e| e.code)
}

/// The error's message, NUL-terminated UTF-8; "" for a NULL error.
/// Borrowed: valid until the error is freed.
#[no_mangle]
pub unsafe extern "C" fn pts_error_message(error: *const pts_error_t) -> *const c_char {
    // SAFETY: NULL or an error from this library (header contract).
    match unsafe { error.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// The error's kind, NUL-terminated ASCII; "" for a NULL error. Borrowed:
/// valid until the error is freed. Finer than the code: a file the reader
/// refuses has code `PTS_ERROR_FORMAT` (or `PTS_ERROR_IO`,
/// `PTS_ERROR_UNSUPPORTED_VERSION`) and the kind of docs/FORMAT.md section
/// 9 that names the failed check (`"Truncated"`, `"CrcMismatch"`,
/// `"Schema"`, ...), the same string every reader reports. Other errors
/// have the crate error's kind (`"InvalidKwargs"`, `"StateMismatch"`, ...)
/// or, for argument checks and callback errors, the code's name
/// (`"NullArgument"`, `"Callback"`, ...). Kinds are never renamed.
#[no_mangle]
pub unsafe extern "C" fn pts_error_kind(error: *const pts_error_t) -> *const c_char {
    // SAFETY: NULL or an error from this library (header contract).
    match unsafe { error.as_ref() } {
        Some(e) => e.kind.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// Frees an error. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_error_free(error: *mut pts_error_t) {
    if !error.is_null() {
        // SAFETY: an error this library allocated, freed once.
        drop(unsafe { Box::from_raw(error) });
    }
}
