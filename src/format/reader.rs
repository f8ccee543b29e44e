//! The validating reader. `Checkpoint::open` checks everything FORMAT.md
//! requires (layout, CRCs, schema, tensor headers) before it hands out a
//! single view; afterwards tensor bytes are available zero-copy from a
//! private (copy-on-write) mapping of the file, or copied straight into a
//! caller's buffer.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use super::metadata::{Metadata, MAX_METADATA_BYTES};
use super::tensors::{index_by_name, validate_member, TensorEntry};
use super::zip::*;
use super::{FormatError, MemberName};
use crate::progress::{Progress, Tracker};

/// More entries than this is not a pytorch-saver file; the bound keeps a hostile
/// entry count from driving the parser.
const MAX_ENTRIES: u64 = 16;
/// How far back from the end to look for a misplaced end record, to tell
/// trailing bytes from a truncated file.
const TAIL_SEARCH: u64 = (1 << 20) + 65_557;
/// The tail of an object fetched first: the end records and central
/// directory of any file this format writes fit in it.
const TAIL_FETCH: u64 = 64 << 10;
/// Chunk size for positioned reads.
const CHUNK: usize = 1 << 20;
/// Below this many bytes per thread, a CRC or a copy runs on one thread:
/// starting another costs more than it saves.
pub(crate) const MIN_BYTES_PER_THREAD: usize = 16 << 20;
/// At most this many threads check CRCs or copy tensor bytes.
const MAX_THREADS: usize = 8;
/// A CRC pass reports its progress per this many bytes of each thread's
/// part.
const REPORT_CHUNK: usize = 8 << 20;

/// How [`Checkpoint::open_with`] reads a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// Check the CRC-32 of every member (the default). Without it the
    /// CRC-32 of the safetensors members' bytes is not computed: for files
    /// that were verified when they were deployed (`pytorch-saver verify`).
    /// `metadata.json`'s CRC and the whole structure are always checked
    /// (FORMAT.md section 9).
    pub verify: bool,
    /// Hears the open's progress: the total is the bytes whose CRC-32 is
    /// checked (`metadata.json`, and every member with `verify`); the
    /// count grows as they are checked, on the worker threads of the
    /// parallel check too, and reaches the total once the file is valid.
    pub progress: Option<Progress>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            verify: true,
            progress: None,
        }
    }
}

/// The file's private, copy-on-write mapping, shared by every tensor that
/// points into it (the last one to go unmaps it). Writing through it
/// changes this process's pages only, never the file. Like any mapping,
/// it faults (SIGBUS) if another process truncates the file while it is
/// in use.
#[derive(Clone)]
pub struct PrivateMapping(Arc<MmapMut>);

impl std::fmt::Debug for PrivateMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateMapping").field("len", &self.0.len()).finish()
    }
}

impl PrivateMapping {
    /// The first byte of the mapping. Writes through it (and through
    /// pointers derived from it) stay private to this process; the caller
    /// must not write while a `&[u8]` view of the same bytes is in use.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.0.as_ptr().cast_mut()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops the whole pages inside bytes `start..end` from this process's
    /// mapping; the page cache keeps them and a later access faults them
    /// in again. Only for ranges that no tensor handed out points into
    /// and that nothing wrote to (a private page's changes would be lost).
    #[cfg(feature = "torch")]
    pub(crate) fn release(&self, start: usize, end: usize) {
        let page = page_size();
        let (first, last) = (start.next_multiple_of(page), end.min(self.len()) / page * page);
        if first < last {
            // SAFETY: whole pages inside the mapping that no one refers to
            // (the caller's contract); the result is advisory, so a
            // refusal only leaves the pages resident.
            let _ = unsafe {
                self.0
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
            };
        }
    }
}

/// Maps every page of `data` (part of a file mapping) in one call, as
/// reading them would one fault at a time: for a pass that reads them all.
/// Advisory: where the kernel refuses (before Linux 5.14), faults do it.
fn populate(data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let page = page_size();
    let start = data.as_ptr() as usize / page * page;
    let end = data.as_ptr() as usize + data.len();
    // SAFETY: the range covers pages of a live mapping (rounded down to
    // the page `data` starts in); MADV_POPULATE_READ only reads them in.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_READ) };
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// One member as the central directory and local header describe it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: MemberName,
    /// Absolute offset of the first data byte.
    pub data_start: u64,
    pub size: u64,
    pub crc: u32,
    /// For safetensors members: the tensors, ordered by data offset.
    pub tensors: Vec<TensorEntry>,
    index: HashMap<String, usize>,
}

