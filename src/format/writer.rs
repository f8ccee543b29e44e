//! The streaming, atomic writer: tensor bytes go from their source to the
//! file one tensor at a time (never a whole-file buffer), into a temporary
//! file in the target directory that is fsynced and then published under a
//! name that no existing file has.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::metadata::{Metadata, MAX_METADATA_BYTES, RESERVED_KEYS};
use super::reader::check_extra_tensors;
use super::tensors::{build_header, dtype_size, Dtype};
use super::zip::{dos_time_date, end_records, PlannedMember};
use super::{FormatError, MemberName};
use crate::progress::{Progress, Tracker};

/// A large tensor is written, and its progress reported, this many bytes
/// at a time.
const REPORT_CHUNK: usize = 16 << 20;

/// One tensor to be written. `bytes` is called exactly once, when the
/// writer reaches the tensor, so a source may convert or copy lazily
/// (a GPU tensor is brought to the CPU one tensor at a time).
pub trait TensorSource {
    fn name(&self) -> &str;
    fn dtype(&self) -> Dtype;
    fn shape(&self) -> Vec<usize>;
    /// The tensor's elements in C order, little-endian.
    fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>>;
}

/// A tensor given as bytes (owned or borrowed): what a caller without tch
/// (C, Go, a tool) writes. The bytes are checked against dtype and shape
/// when the file is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BytesTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl TensorSource for BytesTensor<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
    fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(&self.data))
    }
}

/// The tensors of one safetensors member.
pub struct TensorMember<'a> {
    pub name: MemberName,
    pub tensors: Vec<&'a dyn TensorSource>,
}

/// Knobs that a normal caller leaves at their defaults.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Use ZIP64 records even where the sizes do not need them (tests the
    /// ZIP64 paths of readers without writing 4 GiB).
    pub force_zip64: bool,
    /// Hears the write's progress: the total is the whole file's size in
    /// bytes, known before the first byte is written; the count grows as
    /// bytes are written (per tensor, and per 16 MiB of a large one), and
    /// reaches the total once the file is published under its name.
    pub progress: Option<Progress>,
}

/// Removes the temporary name when the write ends, however it ends: after
/// a failure nothing is left behind; after success the published name is
/// a second link to the same file (or, where the file was renamed because
/// the filesystem has no hard links, the temporary name is gone already).
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a checkpoint into `dir` as `{stem}.zip`, or `{stem}-{n}.zip` with
/// the smallest n >= 1 that no existing file has, and returns its path.
///
/// `metadata` is written as [`Metadata::to_json`] serializes it, in its
/// `format_version` (version 1 only when the document needs nothing of
/// version 2: [`Metadata::check_version_features`]), and must pass that
/// version's schema: the writer parses the bytes it is about to write as
/// the reader will, before it creates any file. `members` are the
/// tensor members the metadata implies, in order.
pub fn write_checkpoint(
    dir: &Path,
    stem: &str,
    metadata: &Metadata,
    members: &[TensorMember<'_>],
    options: &WriteOptions,
) -> Result<PathBuf, FormatError> {
    metadata.check_version_features()?;
    if let Some(key) = metadata.user.keys().find(|k| RESERVED_KEYS.contains(&k.as_str())) {
        return Err(FormatError::InvalidInput(format!(
            "user metadata key {key:?} is reserved"
        )));
    }
    let metadata_bytes =
        serde_json::to_vec_pretty(&metadata.to_json()).map_err(|e| FormatError::InvalidInput(e.to_string()))?;
    if metadata_bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(FormatError::TooLarge {
            what: "metadata.json".into(),
            len: metadata_bytes.len() as u64,
            max: MAX_METADATA_BYTES,
        });
    }
    Metadata::parse(&metadata_bytes)?;
    let expected: Vec<MemberName> = metadata.members().into_iter().skip(1).collect();
    let given: Vec<MemberName> = members.iter().map(|m| m.name).collect();
    if expected != given {
        return Err(FormatError::InvalidInput(format!(
            "the metadata implies tensor members {expected:?}, given {given:?}"
        )));
    }
    if stem.is_empty() || stem.contains('/') || stem.starts_with('.') {
        return Err(FormatError::InvalidInput(format!("file name stem {stem:?}")));
    }

    // Plan the whole layout first: every size is known before a byte is written.
    let mut prepared = Vec::with_capacity(members.len());
    for m in members {
        let shapes: Vec<(String, Dtype, Vec<usize>)> = m
            .tensors
            .iter()
            .map(|t| (t.name().to_owned(), t.dtype(), t.shape()))
            .collect();
        let (header, order) = build_header(m.name.as_str(), &shapes)?;
        if m.name == MemberName::Extra {
            let names: Vec<&str> = order.iter().map(|&i| shapes[i].0.as_str()).collect();
            check_extra_tensors(m.name.as_str(), metadata, &names)?;
        }
        let sizes = shapes
            .iter()
            .map(|(_, d, s)| s.iter().product::<usize>() * dtype_size(*d))
            .collect();
        prepared.push(Prepared {
            header,
            order,
            sizes,
            member: m,
        });
    }
    let force = options.force_zip64;
    let mut plan = Vec::with_capacity(1 + members.len());
    let mut meta_plan = PlannedMember::plan(MemberName::Metadata.as_str(), 0, metadata_bytes.len() as u64, force);
    meta_plan.crc = crc32fast::hash(&metadata_bytes);
    plan.push(meta_plan);
    for p in &prepared {
        let size = p.header.len() as u64 + p.sizes.iter().map(|&s| s as u64).sum::<u64>();
        let offset = plan.last().expect("metadata planned").end();
        plan.push(PlannedMember::plan(p.member.name.as_str(), offset, size, force));
    }

    // The central directory's and end records' sizes do not depend on the
    // CRCs patched in later: the file's size is known now.
    let (dos_time, dos_date) = dos_time_date(metadata.timestamp);
    let cd_offset = plan.last().expect("members planned").end();
    let cd_size: u64 = plan
        .iter()
        .map(|p| p.central_header(dos_time, dos_date).len() as u64)
        .sum();
    let file_size = cd_offset + cd_size + end_records(plan.len() as u64, cd_offset, cd_size, force).len() as u64;

    let layout = Layout {
        plan,
        prepared,
        metadata_bytes: &metadata_bytes,
        dos_time,
        dos_date,
        cd_offset,
        cd_size,
        file_size,
        force,
    };
    match crate::storage::Location::parse(dir)? {
        crate::storage::Location::Local(dir) => write_local(&dir, stem, layout, options),
        crate::storage::Location::Remote(remote) => write_remote(&remote, stem, layout, options),
    }
}

