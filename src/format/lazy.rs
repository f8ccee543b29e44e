//! Reading a checkpoint a piece at a time: its structure, metadata and
//! tensor headers first (from an object store: a few ranged reads of the
//! tail, the local headers, `metadata.json` and the safetensors headers),
//! then single tensors on demand, each in one ranged read. For `inspect`,
//! for listing a directory of checkpoints, and for reading one tensor of
//! a large file without fetching the rest.
//!
//! What it checks: everything FORMAT.md section 9 checks except the CRC-32
//! of the safetensors members (which needs every byte); `metadata.json`'s
//! CRC is checked. A tensor read this way is not covered by a CRC; a full
//! [`Checkpoint::open`](super::Checkpoint::open) verifies every byte.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::metadata::{Metadata, MAX_METADATA_BYTES};
use super::reader::{check_members, parse_central, parse_locals, tensor_position, Member};
use super::tensors::{Dtype, TensorEntry};
use super::{FormatError, MemberName};
use crate::storage::{Location, RemoteObject};

/// The tail read first: the end records and central directory.
const TAIL_FETCH: u64 = 64 << 10;
/// Bytes read at each local header: the header, its padding and the
/// first bytes of the member (a safetensors member's header length).
const LOCAL_FETCH: u64 = 4 << 10;
/// A safetensors header longer than this is not read lazily (the crate's
/// own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

enum Source {
    File(File),
    Object(RemoteObject),
}

impl Source {
    fn len(&self, path: &Path) -> Result<u64, FormatError> {
        match self {
            Source::File(f) => Ok(f.metadata().map_err(|e| FormatError::io("cannot stat", path, e))?.len()),
            Source::Object(o) => Ok(o.size()),
        }
    }

    fn read(&self, path: &Path, start: u64, dst: &mut [u8]) -> Result<(), FormatError> {
        match self {
            Source::File(f) => f
                .read_exact_at(dst, start)
                .map_err(|e| FormatError::io("cannot read", path, e)),
            Source::Object(o) => o.read_into(start, dst, &mut |_| {}),
        }
    }
}

/// A checkpoint whose structure, metadata and tensor headers are read and
/// checked, and whose tensors are read one at a time.
pub struct LazyCheckpoint {
    path: PathBuf,
    source: Source,
    metadata: Metadata,
    members: Vec<Member>,
}

impl std::fmt::Debug for LazyCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyCheckpoint").field("path", &self.path).finish()
    }
}

impl LazyCheckpoint {
    /// Opens a local path or an object store URL. A file whose structure
    /// does not parse from the pieces read is reported as a full open
    /// reports it (the whole file is then read to tell exactly why).
    pub fn open(path: impl AsRef<Path>) -> Result<LazyCheckpoint, FormatError> {
        let path = path.as_ref().to_path_buf();
        let source = match Location::parse(&path)? {
            Location::Local(p) => {
                let kind = std::fs::metadata(&p).map_err(|e| FormatError::io("cannot open", &p, e))?;
                if !kind.is_file() {
                    let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
                    return Err(FormatError::io("cannot open", &p, e));
                }
                Source::File(File::open(&p).map_err(|e| FormatError::io("cannot open", &p, e))?)
            }
            Location::Remote(r) => Source::Object(RemoteObject::open(&r)?),
        };
        match Self::read_structure(&path, &source) {
            Ok((metadata, members)) => Ok(LazyCheckpoint {
                path,
                source,
                metadata,
                members,
            }),
            // The whole file tells which check fails, in the normative
            // order, as every reader reports it.
            Err(lazy) => Err(
                match super::Checkpoint::open_with(
                    &path,
                    super::ReadOptions {
                        verify: false,
                        progress: None,
                    },
                ) {
                    Err(full) => full,
                    Ok(_) => lazy,
                },
            ),
        }
    }

