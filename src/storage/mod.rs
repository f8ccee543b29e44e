//! Where checkpoints live: a local path, or an object in an object store
//! named by a URL (`s3://bucket/key`, `gs://`, `az://`; `file://` is a
//! local path). The whole crate takes locations as paths, so that every
//! caller (Rust, the C ABI, C++, Go, the CLI) passes URLs the way it
//! passes paths: [`Location::parse`] tells them apart.
//!
//! Object stores are reached through the `object_store` crate, configured
//! from the standard environment variables of each cloud (for S3:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...), with bounded
//! retries and timeouts ([`limits`]). The API is blocking; the requests
//! run on a small runtime of this module's own.

mod object;
mod runtime;
mod store;
mod upload;

use std::path::{Path, PathBuf};

pub use object::{Conditional, ListedObject, RemoteObject};
pub use store::limits;
pub use store::Remote;
pub(crate) use upload::MultipartSink;

use crate::format::FormatError;

/// A checkpoint's location: a local path or an object store URL.
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    Remote(Remote),
}

/// The schemes [`Location::parse`] accepts as object stores.
pub const SCHEMES: [&str; 6] = ["s3", "s3a", "gs", "az", "abfs", "file"];

/// The scheme of `text` when it has the form `scheme://...` (a scheme
/// being a letter, then letters, digits, `+`, `-` or `.`), else `None`.
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))).then_some(scheme)
}

/// True when `path` is written as a URL (`scheme://...`), known scheme or
/// not: such a path is never taken as a local file name.
pub fn is_url(path: &Path) -> bool {
    path.to_str().and_then(url_scheme).is_some()
}

impl Location {
    /// A path, or a URL when `path` has the form `scheme://...`. A local
    /// directory whose name looks like a URL is written `./name://...`.
    /// `file://` URLs are local paths. An unknown scheme, or an object
    /// store URL that names no bucket, is a [`FormatError::Storage`]
    /// naming the URL.
    pub fn parse(path: &Path) -> Result<Location, FormatError> {
        let Some(text) = path.to_str() else {
            return Ok(Location::Local(path.to_path_buf()));
        };
        let Some(scheme) = url_scheme(text) else {
            return Ok(Location::Local(path.to_path_buf()));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let url = url::Url::parse(text).map_err(|e| FormatError::storage("cannot parse", text, e))?;
                let local = url
                    .to_file_path()
                    .map_err(|()| FormatError::storage("cannot parse", text, "not a local file URL"))?;
                Ok(Location::Local(local))
            }
            "s3" | "s3a" | "gs" | "az" | "abfs" => Ok(Location::Remote(Remote::parse(text)?)),
            other => Err(FormatError::storage(
                "cannot open",
                text,
                format!(
                    "unknown URL scheme {other:?}; known: {} (and plain paths)",
                    SCHEMES.map(|s| format!("{s}://")).join(", ")
                ),
            )),
        }
    }

    /// The location as the user writes it: the path, or the URL.
    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::Remote(r) => r.url().to_owned(),
        }
    }
}