/// A member planned for writing: its safetensors header, the order its
/// tensors are written in and their byte sizes.
struct Prepared<'m, 'a> {
    header: Vec<u8>,
    order: Vec<usize>,
    sizes: Vec<usize>,
    member: &'m TensorMember<'a>,
}

/// Everything about the file that is known before its first byte.
struct Layout<'m, 'a, 'b> {
    plan: Vec<PlannedMember>,
    prepared: Vec<Prepared<'m, 'a>>,
    metadata_bytes: &'b [u8],
    dos_time: u16,
    dos_date: u16,
    cd_offset: u64,
    cd_size: u64,
    file_size: u64,
    force: bool,
}

/// Where the bytes of a file go, in order; `patch` overwrites a CRC field
/// written earlier, once its member is complete.
trait Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), FormatError>;
    fn patch(&mut self, offset: u64, crc: [u8; 4]) -> Result<(), FormatError>;
}

/// A local temporary file.
struct FileSink<'f> {
    out: BufWriter<&'f File>,
    path: &'f Path,
}

impl Sink for FileSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.out
            .write_all(bytes)
            .map_err(|e| FormatError::io("cannot write", self.path, e))
    }

    fn patch(&mut self, offset: u64, crc: [u8; 4]) -> Result<(), FormatError> {
        let werr = |e| FormatError::io("cannot write", self.path, e);
        self.out.flush().map_err(werr)?;
        self.out.get_ref().write_all_at(&crc, offset).map_err(werr)
    }
}

impl Sink for crate::storage::MultipartSink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        crate::storage::MultipartSink::write(self, bytes)
    }

    fn patch(&mut self, offset: u64, crc: [u8; 4]) -> Result<(), FormatError> {
        crate::storage::MultipartSink::patch(self, offset, crc)
    }
}