/// A validated, open checkpoint file.
///
/// Tensor views borrow from a private, copy-on-write memory map of the
/// file. As with any mmap, another process truncating the file while it is
/// open makes later accesses fault; checkpoints are written once and never
/// modified in place.
pub struct Checkpoint {
    path: PathBuf,
    /// The file, for positioned reads; `None` when the bytes were fetched
    /// from an object store into memory.
    file: Option<File>,
    map: PrivateMapping,
    metadata: Metadata,
    members: Vec<Member>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

pub(super) struct CentralEntry {
    pub(super) name: String,
    flags: u16,
    method: u16,
    pub(super) crc: u32,
    pub(super) size: u64,
    pub(super) header_offset: u64,
}

fn slice<'a>(buf: &'a [u8], start: u64, len: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], FormatError> {
    let end = start.saturating_add(len);
    if end > buf.len() as u64 {
        return Err(FormatError::Truncated {
            what: what(),
            start,
            end,
            len: buf.len() as u64,
        });
    }
    Ok(&buf[start as usize..end as usize])
}

fn expect_sig(b: &[u8], sig: u32, what: &'static str, offset: u64) -> Result<(), FormatError> {
    if le32(b, 0) != sig {
        return Err(FormatError::BadSignature { what, offset });
    }
    Ok(())
}

/// Reads the u64 fields of a ZIP64 extra block for each 32-bit field that
/// holds the 0xffffffff marker, in APPNOTE order.
fn zip64_fields(member: &str, extra: &[u8], wanted: &mut [&mut u64]) -> Result<(), FormatError> {
    let unsupported = |feature: String| FormatError::UnsupportedZip {
        member: member.into(),
        feature,
    };
    let mut p = 0usize;
    let mut found = None;
    while p < extra.len() {
        if p + 4 > extra.len() {
            return Err(unsupported("malformed extra field".into()));
        }
        let id = le16(extra, p);
        let n = le16(extra, p + 2) as usize;
        if p + 4 + n > extra.len() {
            return Err(unsupported("extra field block runs past its header".into()));
        }
        if id == ZIP64_EXTRA_ID {
            found = Some(&extra[p + 4..p + 4 + n]);
        }
        p += 4 + n;
    }
    let markers = wanted.iter().filter(|v| ***v == U32_MAX).count();
    if markers == 0 {
        return Ok(());
    }
    let block = found.ok_or_else(|| unsupported("0xffffffff size or offset without a ZIP64 extra field".into()))?;
    if block.len() < 8 * markers {
        return Err(unsupported("ZIP64 extra field too short".into()));
    }
    let mut at = 0;
    for v in wanted.iter_mut().filter(|v| ***v == U32_MAX) {
        **v = le64(block, at);
        at += 8;
    }
    Ok(())
}

