//! The one error type for everything the format layer refuses or fails at.
//!
//! Each variant names the problem precisely (which member, which tensor,
//! which byte range) so that a user can tell a truncated download from a
//! bit flip from a file written by a newer version.

use std::path::PathBuf;

/// A checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The operating system refused an operation.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file ends before a structure that must be there.
    #[error("truncated file: {what} needs bytes {start}..{end} but the file has {len} bytes")]
    Truncated {
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },
    /// The file does not end with an end-of-central-directory record.
    #[error(
        "no end-of-central-directory record at the end of the {len}-byte file: it is truncated or not a ZIP archive"
    )]
    NoEndRecord { len: u64 },
    /// ZIP structures that contradict each other.
    #[error("inconsistent ZIP layout: {0}")]
    Layout(String),
    /// A ZIP record does not start with its signature.
    #[error("not a pytorch-saver checkpoint: no {what} signature at byte {offset}")]
    BadSignature { what: &'static str, offset: u64 },
    /// The archive uses a ZIP feature that format v1 forbids.
    #[error("unsupported ZIP feature in {member}: {feature}")]
    UnsupportedZip { member: String, feature: String },
    /// A member is compressed; v1 requires every member STORED.
    #[error("member {member} is compressed (method {method}); format v1 requires STORED (method 0)")]
    CompressedMember { member: String, method: u16 },
    /// The local header of a member disagrees with its central directory entry.
    #[error("member {member}: local header and central directory disagree on {field}")]
    HeaderMismatch { member: String, field: &'static str },
    /// Bytes not claimed by any ZIP structure.
    #[error("unexpected bytes {start}..{end}: {what}")]
    UnexpectedBytes { start: u64, end: u64, what: String },
    /// Bytes after the end-of-central-directory record.
    #[error("{count} trailing bytes after the end of the archive at byte {offset}")]
    TrailingBytes { offset: u64, count: u64 },
    /// A member's data does not start on a 64-byte boundary.
    #[error("member {member}: data starts at byte {offset}, not on a 64-byte boundary")]
    Misaligned { member: String, offset: u64 },
    /// The same member name appears twice.
    #[error("duplicate member {0}")]
    DuplicateMember(String),
    /// A member that format v1 does not define.
    #[error("unexpected member {0:?}")]
    UnexpectedMember(String),
    /// A member that the metadata says must be there is not.
    #[error("missing member {0}")]
    MissingMember(String),
    /// Members are present but not in the order v1 prescribes.
    #[error("member {member} at position {position}; v1 orders members as {expected}")]
    MemberOrder {
        member: String,
        position: usize,
        expected: String,
    },
    /// The stored CRC-32 does not match the member's bytes.
    #[error("CRC-32 mismatch in {member} (bytes {start}..{end}): stored {stored:08x}, computed {computed:08x}")]
    CrcMismatch {
        member: String,
        start: u64,
        end: u64,
        stored: u32,
        computed: u32,
    },
    /// A length field is larger than v1 allows for that structure.
    #[error("{what} is {len} bytes, above the limit of {max}")]
    TooLarge { what: String, len: u64, max: u64 },
    /// `metadata.json` is not valid JSON or not an object.
    #[error("metadata.json: {0}")]
    Json(String),
    /// `metadata.json` is JSON but breaks the v1 schema.
    #[error("metadata.json: field {field}: {reason}")]
    Schema { field: String, reason: String },
    /// The file declares a format version this library does not read.
    #[error("format version {found} is not supported (this library reads versions {supported})")]
    UnsupportedVersion { found: String, supported: String },
    /// A safetensors member's header is malformed.
    #[error("{member}: header: {reason}")]
    TensorHeader { member: String, reason: String },
    /// A tensor's entry in a safetensors header is inconsistent or out of range.
    #[error("{member}: tensor {tensor:?} (data bytes {start}..{end}): {reason}")]
    TensorData {
        member: String,
        tensor: String,
        start: u64,
        end: u64,
        reason: String,
    },
    /// A tensor has a dtype outside v1's list.
    #[error("{member}: tensor {tensor:?} has dtype {dtype}, not one of v1's dtypes")]
    UnsupportedDtype {
        member: String,
        tensor: String,
        dtype: String,
    },
    /// A requested tensor does not exist in the member.
    #[error("{member}: no tensor named {tensor:?}")]
    TensorNotFound { member: String, tensor: String },
    /// A typed value (FORMAT.md 11.2) is malformed: an unknown tag, a
    /// payload of the wrong type, a class name of the wrong form, a tag
    /// where the format does not allow it.
    #[error("metadata.json: typed value at {path}: {reason}")]
    TypedValue { path: String, reason: String },
    /// The caller asked the writer for something v1 cannot represent.
    #[error("cannot write: {0}")]
    InvalidInput(String),
    /// An object store (s3://, gs://, az://) refused or failed a request,
    /// or a URL names no store this library can reach: a missing bucket or
    /// object, refused credentials, an unreachable endpoint after the
    /// bounded retries, a name another writer published first, an unknown
    /// scheme.
    #[error("{op} {url}: {reason}")]
    Storage {
        op: &'static str,
        url: String,
        reason: String,
    },
    /// A sharded checkpoint's `index.json` is not valid JSON or not an
    /// object (FORMAT.md 13.5 step 2). Its kind is `Json`, as for
    /// `metadata.json`; the message names `index.json`.
    #[error("index.json: {0}")]
    IndexJson(String),
    /// A sharded checkpoint's `index.json` is JSON but breaks the schema
    /// of FORMAT.md 13.1 (steps 2 and 3 of 13.5). Its kind is `Schema`,
    /// as for `metadata.json`; the message names `index.json`.
    #[error("index.json: field {field}: {reason}")]
    IndexSchema { field: String, reason: String },
    /// A location holds no `index.json`: no sharded checkpoint was
    /// committed there (an interrupted save leaves shard files without
    /// one; FORMAT.md 13.5 step 1).
    #[error("{location}: no index.json: no sharded checkpoint was committed there")]
    NotCommitted { location: String },
    /// The chunks of a tensor of a sharded checkpoint overlap or leave
    /// elements uncovered (FORMAT.md 13.5 step 3).
    #[error("index.json: tensor {tensor:?}: {reason}")]
    ChunkTiling { tensor: String, reason: String },
    /// A shard file that the index names does not exist (FORMAT.md 13.5
    /// step 4).
    #[error("shard file {file} named by index.json does not exist")]
    MissingShard { file: String },
    /// A shard file exists but is not the one the index describes: its
    /// size, kind, shard block (checkpoint id, rank), or a chunk's tensor
    /// (dtype, shape) differs, or it holds a tensor no chunk names
    /// (FORMAT.md 13.5 step 4).
    #[error("shard file {file}: {reason}")]
    ShardMismatch { file: String, reason: String },
    /// A shard file of a sharded checkpoint failed a check of its own
    /// (FORMAT.md section 9, or a chunk's tensor missing from it): the
    /// error, with the file named. Its kind is the inner error's.
    #[error("shard file {file}: {source}")]
    InShard {
        file: String,
        #[source]
        source: Box<FormatError>,
    },
}

impl FormatError {
    /// The error's kind: the variant's name (`IndexJson` and `IndexSchema`
    /// excepted: `Json` and `Schema`, the kinds of the same checks on
    /// `metadata.json`; and `InShard`, whose kind is its inner error's),
    /// stable across releases and
    /// the same string in every language's reader (docs/FORMAT.md section
    /// 9 lists them with the check that produces each).
    pub fn kind(&self) -> &'static str {
        match self {
            FormatError::Io { .. } => "Io",
            FormatError::Truncated { .. } => "Truncated",
            FormatError::NoEndRecord { .. } => "NoEndRecord",
            FormatError::Layout(_) => "Layout",
            FormatError::BadSignature { .. } => "BadSignature",
            FormatError::UnsupportedZip { .. } => "UnsupportedZip",
            FormatError::CompressedMember { .. } => "CompressedMember",
            FormatError::HeaderMismatch { .. } => "HeaderMismatch",
            FormatError::UnexpectedBytes { .. } => "UnexpectedBytes",
            FormatError::TrailingBytes { .. } => "TrailingBytes",
            FormatError::Misaligned { .. } => "Misaligned",
            FormatError::DuplicateMember(_) => "DuplicateMember",
            FormatError::UnexpectedMember(_) => "UnexpectedMember",
            FormatError::MissingMember(_) => "MissingMember",
            FormatError::MemberOrder { .. } => "MemberOrder",
            FormatError::CrcMismatch { .. } => "CrcMismatch",
            FormatError::TooLarge { .. } => "TooLarge",
            FormatError::Json(_) => "Json",
            FormatError::Schema { .. } => "Schema",
            FormatError::UnsupportedVersion { .. } => "UnsupportedVersion",
            FormatError::TensorHeader { .. } => "TensorHeader",
            FormatError::TensorData { .. } => "TensorData",
            FormatError::UnsupportedDtype { .. } => "UnsupportedDtype",
            FormatError::TensorNotFound { .. } => "TensorNotFound",
            FormatError::TypedValue { .. } => "TypedValue",
            FormatError::InvalidInput(_) => "InvalidInput",
            FormatError::Storage { .. } => "Storage",
            FormatError::IndexJson(_) => "Json",
            FormatError::IndexSchema { .. } => "Schema",
            FormatError::NotCommitted { .. } => "NotCommitted",
            FormatError::ChunkTiling { .. } => "ChunkTiling",
            FormatError::MissingShard { .. } => "MissingShard",
            FormatError::ShardMismatch { .. } => "ShardMismatch",
            FormatError::InShard { source, .. } => source.kind(),
        }
    }

    pub(crate) fn storage(op: &'static str, url: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        FormatError::Storage {
            op,
            url: url.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
