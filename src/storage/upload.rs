//! Streaming a file into an object store as a multipart upload, with
//! bounded memory, published create-only: it never replaces an object,
//! also when two writers race for one name, and a writer killed midway
//! leaves no object under the final name (an unfinished multipart upload
//! is not an object; stores drop it after their lifecycle rules).
//!
//! The writer patches each member's CRC-32 into its local header once the
//! member's data is written. A part holding a CRC field not yet patched is
//! held back (it is never sent unpatched); every other part is sent as
//! soon as it is full, at most [`IN_FLIGHT`] at a time.
//!
//! Publishing, S3: the parts are uploaded to the final key and the upload
//! is completed with `If-None-Match: *`; the store refuses the completion
//! (412) when the name exists, and the upload is aborted. object_store has
//! no call for that completion, so it is sent as a request presigned by
//! object_store's own signer. Other stores (gs://, az://): the parts go to
//! a temporary key beside the final one (`.{name}.{random}.partial`),
//! which is then copied to the final key with the store's create-only copy
//! and deleted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{CopyMode, CopyOptions, MultipartId, ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::object::storage_error;
use super::runtime::{block_on, spawn};
use super::store::{Backend, Remote};
use crate::format::FormatError;

/// The smallest part; every part but the last must be at least 5 MiB.
const MIN_PART: u64 = 16 << 20;
/// Parts per upload at most (S3 allows 10,000).
const MAX_PARTS: u64 = 9_000;
/// Parts sent at once; with the part being filled and at most one held
/// part, the memory of an upload is bounded by (IN_FLIGHT + 2) parts.
const IN_FLIGHT: usize = 4;
/// How long the presigned completion request stays valid.
const COMPLETE_URL_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A part that is full but holds a CRC field not yet patched.
struct Held {
    index: usize,
    start: u64,
    bytes: Vec<u8>,
}

pub(crate) struct MultipartSink {
    target: Remote,
    /// Where the parts go: the final key (S3) or a temporary one.
    upload_key: ObjectPath,
    id: MultipartId,
    multipart: Arc<dyn MultipartStore>,
    part_size: u64,
    /// The part being filled, and its first byte's offset and index.
    current: Vec<u8>,
    current_start: u64,
    current_index: usize,
    held: Vec<Held>,
    /// Offsets of 4-byte fields that will be patched.
    pending: BTreeSet<u64>,
    sending: Vec<JoinHandle<Result<(usize, PartId), FormatError>>>,
    parts: Vec<Option<PartId>>,
    done: bool,
}