impl Checkpoint {
    /// Opens and fully validates a checkpoint: ZIP layout, every CRC-32,
    /// `metadata.json` against its version's schema, every tensor header,
    /// and the extra state's tensors against its `tensor` tags.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        Self::open_with(path, ReadOptions::default())
    }

    /// [`open`](Self::open), with the CRC-32 of the tensor members checked
    /// or not as `options` say. CRCs are computed over the mapping, on
    /// several threads for large members.
    pub fn open_with(path: impl AsRef<Path>, options: ReadOptions) -> Result<Self, FormatError> {
        let (ckpt, tracker) = Self::open_tracked(path.as_ref(), options.verify, options.progress.as_ref(), |_| 0)?;
        tracker.finish();
        Ok(ckpt)
    }

    /// Opens as [`open_with`](Self::open_with) does, reporting to
    /// `progress` an operation whose total is the bytes CRC-checked plus
    /// `more(members)`: what the caller goes on to process, planned from
    /// the tensor data bytes of each tensor member (its size less the
    /// safetensors header its first 8 bytes announce). The returned
    /// tracker has counted the CRC-checked bytes; the caller advances it
    /// by the rest and finishes it when its whole operation succeeded.
    pub(crate) fn open_tracked(
        path: &Path,
        verify: bool,
        progress: Option<&Progress>,
        more: impl Fn(&[(MemberName, u64)]) -> u64,
    ) -> Result<(Self, Tracker), FormatError> {
        let path = path.to_path_buf();
        let (map, file, tracker) = match crate::storage::Location::parse(&path)? {
            crate::storage::Location::Local(local) => {
                let (map, file) = map_file(&local)?;
                (map, Some(file), None)
            }
            crate::storage::Location::Remote(remote) => {
                let (map, tracker) = fetch_object(&remote, verify, progress, &more)?;
                (map, None, Some(tracker))
            }
        };
        let buf: &[u8] = &map.0;

        let layout = parse_layout(buf)?;
        // metadata.json is always checked: it is parsed right below.
        let checked = |i: usize| i == 0 || verify;
        let crc_bytes: u64 = (0..layout.len())
            .filter(|&i| checked(i))
            .map(|i| layout[i].0.size)
            .sum();
        let data_lens: Vec<(MemberName, u64)> = layout
            .iter()
            .skip(1)
            .map(|(e, start)| {
                let name = MemberName::from_name(&e.name).expect("names checked by parse_layout");
                (name, tensor_data_len(buf, e, *start))
            })
            .collect();
        let tracker = match tracker {
            Some(t) => t,
            None => Tracker::maybe(progress, crc_bytes.saturating_add(more(&data_lens))),
        };
        for (i, (entry, data_start)) in layout.iter().enumerate() {
            if checked(i) {
                verify_crc(buf, entry, *data_start, &tracker)?;
            }
        }
        let (meta_entry, meta_start) = &layout[0];
        let metadata = Metadata::parse(&buf[*meta_start as usize..(*meta_start + meta_entry.size) as usize])?;
        let members = check_members(buf, &layout, &metadata)?;
        let ckpt = Checkpoint {
            path,
            file,
            map,
            metadata,
            members,
        };
        Ok((ckpt, tracker))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated `metadata.json`, typed; [`Metadata::to_json`] gives
    /// the JSON object.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The members in file order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, name: MemberName) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The tensors of a member, ordered by data offset (empty if absent).
    pub fn tensors(&self, member: MemberName) -> &[TensorEntry] {
        self.member(member).map_or(&[], |m| &m.tensors)
    }

    /// Looks up one tensor.
    pub fn tensor(&self, member: MemberName, name: &str) -> Result<&TensorEntry, FormatError> {
        let i = self.tensor_position(member, name)?;
        Ok(&self.tensors(member)[i])
    }

    /// The position of a tensor in [`tensors`](Self::tensors)`(member)`.
    pub fn tensor_position(&self, member: MemberName, name: &str) -> Result<usize, FormatError> {
        tensor_position(&self.members, member, name)
    }

    /// The tensor's bytes, zero-copy from the file's memory map.
    pub fn tensor_bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.map.0[entry.start as usize..entry.end as usize]
    }

    /// The file's private mapping, for tensors that point into it and
    /// outlive this value (a zero-copy load). Tensor `entry`'s bytes start
    /// at `as_mut_ptr() + entry.start`.
    pub fn private_mapping(&self) -> PrivateMapping {
        self.map.clone()
    }

    /// A whole safetensors member, parsed by the safetensors crate over the
    /// memory map (zero-copy).
    pub fn safetensors(&self, member: MemberName) -> Option<safetensors::SafeTensors<'_>> {
        let m = self.member(member)?;
        let bytes = &self.map.0[m.data_start as usize..(m.data_start + m.size) as usize];
        safetensors::SafeTensors::deserialize(bytes).ok()
    }

    /// Copies a tensor's bytes into `dst` with positioned reads, so that
    /// loading does not grow the process's resident set by the file's size
    /// the way touching the map would.
    pub fn read_tensor_into(&self, entry: &TensorEntry, dst: &mut [u8]) -> Result<(), FormatError> {
        if dst.len() as u64 != entry.byte_len() {
            return Err(FormatError::InvalidInput(format!(
                "tensor {:?} has {} bytes, the destination {}",
                entry.name,
                entry.byte_len(),
                dst.len()
            )));
        }
        let Some(file) = &self.file else {
            dst.copy_from_slice(self.tensor_bytes(entry));
            return Ok(());
        };
        let mut done = 0usize;
        while done < dst.len() {
            let n = (dst.len() - done).min(CHUNK * 64);
            file.read_exact_at(&mut dst[done..done + n], entry.start + done as u64)
                .map_err(|e| FormatError::io("cannot read", &self.path, e))?;
            done += n;
        }
        Ok(())
    }
}

