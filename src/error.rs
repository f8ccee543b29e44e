//! The crate's error type: format errors for malformed files, and typed
//! errors for everything a caller can get wrong.

use crate::format::FormatError;

/// Anything that can go wrong in pytorch-saver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is malformed or could not be read or written.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A class name that the registry does not know.
    #[error("unknown {kind} {name:?}; registered: {known}")]
    UnknownName {
        kind: &'static str,
        name: String,
        known: String,
    },
    /// A second registration under a name already taken.
    #[error("a {kind} named {name:?} is already registered")]
    DuplicateName { kind: &'static str, name: String },
    /// A class this language cannot build: PyTorch's LambdaLR and
    /// MultiplicativeLR (their `lr_lambda` is a Python callable, which no
    /// file carries), SparseAdam; `reason` says why and what to do.
    #[error("{kind} {name:?} is not supported here: {reason}")]
    UnsupportedClass {
        kind: &'static str,
        name: String,
        reason: String,
    },
    /// Constructor kwargs that the class does not accept.
    #[error("{class}: {reason}")]
    InvalidKwargs { class: String, reason: String },
    /// A factory failed (or panicked) while building an object.
    #[error("{class}: construction failed: {reason}")]
    Factory { class: String, reason: String },
    /// User metadata that uses one of the reserved top-level keys.
    #[error("metadata key {0:?} is reserved (model_kwargs, optim_kwargs, scheduler_kwargs, timestamp and __pytorch_saver__ are written by the library)")]
    ReservedMetadataKey(String),
    /// User metadata that JSON cannot represent.
    #[error("metadata key {key:?}: {reason}")]
    InvalidMetadata { key: String, reason: String },
    /// `save` or a model access before `initialize` or `load`.
    #[error("the container holds no model: call initialize or load first")]
    NotInitialized,
    /// Saved state that does not fit the object it is loaded into.
    #[error("state of {tensor:?} does not fit: {reason}")]
    StateMismatch { tensor: String, reason: String },
    /// Optimizer or scheduler state (from a file, or handed to
    /// `load_state_dict`) that is malformed: `what` names the key.
    #[error("invalid {what}: {reason}")]
    InvalidState { what: String, reason: String },
    /// A call that is not valid in the object's current configuration
    /// (a scheduler without an optimizer, ReduceLROnPlateau stepped
    /// without a metric, ...).
    #[error("{0}")]
    Usage(String),
    /// A callback registered from outside Rust (a C or C++ forward
    /// function) reported an error.
    #[error("{what}: {message}")]
    Callback { what: String, message: String },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(String),
    /// Another checkpoint manager (in this process or another) holds the
    /// lock of the same directory (or object store prefix) and prefix
    /// (FORMAT.md 12.2, 12.6); `holder` says how (the lock file is locked;
    /// the lock object's owner and lease), or how this manager lost it.
    #[error("another checkpoint manager holds {dir:?} with prefix {prefix:?} ({holder}): close it first")]
    Locked {
        dir: std::path::PathBuf,
        prefix: String,
        holder: String,
    },
    /// A pickle (in a `torch.save` file or a file of the original
    /// package) names a global outside the allow-list of plain containers
    /// and tensor constructors: refused before anything of it ran.
    #[error("{file}: the pickle asks for {global}, which is not allowed (only containers, tensors and plain values are read; nothing was run)")]
    UnsafePickle { file: std::path::PathBuf, global: String },
    /// A foreign file (`torch.save`, safetensors, a Hugging Face
    /// directory, a file of the original package) that is malformed or
    /// holds something a conversion cannot carry.
    #[error("{file}: {reason}")]
    InvalidForeign { file: std::path::PathBuf, reason: String },
}

impl Error {
    /// The error's kind: for a malformed file the [`FormatError`] variant's
    /// name ([`FormatError::kind`]), otherwise this enum's variant name.
    /// Stable across releases; the C ABI, C++, Go and Python report the
    /// same strings.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Format(f) => f.kind(),
            Error::UnknownName { .. } => "UnknownName",
            Error::DuplicateName { .. } => "DuplicateName",
            Error::UnsupportedClass { .. } => "UnsupportedClass",
            Error::InvalidKwargs { .. } => "InvalidKwargs",
            Error::Factory { .. } => "Factory",
            Error::ReservedMetadataKey(_) => "ReservedMetadataKey",
            Error::InvalidMetadata { .. } => "InvalidMetadata",
            Error::NotInitialized => "NotInitialized",
            Error::StateMismatch { .. } => "StateMismatch",
            Error::InvalidState { .. } => "InvalidState",
            Error::Usage(_) => "Usage",
            Error::Callback { .. } => "Callback",
            Error::Torch(_) => "Torch",
            Error::Locked { .. } => "Locked",
            Error::UnsafePickle { .. } => "UnsafePickle",
            Error::InvalidForeign { .. } => "InvalidForeign",
        }
    }
}

#[cfg(feature = "torch")]
impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(torch_message(&e.to_string()))
    }
}

/// A libtorch error message without the C++ backtrace libtorch appends
/// ("Exception raised from ... frame #0 ..."): the first part says what
/// went wrong; the frames are addresses a user cannot act on. Also takes
/// the message out of a tch panic (`called Result::unwrap() on an Err
/// value: Torch("...")`, where the newline is escaped).
#[cfg(feature = "torch")]
pub(crate) fn torch_message(message: &str) -> String {
    let (inner, panicked) = match message.strip_prefix("called `Result::unwrap()` on an `Err` value: Torch(\"") {
        Some(inner) => (inner, true),
        None => (message, false),
    };
    let end = ["\nException raised from", "\\nException raised from"]
        .iter()
        .filter_map(|marker| inner.find(marker))
        .min()
        .unwrap_or(inner.len());
    let text = &inner[..end];
    match panicked {
        true => text.strip_suffix("\")").unwrap_or(text).to_owned(),
        false => text.to_owned(),
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of a caught panic payload.
#[cfg(feature = "torch")]
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(all(test, feature = "torch"))]
mod tests {
    use super::torch_message;

    #[test]
    fn torch_messages_lose_the_cpp_backtrace() {
        let raw = "mat1 and mat2 shapes cannot be multiplied (4x2 and 4x8)\nException raised from meta at LinearAlgebra.cpp:194 (most recent call first):\nframe #0: ...";
        assert_eq!(
            torch_message(raw),
            "mat1 and mat2 shapes cannot be multiplied (4x2 and 4x8)"
        );
        let panicked = "called `Result::unwrap()` on an `Err` value: Torch(\"mat1 and mat2 shapes cannot be multiplied (4x2 and 4x8)\\nException raised from meta\\nframe #0\")";
        assert_eq!(
            torch_message(panicked),
            "mat1 and mat2 shapes cannot be multiplied (4x2 and 4x8)"
        );
        assert_eq!(torch_message("plain"), "plain");
        assert_eq!(torch_message("ends in \")"), "ends in \")");
        assert_eq!(
            torch_message("called `Result::unwrap()` on an `Err` value: Torch(\"short\")"),
            "short"
        );
    }
}