/// Streams the whole file into `sink`: each member's local header and
/// data, its CRC patched in as soon as the member ends, then the central
/// directory and end records.
fn stream(sink: &mut dyn Sink, mut layout: Layout<'_, '_, '_>, tracker: &Tracker) -> Result<(), FormatError> {
    let (dos_time, dos_date) = (layout.dos_time, layout.dos_date);
    let put = |sink: &mut dyn Sink, bytes: &[u8]| -> Result<(), FormatError> {
        sink.write(bytes)?;
        tracker.advance(bytes.len() as u64);
        Ok(())
    };
    put(sink, &layout.plan[0].local_header(dos_time, dos_date))?;
    put(sink, layout.metadata_bytes)?;
    for (p, planned) in layout.prepared.iter().zip(layout.plan.iter_mut().skip(1)) {
        put(sink, &planned.local_header(dos_time, dos_date))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&p.header);
        put(sink, &p.header)?;
        for &i in &p.order {
            let src = p.member.tensors[i];
            let bytes = src
                .bytes()
                .map_err(|e| FormatError::io("cannot read tensor data for", src.name(), e))?;
            if bytes.len() != p.sizes[i] {
                return Err(FormatError::InvalidInput(format!(
                    "tensor {:?} gave {} bytes, its dtype and shape need {}",
                    src.name(),
                    bytes.len(),
                    p.sizes[i]
                )));
            }
            crc.update(&bytes);
            crate::fault::point("write.data");
            for chunk in bytes.chunks(REPORT_CHUNK) {
                put(sink, chunk)?;
            }
        }
        planned.crc = crc.finalize();
        sink.patch(planned.crc_field_offset(), planned.crc.to_le_bytes())?;
    }
    let mut tail = Vec::new();
    for planned in &layout.plan {
        tail.extend_from_slice(&planned.central_header(dos_time, dos_date));
    }
    debug_assert_eq!(tail.len() as u64, layout.cd_size);
    tail.extend_from_slice(&end_records(
        layout.plan.len() as u64,
        layout.cd_offset,
        layout.cd_size,
        layout.force,
    ));
    debug_assert_eq!(layout.cd_offset + tail.len() as u64, layout.file_size);
    put(sink, &tail)
}

/// Section 8: a temporary file in `dir`, fsynced, published under a free
/// name, the directory fsynced.
fn write_local(
    dir: &Path,
    stem: &str,
    layout: Layout<'_, '_, '_>,
    options: &WriteOptions,
) -> Result<PathBuf, FormatError> {
    let dir_meta = std::fs::metadata(dir).map_err(|e| FormatError::io("cannot use directory", dir, e))?;
    if !dir_meta.is_dir() {
        return Err(FormatError::io(
            "cannot use directory",
            dir,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let tmp_path = dir.join(format!(
        ".{stem}.zip.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(|e| FormatError::io("cannot create", &tmp_path, e))?;
    let tmp = TempFile { path: tmp_path.clone() };
    let tracker = Tracker::maybe(options.progress.as_ref(), layout.file_size);
    let mut sink = FileSink {
        out: BufWriter::with_capacity(1 << 20, &file),
        path: &tmp_path,
    };
    stream(&mut sink, layout, &tracker)?;
    sink.out
        .flush()
        .map_err(|e| FormatError::io("cannot write", &tmp_path, e))?;
    drop(sink);
    crate::fault::point("write.fsync");
    file.sync_all()
        .map_err(|e| FormatError::io("cannot fsync", &tmp_path, e))?;
    drop(file);

    crate::fault::point("write.link");
    let path = publish(&tmp_path, dir, stem)?;
    drop(tmp);
    crate::fault::point("write.dir_fsync");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FormatError::io("cannot fsync directory", dir, e))?;
    tracker.finish();
    Ok(path)
}

/// An object store: the first name no object has, streamed there as a
/// multipart upload that completes only if the name is still free
/// (src/storage/upload.rs). Returns the object's URL.
fn write_remote(
    dir: &crate::storage::Remote,
    stem: &str,
    layout: Layout<'_, '_, '_>,
    options: &WriteOptions,
) -> Result<PathBuf, FormatError> {
    let mut target = None;
    for n in 0..10_000u32 {
        let name = if n == 0 {
            format!("{stem}.zip")
        } else {
            format!("{stem}-{n}.zip")
        };
        let candidate = dir.join(&name);
        if !candidate.exists()? {
            target = Some(candidate);
            break;
        }
    }
    let target = target.ok_or_else(|| {
        FormatError::InvalidInput(format!(
            "10000 objects named {stem}-N.zip already exist in {}",
            dir.url()
        ))
    })?;
    let patches: Vec<u64> = layout.plan[1..].iter().map(|p| p.crc_field_offset()).collect();
    let tracker = Tracker::maybe(options.progress.as_ref(), layout.file_size);
    let mut sink = crate::storage::MultipartSink::begin(&target, layout.file_size, &patches)?;
    stream(&mut sink, layout, &tracker)?;
    sink.finish()?;
    tracker.finish();
    Ok(PathBuf::from(target.url()))
}

/// Gives the finished temporary file its final name without ever replacing
/// an existing file (`link(2)`, or `renameat2(RENAME_NOREPLACE)` where the
/// filesystem has no hard links): [`super::publish`].
fn publish(tmp: &Path, dir: &Path, stem: &str) -> Result<PathBuf, FormatError> {
    super::publish::publish_numbered(tmp, dir, stem)
}