/// The position of tensor `name` in `member`'s tensors, among `members`.
pub(super) fn tensor_position(members: &[Member], member: MemberName, name: &str) -> Result<usize, FormatError> {
    members
        .iter()
        .find(|m| m.name == member)
        .and_then(|m| m.index.get(name).copied())
        .ok_or_else(|| FormatError::TensorNotFound {
            member: member.as_str().into(),
            tensor: name.into(),
        })
}

/// Steps after the metadata is parsed: the members it implies are there
/// and no others, every tensor header is valid, the optimizer's tensor
/// names and the extra state's tensors match the metadata. `buf` must
/// hold every member's safetensors header (the tensor data is read only
/// for `BOOL` tensors, whose bytes must be 0 or 1).
pub(super) fn check_members(
    buf: &[u8],
    layout: &[(CentralEntry, u64)],
    metadata: &Metadata,
) -> Result<Vec<Member>, FormatError> {
    let expected = metadata.members();
    for m in &expected {
        if !layout.iter().any(|(e, _)| e.name == m.as_str()) {
            return Err(FormatError::MissingMember(m.as_str().into()));
        }
    }
    let mut members = Vec::with_capacity(layout.len());
    for (entry, data_start) in layout {
        let name = MemberName::from_name(&entry.name).expect("names checked by parse_layout");
        if !expected.contains(&name) {
            let why = match name {
                MemberName::Extra if metadata.format_version == 1 => "a version 1 file has no extra state",
                MemberName::Extra => "the metadata declares no extra state",
                _ => "the metadata declares no optimizer",
            };
            return Err(FormatError::UnexpectedMember(format!("{} ({why})", entry.name)));
        }
        let tensors = if name == MemberName::Metadata {
            Vec::new()
        } else {
            let bytes = &buf[*data_start as usize..(*data_start + entry.size) as usize];
            validate_member(&entry.name, *data_start, bytes)?
        };
        if let (MemberName::Optimizer, Some(optimizer)) = (name, &metadata.optimizer) {
            for t in &tensors {
                optimizer
                    .check_tensor_name(&t.name)
                    .map_err(|reason| FormatError::TensorHeader {
                        member: entry.name.clone(),
                        reason: format!("tensor {:?}: {reason}", t.name),
                    })?;
            }
        }
        if name == MemberName::Extra {
            let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            check_extra_tensors(&entry.name, metadata, &names)?;
        }
        members.push(Member {
            name,
            data_start: *data_start,
            size: entry.size,
            crc: entry.crc,
            index: index_by_name(&tensors),
            tensors,
        });
    }
    Ok(members)
}