    fn read_structure(path: &Path, source: &Source) -> Result<(Metadata, Vec<Member>), FormatError> {
        let len = source.len(path)?;
        if len < super::zip::EOCD_LEN {
            return Err(FormatError::NoEndRecord { len });
        }
        let size = usize::try_from(len).map_err(|_| FormatError::TooLarge {
            what: "file".into(),
            len,
            max: usize::MAX as u64,
        })?;
        // Sparse: only the pieces read below are ever touched.
        let mut buf = MmapMut::map_anon(size).map_err(|e| FormatError::io("cannot allocate for", path, e))?;
        let fill = |buf: &mut MmapMut, start: u64, end: u64| -> Result<(), FormatError> {
            let end = end.min(len);
            if start < end {
                source.read(path, start, &mut buf[start as usize..end as usize])?;
            }
            Ok(())
        };
        fill(&mut buf, len.saturating_sub(TAIL_FETCH), len)?;
        let (central, cd_offset) = parse_central(&buf)?;
        if cd_offset < len.saturating_sub(TAIL_FETCH) {
            fill(&mut buf, cd_offset, len.saturating_sub(TAIL_FETCH))?;
        }
        for e in &central {
            fill(&mut buf, e.header_offset, e.header_offset.saturating_add(LOCAL_FETCH))?;
        }
        let layout = parse_locals(&buf, central, cd_offset)?;
        let (meta_entry, meta_start) = &layout[0];
        if meta_entry.size > MAX_METADATA_BYTES {
            return Err(FormatError::TooLarge {
                what: "metadata.json".into(),
                len: meta_entry.size,
                max: MAX_METADATA_BYTES,
            });
        }
        fill(&mut buf, *meta_start, meta_start + meta_entry.size)?;
        let meta_bytes = &buf[*meta_start as usize..(meta_start + meta_entry.size) as usize];
        let computed = crc32fast::hash(meta_bytes);
        if computed != meta_entry.crc {
            return Err(FormatError::CrcMismatch {
                member: meta_entry.name.clone(),
                start: *meta_start,
                end: meta_start + meta_entry.size,
                stored: meta_entry.crc,
                computed,
            });
        }
        let metadata = Metadata::parse(meta_bytes)?;
        for (e, start) in layout.iter().skip(1) {
            if e.size < 8 {
                continue; // reported by the member check below
            }
            fill(&mut buf, *start, start + 8)?;
            let n = u64::from_le_bytes(buf[*start as usize..*start as usize + 8].try_into().expect("8 bytes"));
            if n <= (e.size - 8).min(MAX_HEADER) {
                fill(&mut buf, start + 8, start + 8 + n)?;
            }
        }
        let members = check_members(&buf, &layout, &metadata)?;
        Ok((metadata, members))
    }

    /// The path or URL given to [`open`](Self::open).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The members in file order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The tensors of a member, ordered by data offset (empty if absent).
    pub fn tensors(&self, member: MemberName) -> &[TensorEntry] {
        self.members
            .iter()
            .find(|m| m.name == member)
            .map_or(&[], |m| &m.tensors)
    }

    /// Looks up one tensor.
    pub fn tensor(&self, member: MemberName, name: &str) -> Result<&TensorEntry, FormatError> {
        let i = tensor_position(&self.members, member, name)?;
        Ok(&self.tensors(member)[i])
    }

    /// Reads one tensor's bytes (one ranged read from an object store).
    /// `BOOL` bytes are checked as a full open checks them.
    pub fn read_tensor(&self, entry: &TensorEntry) -> Result<Vec<u8>, FormatError> {
        let mut bytes = vec![0u8; entry.byte_len() as usize];
        self.source.read(&self.path, entry.start, &mut bytes)?;
        if entry.dtype == Dtype::BOOL {
            if let Some(i) = bytes.iter().position(|&b| b > 1) {
                let member = self
                    .members
                    .iter()
                    .find(|m| m.data_start <= entry.start && entry.end <= m.data_start + m.size)
                    .map_or("tensor member", |m| m.name.as_str());
                return Err(FormatError::TensorData {
                    member: member.into(),
                    tensor: entry.name.clone(),
                    start: entry.start,
                    end: entry.end,
                    reason: format!("BOOL byte {} at element {i} is neither 0 nor 1", bytes[i]),
                });
            }
        }
        Ok(bytes)
    }
}
