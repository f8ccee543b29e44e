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
/// a failure nothing is left behind, after success the published name is a
/// second link to the same file.
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
    struct Prepared<'m, 'a> {
        header: Vec<u8>,
        order: Vec<usize>,
        sizes: Vec<usize>,
        member: &'m TensorMember<'a>,
    }
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
    let werr = |e: std::io::Error| FormatError::io("cannot write", &tmp_path, e);
    let tracker = Tracker::maybe(options.progress.as_ref(), file_size);
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let mut put = |bytes: &[u8]| -> Result<(), FormatError> {
        out.write_all(bytes).map_err(werr)?;
        tracker.advance(bytes.len() as u64);
        Ok(())
    };
    put(&plan[0].local_header(dos_time, dos_date))?;
    put(&metadata_bytes)?;
    for (p, planned) in prepared.iter().zip(plan.iter_mut().skip(1)) {
        put(&planned.local_header(dos_time, dos_date))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&p.header);
        put(&p.header)?;
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
                put(chunk)?;
            }
        }
        planned.crc = crc.finalize();
    }
    out.flush().map_err(werr)?;
    drop(out);
    // The CRCs of tensor members are known only now: patch them in place.
    for planned in &plan[1..] {
        file.write_all_at(&planned.crc.to_le_bytes(), planned.crc_field_offset())
            .map_err(werr)?;
    }
    let mut tail = Vec::new();
    for planned in &plan {
        tail.extend_from_slice(&planned.central_header(dos_time, dos_date));
    }
    debug_assert_eq!(tail.len() as u64, cd_size);
    tail.extend_from_slice(&end_records(plan.len() as u64, cd_offset, cd_size, force));
    debug_assert_eq!(cd_offset + tail.len() as u64, file_size);
    file.write_all_at(&tail, cd_offset).map_err(werr)?;
    tracker.advance(tail.len() as u64);
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

/// Gives the finished temporary file its final name without ever replacing
/// an existing file: `link(2)` fails atomically when the name is taken.
fn publish(tmp: &Path, dir: &Path, stem: &str) -> Result<PathBuf, FormatError> {
    for n in 0..10_000u32 {
        let name = if n == 0 {
            format!("{stem}.zip")
        } else {
            format!("{stem}-{n}.zip")
        };
        let target = dir.join(name);
        match std::fs::hard_link(tmp, &target) {
            Ok(()) => return Ok(target),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(FormatError::io("cannot publish", target, e)),
        }
    }
    Err(FormatError::InvalidInput(format!(
        "10000 files named {stem}-N.zip already exist in {}",
        dir.display()
    )))
}