/// Maps a local file privately, after checking that it is a regular
/// file of at least an end record's size.
fn map_file(path: &Path) -> Result<(PrivateMapping, File), FormatError> {
    // Opening a FIFO for reading would block: look before opening.
    let kind = std::fs::metadata(path).map_err(|e| FormatError::io("cannot open", path, e))?;
    if !kind.is_file() {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(FormatError::io("cannot open", path, e));
    }
    let file = File::open(path).map_err(|e| FormatError::io("cannot open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| FormatError::io("cannot stat", path, e))?
        .len();
    if len < EOCD_LEN {
        return Err(FormatError::NoEndRecord { len });
    }
    // SAFETY: a private mapping: writes through it never reach the
    // file, and this value hands out only shared views of it (see the
    // type's documentation on concurrent truncation).
    let map = unsafe { MmapOptions::new().map_copy(&file) }.map_err(|e| FormatError::io("cannot mmap", path, e))?;
    Ok((PrivateMapping(Arc::new(map)), file))
}

/// What a caller of an open plans to process after it, from the tensor
/// data bytes of each member (see `Checkpoint::open_tracked`).
type PlanMore<'a> = dyn Fn(&[(MemberName, u64)]) -> u64 + 'a;

/// The bytes of an object fetched into anonymous memory, which then backs
/// the checkpoint as a file's mapping does: the tail first (end records
/// and central directory), to plan the operation's progress, then the
/// whole object in parallel ranged reads. The tracker's total is the
/// object's size plus what a local open counts (the CRC-checked bytes and
/// `more`, planned from the members' sizes).
fn fetch_object(
    remote: &crate::storage::Remote,
    verify: bool,
    progress: Option<&Progress>,
    more: &PlanMore<'_>,
) -> Result<(PrivateMapping, Tracker), FormatError> {
    let object = crate::storage::RemoteObject::open(remote)?;
    let len = object.size();
    if len < EOCD_LEN {
        return Err(FormatError::NoEndRecord { len });
    }
    let size = usize::try_from(len).map_err(|_| FormatError::TooLarge {
        what: "object".into(),
        len,
        max: usize::MAX as u64,
    })?;
    let mut map = MmapMut::map_anon(size).map_err(|e| FormatError::storage("cannot allocate for", object.url(), e))?;
    let tail = len.min(TAIL_FETCH);
    object.read_into(len - tail, &mut map[(len - tail) as usize..], &mut |_| {})?;
    // A tail that does not parse is reported by the full check below, on
    // the whole object, exactly as for a local file.
    let planned = match parse_central(&map) {
        Ok((central, _)) => {
            let checked: u64 = central
                .iter()
                .enumerate()
                .filter(|(i, _)| *i == 0 || verify)
                .map(|(_, e)| e.size)
                .sum();
            let sizes: Vec<(MemberName, u64)> = central
                .iter()
                .skip(1)
                .filter_map(|e| Some((MemberName::from_name(&e.name)?, e.size)))
                .collect();
            checked.saturating_add(more(&sizes))
        }
        Err(_) => 0,
    };
    let tracker = Tracker::maybe(progress, len.saturating_add(planned));
    tracker.advance(tail);
    let head = (len - tail) as usize;
    object.read_into(0, &mut map[..head], &mut |n| tracker.advance(n))?;
    Ok((PrivateMapping(Arc::new(map)), tracker))
}

/// Step 21 (FORMAT.md 11.6): every tensor of `extra.safetensors`, in
/// data order, is named by a `tensor` tag of the extra state; then every
/// tag, in the order of step 16.14, names a tensor of the member. The
/// writer runs the same check on the tensors it is given.
pub(super) fn check_extra_tensors(member: &str, metadata: &Metadata, tensors: &[&str]) -> Result<(), FormatError> {
    let refs = metadata.extra_tensor_refs();
    let named: HashSet<&str> = refs.iter().map(|r| r.name.as_str()).collect();
    let header = |reason: String| FormatError::TensorHeader {
        member: member.into(),
        reason,
    };
    if let Some(t) = tensors.iter().find(|t| !named.contains(**t)) {
        return Err(header(format!(
            "tensor {t:?} is named by no \"tensor\" tag of the extra state"
        )));
    }
    let held: HashSet<&str> = tensors.iter().copied().collect();
    if let Some(r) = refs.iter().find(|r| !held.contains(r.name.as_str())) {
        return Err(header(format!(
            "the \"tensor\" tag at {} names tensor {:?}, which the member does not hold",
            r.path, r.name
        )));
    }
    Ok(())
}

/// The bytes of a tensor member's tensor data, as its header-length field
/// announces them (a wrong announcement fails validation later).
fn tensor_data_len(buf: &[u8], entry: &CentralEntry, data_start: u64) -> u64 {
    let announced = buf
        .get(data_start as usize..data_start as usize + 8)
        .filter(|_| entry.size >= 8)
        .map_or(0, |b| le64(b, 0));
    entry.size.saturating_sub(8).saturating_sub(announced)
}

fn verify_crc(buf: &[u8], entry: &CentralEntry, data_start: u64, tracker: &Tracker) -> Result<(), FormatError> {
    let data = &buf[data_start as usize..(data_start + entry.size) as usize];
    let computed = crc32_tracked(data, tracker);
    if computed != entry.crc {
        return Err(FormatError::CrcMismatch {
            member: entry.name.clone(),
            start: data_start,
            end: data_start + entry.size,
            stored: entry.crc,
            computed,
        });
    }
    Ok(())
}

/// How many threads to give `len` bytes of work.
pub(crate) fn threads_for(len: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (len / MIN_BYTES_PER_THREAD).clamp(1, cores.min(MAX_THREADS))
}

#[cfg(test)]
fn crc32(data: &[u8]) -> u32 {
    crc32_tracked(data, &Tracker::silent(data.len() as u64))
}

/// The CRC-32 of `data`, on several threads when it is large: each thread
/// hashes one contiguous part (SIMD, by crc32fast) and the parts' CRCs
/// are combined. `tracker` advances as each thread hashes its part.
fn crc32_tracked(data: &[u8], tracker: &Tracker) -> u32 {
    let hash_part = |part: &[u8]| {
        populate(part);
        let mut h = crc32fast::Hasher::new();
        for chunk in part.chunks(REPORT_CHUNK) {
            h.update(chunk);
            tracker.advance(chunk.len() as u64);
        }
        h
    };
    let threads = threads_for(data.len());
    if threads == 1 {
        return hash_part(data).finalize();
    }
    let part = data.len().div_ceil(threads);
    let hashers: Vec<crc32fast::Hasher> = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks(part)
            .map(|chunk| s.spawn(move || hash_part(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a CRC thread does not panic"))
            .collect()
    });
    let mut total = crc32fast::Hasher::new();
    for h in &hashers {
        total.combine(h);
    }
    total.finalize()
}

/// Parses and checks the ZIP structure: end records, central directory,
/// local headers, and that members tile the file from byte 0 to the
/// central directory with nothing in between. Returns the entries in file
/// order with the absolute offset of each one's data.
fn parse_layout(buf: &[u8]) -> Result<Vec<(CentralEntry, u64)>, FormatError> {
    let (central, cd_offset) = parse_central(buf)?;
    parse_locals(buf, central, cd_offset)
}

/// The end records and the central directory (all in the file's tail,
/// from the central directory's offset on): the entries, checked against
/// each other, in file order, and the central directory's offset.
pub(super) fn parse_central(buf: &[u8]) -> Result<(Vec<CentralEntry>, u64), FormatError> {
    let len = buf.len() as u64;
    let eocd_at = len - EOCD_LEN;
    if le32(buf, eocd_at as usize) != EOCD_SIG {
        return Err(explain_missing_end(buf));
    }
    let eocd = &buf[eocd_at as usize..];
    if le16(eocd, 4) != 0 || le16(eocd, 6) != 0 {
        return Err(FormatError::UnsupportedZip {
            member: "archive".into(),
            feature: "multiple disks".into(),
        });
    }
    if le16(eocd, 20) != 0 {
        return Err(FormatError::UnsupportedZip {
            member: "archive".into(),
            feature: "archive comment".into(),
        });
    }
    let mut entries = le16(eocd, 10) as u64;
    let entries_disk = le16(eocd, 8) as u64;
    let mut cd_size = le32(eocd, 12) as u64;
    let mut cd_offset = le32(eocd, 16) as u64;
    let mut cd_end = eocd_at;
    if entries == U16_MAX || cd_size == U32_MAX || cd_offset == U32_MAX {
        let loc_at = eocd_at
            .checked_sub(ZIP64_LOCATOR_LEN)
            .ok_or(FormatError::BadSignature {
                what: "ZIP64 end-of-central-directory locator",
                offset: 0,
            })?;
        let loc = &buf[loc_at as usize..eocd_at as usize];
        expect_sig(loc, ZIP64_LOCATOR_SIG, "ZIP64 end-of-central-directory locator", loc_at)?;
        let rec_at = le64(loc, 8);
        if Some(rec_at) != loc_at.checked_sub(ZIP64_EOCD_LEN) {
            return Err(FormatError::Layout(format!(
                "ZIP64 end record at byte {rec_at}, expected right before its locator at {loc_at}"
            )));
        }
        let rec = &buf[rec_at as usize..loc_at as usize];
        expect_sig(rec, ZIP64_EOCD_SIG, "ZIP64 end-of-central-directory record", rec_at)?;
        if le64(rec, 4) != ZIP64_EOCD_LEN - 12 || le32(rec, 16) != 0 || le32(rec, 20) != 0 || le32(loc, 4) != 0 {
            return Err(FormatError::UnsupportedZip {
                member: "archive".into(),
                feature: "ZIP64 extensible data or multiple disks".into(),
            });
        }
        if le64(rec, 24) != le64(rec, 32) {
            return Err(FormatError::Layout("ZIP64 entry counts disagree".into()));
        }
        entries = le64(rec, 32);
        cd_size = le64(rec, 40);
        cd_offset = le64(rec, 48);
        cd_end = rec_at;
    } else if entries != entries_disk {
        return Err(FormatError::Layout("entry counts disagree".into()));
    }
    if entries > MAX_ENTRIES {
        return Err(FormatError::TooLarge {
            what: "central directory entry count".into(),
            len: entries,
            max: MAX_ENTRIES,
        });
    }
    let cd_stop = cd_offset.checked_add(cd_size).filter(|&e| e <= cd_end).ok_or_else(|| {
        FormatError::Layout(format!(
            "central directory at {cd_offset} of {cd_size} bytes runs past the end records at {cd_end}"
        ))
    })?;
    if cd_stop != cd_end {
        return Err(FormatError::UnexpectedBytes {
            start: cd_stop,
            end: cd_end,
            what: "between the central directory and the end records".into(),
        });
    }

    let mut central = Vec::with_capacity(entries as usize);
    let mut p = cd_offset;
    for i in 0..entries {
        let what = || format!("central directory entry {i}");
        let h = slice(buf, p, CENTRAL_LEN, &what)?;
        if p + CENTRAL_LEN > cd_stop {
            return Err(FormatError::Layout(format!(
                "{} runs past the central directory",
                what()
            )));
        }
        expect_sig(h, CENTRAL_SIG, "central directory entry", p)?;
        let (nlen, xlen, clen) = (le16(h, 28) as u64, le16(h, 30) as u64, le16(h, 32) as u64);
        let var = slice(buf, p + CENTRAL_LEN, nlen + xlen + clen, &what)?;
        let name = String::from_utf8_lossy(&var[..nlen as usize]).into_owned();
        let mut csize = le32(h, 20) as u64;
        let mut usize_ = le32(h, 24) as u64;
        let mut offset = le32(h, 42) as u64;
        zip64_fields(
            &name,
            &var[nlen as usize..(nlen + xlen) as usize],
            &mut [&mut usize_, &mut csize, &mut offset],
        )?;
        if le16(h, 34) != 0 {
            return Err(FormatError::UnsupportedZip {
                member: name,
                feature: "multiple disks".into(),
            });
        }
        if csize != usize_ {
            return Err(FormatError::UnsupportedZip {
                member: name,
                feature: format!("compressed size {csize} differs from size {usize_}"),
            });
        }
        central.push(CentralEntry {
            flags: le16(h, 8),
            method: le16(h, 10),
            crc: le32(h, 16),
            size: usize_,
            header_offset: offset,
            name,
        });
        p += CENTRAL_LEN + nlen + xlen + clen;
    }
    if p != cd_stop {
        return Err(FormatError::UnexpectedBytes {
            start: p.min(cd_stop),
            end: cd_stop.max(p),
            what: "in the central directory after its last entry".into(),
        });
    }

    let mut seen = HashSet::new();
    let mut last_rank = None;
    for (position, e) in central.iter().enumerate() {
        let member = MemberName::from_name(&e.name).ok_or_else(|| FormatError::UnexpectedMember(e.name.clone()))?;
        if !seen.insert(member) {
            return Err(FormatError::DuplicateMember(e.name.clone()));
        }
        if e.method != 0 {
            return Err(FormatError::CompressedMember {
                member: e.name.clone(),
                method: e.method,
            });
        }
        if e.flags & FORBIDDEN_FLAGS != 0 {
            return Err(FormatError::UnsupportedZip {
                member: e.name.clone(),
                feature: format!("general purpose flags {:#06x} (encryption or data descriptor)", e.flags),
            });
        }
        let rank = MemberName::ALL.iter().position(|m| *m == member);
        if last_rank >= rank || (position == 0 && member != MemberName::Metadata) {
            return Err(FormatError::MemberOrder {
                member: e.name.clone(),
                position,
                expected: "metadata.json, model.safetensors, optimizer.safetensors, extra.safetensors".into(),
            });
        }
        last_rank = rank;
    }
    if central.is_empty() {
        return Err(FormatError::MissingMember(MemberName::Metadata.as_str().into()));
    }
    Ok((central, cd_offset))
}

/// The local headers of `central`'s entries, checked against them, and
/// that the members tile the file up to the central directory.
pub(super) fn parse_locals(
    buf: &[u8],
    central: Vec<CentralEntry>,
    cd_offset: u64,
) -> Result<Vec<(CentralEntry, u64)>, FormatError> {
    let mut out = Vec::with_capacity(central.len());
    let mut cursor = 0u64;
    for e in central {
        let at = e.header_offset;
        if at > cursor {
            return Err(FormatError::UnexpectedBytes {
                start: cursor,
                end: at,
                what: format!("before member {}, part of no member", e.name),
            });
        }
        if at < cursor {
            return Err(FormatError::Layout(format!(
                "member {} starts at byte {at}, inside the previous member (which ends at {cursor})",
                e.name
            )));
        }
        let what = || format!("local header of {}", e.name);
        let h = slice(buf, at, LOCAL_LEN, &what)?;
        expect_sig(h, LOCAL_SIG, "local file header", at)?;
        let (nlen, xlen) = (le16(h, 26) as u64, le16(h, 28) as u64);
        let var = slice(buf, at + LOCAL_LEN, nlen + xlen, &what)?;
        let mismatch = |field| FormatError::HeaderMismatch {
            member: e.name.clone(),
            field,
        };
        if &var[..nlen as usize] != e.name.as_bytes() {
            return Err(mismatch("name"));
        }
        if le16(h, 8) != e.method {
            return Err(mismatch("compression method"));
        }
        if le16(h, 6) != e.flags {
            return Err(mismatch("flags"));
        }
        if le32(h, 14) != e.crc {
            return Err(mismatch("CRC-32"));
        }
        let mut csize = le32(h, 18) as u64;
        let mut usize_ = le32(h, 22) as u64;
        zip64_fields(&e.name, &var[nlen as usize..], &mut [&mut usize_, &mut csize])?;
        if usize_ != e.size || csize != e.size {
            return Err(mismatch("size"));
        }
        let data_start = at + LOCAL_LEN + nlen + xlen;
        if data_start % ALIGNMENT != 0 {
            return Err(FormatError::Misaligned {
                member: e.name.clone(),
                offset: data_start,
            });
        }
        let data_end = data_start.saturating_add(e.size);
        if data_end > cd_offset {
            let what = || format!("data of {}", e.name);
            slice(buf, data_start, e.size, &what)?;
            return Err(FormatError::Layout(format!(
                "data of {} (bytes {data_start}..{data_end}) runs into the central directory at {cd_offset}",
                e.name
            )));
        }
        cursor = data_end;
        out.push((e, data_start));
    }
    if cursor != cd_offset {
        return Err(FormatError::UnexpectedBytes {
            start: cursor,
            end: cd_offset,
            what: "between the last member and the central directory".into(),
        });
    }
    if out[0].0.size > MAX_METADATA_BYTES {
        return Err(FormatError::TooLarge {
            what: "metadata.json".into(),
            len: out[0].0.size,
            max: MAX_METADATA_BYTES,
        });
    }
    Ok(out)
}

/// No end record at the very end: either something follows it (trailing
/// bytes or a comment), or the file is cut short or not a ZIP at all.
fn explain_missing_end(buf: &[u8]) -> FormatError {
    let len = buf.len() as u64;
    let lo = len.saturating_sub(TAIL_SEARCH) as usize;
    let hi = (len - EOCD_LEN) as usize;
    for p in (lo..hi).rev() {
        if le32(buf, p) == EOCD_SIG {
            let end = p as u64 + EOCD_LEN + le16(buf, p + 20) as u64;
            if end < len {
                return FormatError::TrailingBytes {
                    offset: end,
                    count: len - end,
                };
            }
            if end == len {
                return FormatError::UnsupportedZip {
                    member: "archive".into(),
                    feature: "archive comment".into(),
                };
            }
        }
    }
    FormatError::NoEndRecord { len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_crc_equals_one_pass() {
        // Large enough to be split whenever there are two cores.
        let data: Vec<u8> = (0..(3 * MIN_BYTES_PER_THREAD + 12_345))
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
            .collect();
        assert_eq!(crc32(&data), crc32fast::hash(&data));
        assert_eq!(crc32(&data[..7]), crc32fast::hash(&data[..7]));
        assert_eq!(crc32(&[]), 0);
    }
}