impl MultipartSink {
    /// Starts an upload of a `total`-byte file to `target`, whose 4-byte
    /// fields at `patches` will be patched after they are written.
    pub(crate) fn begin(target: &Remote, total: u64, patches: &[u64]) -> Result<MultipartSink, FormatError> {
        let url = target.url();
        let upload_key = match &target.backend {
            Backend::S3(_) => target.key().clone(),
            Backend::Other { .. } => {
                let name = target.file_name().unwrap_or_default();
                let temp = format!(".{name}.{:016x}.partial", rand_u64());
                parent_of(target.key()).join(temp.as_str())
            }
        };
        let multipart = target.backend.multipart();
        let id =
            block_on(multipart.create_multipart(&upload_key)).map_err(|e| storage_error("cannot upload", &url, &e))?;
        let part_size = MIN_PART.max(total.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
        Ok(MultipartSink {
            target: target.clone(),
            upload_key,
            id,
            multipart,
            part_size,
            current: Vec::with_capacity(part_size.min(total) as usize),
            current_start: 0,
            current_index: 0,
            held: Vec::new(),
            pending: patches.iter().copied().collect(),
            sending: Vec::new(),
            parts: Vec::new(),
            done: false,
        })
    }

    /// Appends bytes, sending each part that fills (or holding it).
    pub(crate) fn write(&mut self, mut bytes: &[u8]) -> Result<(), FormatError> {
        while !bytes.is_empty() {
            let room = (self.part_size as usize) - self.current.len();
            let n = room.min(bytes.len());
            self.current.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.current.len() as u64 == self.part_size {
                self.close_current()?;
            }
        }
        Ok(())
    }

    /// Overwrites 4 bytes at `offset`, which must be one of the announced
    /// patch offsets, written already (held or in the current part; the
    /// field may straddle two parts).
    pub(crate) fn patch(&mut self, offset: u64, bytes: [u8; 4]) -> Result<(), FormatError> {
        if !self.pending.remove(&offset) {
            return Err(FormatError::InvalidInput(format!(
                "patch at {offset} was not announced"
            )));
        }
        for (i, &b) in bytes.iter().enumerate() {
            let at = offset + i as u64;
            let end = self.current_start + self.current.len() as u64;
            if (self.current_start..end).contains(&at) {
                self.current[(at - self.current_start) as usize] = b;
            } else if let Some(h) = self
                .held
                .iter_mut()
                .find(|h| (h.start..h.start + h.bytes.len() as u64).contains(&at))
            {
                h.bytes[(at - h.start) as usize] = b;
            } else {
                return Err(FormatError::InvalidInput(format!(
                    "patch at {offset}: byte {at} is not written yet or already sent"
                )));
            }
        }
        // Send every held part that no unpatched field touches any more.
        let mut i = 0;
        while i < self.held.len() {
            let (start, len) = (self.held[i].start, self.held[i].bytes.len() as u64);
            if self.has_pending(start, len) {
                i += 1;
            } else {
                let held = self.held.remove(i);
                self.send(held.index, held.bytes)?;
            }
        }
        Ok(())
    }

    fn has_pending(&self, start: u64, len: u64) -> bool {
        self.pending
            .range(start.saturating_sub(3)..start + len)
            .next()
            .is_some()
    }

    fn close_current(&mut self) -> Result<(), FormatError> {
        let len = self.current.len() as u64;
        let bytes = std::mem::replace(&mut self.current, Vec::with_capacity(self.part_size as usize));
        let (index, start) = (self.current_index, self.current_start);
        self.current_index += 1;
        self.current_start += len;
        if self.has_pending(start, len) {
            self.held.push(Held { index, start, bytes });
            Ok(())
        } else {
            self.send(index, bytes)
        }
    }

    fn send(&mut self, index: usize, bytes: Vec<u8>) -> Result<(), FormatError> {
        while self.sending.len() >= IN_FLIGHT {
            let oldest = self.sending.remove(0);
            self.collect(oldest)?;
        }
        crate::fault::point("upload.part");
        let multipart = self.multipart.clone();
        let (key, id, url) = (self.upload_key.clone(), self.id.clone(), self.target.url());
        self.sending.push(spawn(async move {
            let part = multipart
                .put_part(&key, &id, index, PutPayload::from(bytes))
                .await
                .map_err(|e| storage_error("cannot upload", &url, &e))?;
            Ok((index, part))
        }));
        Ok(())
    }

    fn collect(&mut self, handle: JoinHandle<Result<(usize, PartId), FormatError>>) -> Result<(), FormatError> {
        let (index, part) =
            block_on(handle).map_err(|e| FormatError::storage("cannot upload", self.target.url(), e))??;
        if self.parts.len() <= index {
            self.parts.resize(index + 1, None);
        }
        self.parts[index] = Some(part);
        Ok(())
    }

    /// Sends what is left and publishes the object under its name, only if
    /// no object has it.
    pub(crate) fn finish(mut self) -> Result<(), FormatError> {
        if let Some(offset) = self.pending.first() {
            return Err(FormatError::InvalidInput(format!(
                "field at {offset} was never patched"
            )));
        }
        if !self.current.is_empty() || self.current_index == 0 {
            self.close_current()?;
        }
        for held in std::mem::take(&mut self.held) {
            self.send(held.index, held.bytes)?;
        }
        for handle in std::mem::take(&mut self.sending) {
            self.collect(handle)?;
        }
        let parts: Vec<PartId> = self
            .parts
            .iter()
            .cloned()
            .map(|p| p.expect("every part sent"))
            .collect();
        let url = self.target.url();
        crate::fault::point("upload.complete");
        let published = match &self.target.backend {
            Backend::S3(s3) => block_on(complete_create_only(s3, &self.upload_key, &self.id, &parts, &url)),
            Backend::Other { store, .. } => block_on(async {
                self.multipart
                    .complete_multipart(&self.upload_key, &self.id, parts)
                    .await
                    .map_err(|e| storage_error("cannot upload", &url, &e))?;
                let copy = store
                    .copy_opts(
                        &self.upload_key,
                        self.target.key(),
                        CopyOptions {
                            mode: CopyMode::Create,
                            ..CopyOptions::default()
                        },
                    )
                    .await;
                let _ = store.delete(&self.upload_key).await;
                copy.map_err(|e| match e {
                    object_store::Error::AlreadyExists { .. } => taken(&url),
                    e => storage_error("cannot publish", &url, &e),
                })
            }),
        };
        self.done = true;
        if published.is_err() {
            self.abort();
        }
        published
    }

    fn abort(&self) {
        let _ = block_on(self.multipart.abort_multipart(&self.upload_key, &self.id));
    }
}

impl Drop for MultipartSink {
    /// A write that failed (or panicked) aborts its upload, so that nothing
    /// is left to bill or to complete.
    fn drop(&mut self) {
        if !self.done {
            for handle in self.sending.drain(..) {
                handle.abort();
            }
            self.abort();
        }
    }
}

fn taken(url: &str) -> FormatError {
    FormatError::storage(
        "cannot publish",
        url,
        "another writer published an object under this name first; nothing was replaced",
    )
}

fn parent_of(key: &ObjectPath) -> ObjectPath {
    let parts: Vec<_> = key.parts().collect();
    ObjectPath::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// CompleteMultipartUpload with `If-None-Match: *`, presigned by the
/// store's signer (the credentials, region and endpoint it was built
/// with) and sent by a plain HTTP client.
async fn complete_create_only(
    s3: &object_store::aws::AmazonS3,
    key: &ObjectPath,
    id: &MultipartId,
    parts: &[PartId],
    url: &str,
) -> Result<(), FormatError> {
    use http::header::IF_NONE_MATCH;
    use object_store::HeaderValue;
    let fail = |reason: String| FormatError::storage("cannot publish", url, reason);
    let options = SignedUrlOptions::default()
        .with_query([("uploadId", id.as_str())])
        .with_signed_header(IF_NONE_MATCH, HeaderValue::from_static("*"));
    let signed = s3
        .signed_url_opts(http::Method::POST, key, COMPLETE_URL_LIFETIME, &options)
        .await
        .map_err(|e| fail(super::object::reason(&e)))?;
    let mut body = String::from("<CompleteMultipartUpload>");
    for (i, part) in parts.iter().enumerate() {
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            i + 1,
            xml_escape(&part.content_id)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    let client = reqwest::Client::builder()
        .connect_timeout(super::limits::CONNECT_TIMEOUT)
        .timeout(super::limits::REQUEST_TIMEOUT)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let response = client
        .post(signed)
        .header("If-None-Match", "*")
        .header("Content-Type", "application/xml")
        .body(body)
        .send()
        .await
        .map_err(|e| fail(super::object::reason(&e)))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match status.as_u16() {
        // S3 may answer 200 and report an error in the body.
        200 if !text.contains("<Error>") => Ok(()),
        412 => Err(taken(url)),
        // Another completion of the same name is in progress.
        409 if text.contains("ConditionalRequestConflict") => Err(taken(url)),
        _ => Err(fail(format!(
            "CompleteMultipartUpload answered {status}: {}",
            text.trim()
        ))),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    use super::*;

    /// The temporary-key design of stores without a conditional completion
    /// (gs://, az://), on object_store's in-memory store: the bytes arrive
    /// whole with the patch applied, a taken name is refused, and no
    /// temporary key is left either way.
    #[test]
    fn other_stores_publish_through_a_temporary_key_and_a_create_only_copy() {
        let target = Remote::in_store(InMemory::new(), "mem://bucket", "runs/a.zip");
        let total = 40 << 20;
        let write = |fill: u8| {
            let mut sink = MultipartSink::begin(&target, total, &[8]).unwrap();
            sink.write(&[0u8; 16]).unwrap();
            sink.write(&vec![fill; (total - 16) as usize]).unwrap();
            sink.patch(8, [1, 2, 3, 4]).unwrap();
            sink.finish()
        };
        write(7).unwrap();
        let err = write(9).unwrap_err();
        assert_eq!(err.kind(), "Storage");
        assert!(err.to_string().contains("another writer"), "{err}");
        let store = target.backend.store();
        let got = block_on(async { store.get(target.key()).await.unwrap().bytes().await.unwrap() });
        assert_eq!(got.len() as u64, total);
        assert_eq!(&got[8..12], &[1, 2, 3, 4]);
        assert!(got[16..].iter().all(|&b| b == 7), "the first writer's bytes, untouched");
        let listed = block_on(store.list_with_delimiter(Some(&ObjectPath::from("runs")))).unwrap();
        let keys: Vec<String> = listed.objects.iter().map(|o| o.location.to_string()).collect();
        assert_eq!(keys, ["runs/a.zip"], "no temporary key is left");
    }

    /// A CRC field across a part boundary is held in both parts and
    /// patched in both.
    #[test]
    fn a_field_that_straddles_two_parts_is_patched_in_both() {
        let target = Remote::in_store(InMemory::new(), "mem://bucket", "b.zip");
        let total = MIN_PART * 2 + 100;
        let field = MIN_PART - 2;
        let mut sink = MultipartSink::begin(&target, total, &[field]).unwrap();
        sink.write(&vec![5u8; (MIN_PART + 10) as usize]).unwrap();
        sink.write(&vec![6u8; (total - MIN_PART - 10) as usize]).unwrap();
        assert_eq!(sink.held.len(), 2, "both full parts wait for the field");
        sink.patch(field, [1, 2, 3, 4]).unwrap();
        assert!(sink.held.is_empty());
        sink.finish().unwrap();
        let store = target.backend.store();
        let got = block_on(async { store.get(target.key()).await.unwrap().bytes().await.unwrap() });
        assert_eq!(got.len() as u64, total);
        assert_eq!(&got[field as usize..field as usize + 4], &[1, 2, 3, 4]);
        assert_eq!(got[field as usize - 1], 5);
        assert_eq!(got[field as usize + 4], 5);
    }
}
