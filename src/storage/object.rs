//! Requests on objects: ranged and parallel reads, listing a prefix,
//! create-only and conditional writes of small objects, deletes.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::runtime::block_on;
use super::store::Remote;
use crate::format::FormatError;

/// A parallel read fetches this many bytes per request.
const READ_CHUNK: usize = 8 << 20;
/// At most this many reads of one object are in flight.
const READ_CONCURRENCY: usize = 8;

/// The text of an object store error, with its causes (the HTTP status
/// and the service's message are in the sources).
pub(crate) fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

pub(crate) fn storage_error(op: &'static str, url: &str, e: &object_store::Error) -> FormatError {
    FormatError::storage(op, url, reason(e))
}

/// An object opened for reading: its size is known (one HEAD request).
#[derive(Debug, Clone)]
pub struct RemoteObject {
    remote: Remote,
    size: u64,
}

/// One object found under a prefix.
#[derive(Debug, Clone)]
pub struct ListedObject {
    /// The object's name below the prefix (a file name).
    pub name: String,
    pub size: u64,
}

impl RemoteObject {
    /// Looks the object up; a missing bucket or object, or refused
    /// credentials, is a [`FormatError::Storage`] naming the URL.
    pub fn open(remote: &Remote) -> Result<RemoteObject, FormatError> {
        let url = remote.url();
        let meta =
            block_on(remote.backend.store().head(remote.key())).map_err(|e| storage_error("cannot open", &url, &e))?;
        Ok(RemoteObject {
            remote: remote.clone(),
            size: meta.size,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn url(&self) -> String {
        self.remote.url()
    }

    /// Bytes `start..start + len` in one request.
    pub fn read_range(&self, start: u64, len: u64) -> Result<Bytes, FormatError> {
        let end = start.checked_add(len).filter(|&e| e <= self.size).ok_or_else(|| {
            FormatError::storage(
                "cannot read",
                self.url(),
                format!("bytes {start}..+{len} are past the object's {} bytes", self.size),
            )
        })?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let bytes = block_on(self.remote.backend.store().get_range(self.remote.key(), start..end))
            .map_err(|e| storage_error("cannot read", &self.url(), &e))?;
        if bytes.len() as u64 != len {
            return Err(FormatError::storage(
                "cannot read",
                self.url(),
                format!("asked for {len} bytes at {start}, got {}", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// Fills `dst` with the bytes from `start` on, in parallel ranged
    /// reads of [`READ_CHUNK`] bytes, [`READ_CONCURRENCY`] at a time, each
    /// copied into its place as it arrives; `on_bytes` hears each finished
    /// chunk's length (from the calling thread).
    pub fn read_into(
        &self,
        start: u64,
        dst: &mut [u8],
        on_bytes: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), FormatError> {
        if start.checked_add(dst.len() as u64).is_none_or(|e| e > self.size) {
            return Err(FormatError::storage(
                "cannot read",
                self.url(),
                format!(
                    "bytes {start}..+{} are past the object's {} bytes",
                    dst.len(),
                    self.size
                ),
            ));
        }
        let url = self.url();
        let store = self.remote.backend.store();
        let key = self.remote.key();
        let mut reads: Vec<futures::future::BoxFuture<'_, Result<u64, FormatError>>> = Vec::new();
        for (i, chunk) in dst.chunks_mut(READ_CHUNK).enumerate() {
            let from = start + (i * READ_CHUNK) as u64;
            let url = &url;
            reads.push(Box::pin(async move {
                let to = from + chunk.len() as u64;
                let bytes = store
                    .get_range(key, from..to)
                    .await
                    .map_err(|e| storage_error("cannot read", url, &e))?;
                if bytes.len() != chunk.len() {
                    return Err(FormatError::storage(
                        "cannot read",
                        url.as_str(),
                        format!("asked for {} bytes at {from}, got {}", chunk.len(), bytes.len()),
                    ));
                }
                chunk.copy_from_slice(&bytes);
                Ok(chunk.len() as u64)
            }));
        }
        block_on(async {
            let mut done = futures::stream::iter(reads).buffer_unordered(READ_CONCURRENCY);
            while let Some(n) = done.try_next().await? {
                on_bytes(n);
            }
            Ok(())
        })
    }
}

/// The outcome of a conditional write of a small object.
#[derive(Debug)]
pub enum Conditional {
    /// Written; the new ETag.
    Written(Option<String>),
    /// The condition failed: the object exists (create-only) or changed
    /// (if-match).
    Refused,
}

impl Remote {
    /// The objects directly under this prefix (not in "subdirectories").
    pub fn list(&self) -> Result<Vec<ListedObject>, FormatError> {
        let url = self.url();
        let listed = block_on(self.backend.store().list_with_delimiter(Some(self.key())))
            .map_err(|e| storage_error("cannot list", &url, &e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|o| {
                Some(ListedObject {
                    name: o.location.filename()?.to_owned(),
                    size: o.size,
                })
            })
            .collect())
    }

    /// Deletes the object (a missing one is not an error).
    pub fn delete(&self) -> Result<(), FormatError> {
        match block_on(self.backend.store().delete(self.key())) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_error("cannot delete", &self.url(), &e)),
        }
    }

    /// The object's bytes and ETag, or `None` when it does not exist.
    pub fn get(&self) -> Result<Option<(Bytes, Option<String>)>, FormatError> {
        let url = self.url();
        block_on(async {
            match self.backend.store().get(self.key()).await {
                Ok(got) => {
                    let etag = got.meta.e_tag.clone();
                    let bytes = got.bytes().await.map_err(|e| storage_error("cannot read", &url, &e))?;
                    Ok(Some((bytes, etag)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(storage_error("cannot read", &url, &e)),
            }
        })
    }

    /// Writes a small object: unconditionally, only if none exists
    /// (`if_match: None` with `create: true`), or only if its ETag is still
    /// `if_match`.
    pub fn put(&self, bytes: Vec<u8>, create: bool, if_match: Option<&str>) -> Result<Conditional, FormatError> {
        let mode = match (create, if_match) {
            (true, _) => PutMode::Create,
            (false, Some(etag)) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag.to_owned()),
                version: None,
            }),
            (false, None) => PutMode::Overwrite,
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match block_on(self.backend.store().put_opts(self.key(), PutPayload::from(bytes), opts)) {
            Ok(r) => Ok(Conditional::Written(r.e_tag)),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Conditional::Refused)
            }
            Err(e) => Err(storage_error("cannot write", &self.url(), &e)),
        }
    }
}

impl Remote {
    /// Whether an object has this name (one HEAD request).
    pub fn exists(&self) -> Result<bool, FormatError> {
        match block_on(self.backend.store().head(self.key())) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage_error("cannot look up", &self.url(), &e)),
        }
    }
}
