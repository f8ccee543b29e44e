//! `torch.save` files: read without running any of their pickle.
//!
//! - The zip format (torch >= 1.6): `<prefix>/data.pkl` pickles the object,
//!   naming each storage by a persistent id whose key is the member
//!   `<prefix>/data/<key>` holding its bytes (stored, so a contiguous
//!   tensor is a range of the mapped file, not a copy).
//! - torch's legacy format (`_use_new_zipfile_serialization=False`, and a
//!   storage's pickled form in files of the original package): a magic
//!   number, a protocol version and system info pickles, the object's
//!   pickle, the list of storage keys, then each storage's element count
//!   (int64) and bytes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::pickle::{self, Arena, Context, ElementType, Obj, ObjId, Profile, Value};
use super::training_dict;
use super::{foreign, Contents, ForeignTensor, TensorBytes};
use crate::error::Result;
use crate::format::{dtype_size, Dtype, FormatError};

/// The magic number and protocol version of torch's legacy format.
const LEGACY_MAGIC: i128 = 0x1950A86A20F9469CFC6C;
const LEGACY_PROTOCOL_VERSION: i64 = 1001;
/// The start of a legacy-format file: protocol 2, then LONG1 of 10 bytes
/// (the magic number).
const LEGACY_START: &[u8] = b"\x80\x02\x8a\x0a";
/// Most bytes of `data.pkl` read into memory (its tensors are elsewhere).
const MAX_PICKLE_BYTES: u64 = 1 << 32;

/// Whether `path` is a `torch.save` ZIP archive: one top-level folder
/// holding `data.pkl` and `version` (by its members, never its name).
pub(crate) fn is_torch_zip(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    let Ok(archive) = zip::ZipArchive::new(file) else {
        return false;
    };
    let names: Vec<&str> = archive.file_names().collect();
    archive_prefix(&names).is_ok()
}

/// Reads a `torch.save` file (the zip format, or torch's legacy format) of
/// a state dict or a training dict.
pub(crate) fn read_torch_file(path: &Path) -> Result<Contents> {
    let file = File::open(path).map_err(|e| FormatError::io("open", path, e))?;
    // SAFETY: the mapping is read-only; a file changed under it while
    // being read yields wrong bytes, caught by the CRC-32 checks.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io("map", path, e))?);
    if map.starts_with(b"PK\x03\x04") {
        read_zip(path, &map)
    } else if map.starts_with(LEGACY_START) {
        read_legacy_format(path, &map)
    } else {
        Err(foreign(
            path,
            "not a torch.save file (neither a ZIP archive nor torch's legacy format)",
        ))
    }
}

/// The folder every member of a `torch.save` archive is in.
fn archive_prefix<'n>(names: &[&'n str]) -> std::result::Result<&'n str, String> {
    let pickles: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix("/data.pkl"))
        .filter(|p| !p.contains('/'))
        .collect();
    let [prefix] = pickles[..] else {
        return Err(format!(
            "{} top-level data.pkl members: a torch.save archive has one",
            pickles.len()
        ));
    };
    if !names.contains(&format!("{prefix}/version").as_str()) {
        return Err(format!("no {prefix}/version member: not a torch.save archive"));
    }
    Ok(prefix)
}

fn read_zip(path: &Path, map: &Arc<Mmap>) -> Result<Contents> {
    let bad_zip = |e: zip::result::ZipError| foreign(path, format!("not a valid ZIP archive: {e}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(&map[..])).map_err(bad_zip)?;
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let prefix = archive_prefix(&name_refs).map_err(|r| foreign(path, r))?.to_owned();

    let byteorder_name = format!("{prefix}/byteorder");
    if names.contains(&byteorder_name) {
        let order = read_member(path, &mut archive, &byteorder_name, 64)?;
        if order != b"little" {
            return Err(foreign(
                path,
                format!(
                    "{byteorder_name} is {:?}: only little-endian files are read",
                    String::from_utf8_lossy(&order)
                ),
            ));
        }
    }

    let pickle_name = format!("{prefix}/data.pkl");
    let data = read_member(path, &mut archive, &pickle_name, MAX_PICKLE_BYTES)?;
    let mut arena = Arena::default();
    let cx = Context {
        file: path,
        what: &pickle_name,
        profile: Profile::TorchZip,
        load_from_bytes: None,
    };
    let (root, end) = pickle::load(&mut arena, &data, 0, &cx)?;
    if end != data.len() {
        return Err(foreign(
            path,
            format!("{pickle_name}: {} bytes after the pickle", data.len() - end),
        ));
    }

    let mut storages = HashMap::new();
    let keyed: Vec<(&str, ObjId)> = arena.storages.iter().map(|(k, v)| (*k, *v)).collect();
    for (key, id) in keyed {
        let storage = *arena.storage(id).expect("storages holds storages");
        let member = format!("{prefix}/data/{key}");
        let Some(nbytes) = storage_nbytes(storage.element, storage.numel) else {
            continue; // refused where a tensor uses it, by name
        };
        let bytes = storage_member(path, &mut archive, map, &member, nbytes)?;
        storages.insert(id, bytes);
    }
    let tensors = Tensors::new(path, &arena, storages, None, map.len() as u64);
    training_dict::contents(path, &arena, root, &tensors)
}

/// A whole member, at most `limit` bytes, into memory.
fn read_member<R: Read + std::io::Seek>(
    path: &Path,
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>> {
    let mut member = archive
        .by_name(name)
        .map_err(|e| foreign(path, format!("{name}: {e}")))?;
    let declared = member.size();
    if declared > limit {
        return Err(foreign(
            path,
            format!("{name} is {declared} bytes, above the limit of {limit}"),
        ));
    }
    // Memory grows as bytes really arrive, never by the declared size.
    let mut out = Vec::new();
    (&mut member)
        .take(declared + 1)
        .read_to_end(&mut out)
        .map_err(|e| foreign(path, format!("{name}: {e}")))?;
    if out.len() as u64 != declared {
        return Err(foreign(
            path,
            format!("{name} holds {} bytes, its header says {declared}", out.len()),
        ));
    }
    Ok(out)
}

/// A storage's member: a range of the mapped file when stored (checked
/// against its CRC-32), its inflated bytes otherwise.
fn storage_member(
    path: &Path,
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    map: &Arc<Mmap>,
    name: &str,
    nbytes: u64,
) -> Result<StorageData<'static>> {
    let (stored, start, size, crc) = {
        let member = archive.by_name(name).map_err(|e| match e {
            zip::result::ZipError::FileNotFound => {
                foreign(path, format!("{name}: missing (the pickle names the storage)"))
            }
            e => foreign(path, format!("{name}: {e}")),
        })?;
        (
            member.compression() == zip::CompressionMethod::Stored,
            member.data_start(),
            member.size(),
            member.crc32(),
        )
    };
    if size != nbytes {
        return Err(foreign(
            path,
            format!("{name} holds {size} bytes, its storage declares {nbytes}"),
        ));
    }
    if !stored {
        let bytes = read_member(path, archive, name, nbytes)?;
        return Ok(StorageData::Owned(Arc::new(bytes)));
    }
    let end = start
        .checked_add(size)
        .filter(|&end| end <= map.len() as u64)
        .ok_or_else(|| {
            foreign(
                path,
                format!("{name}: {size} bytes at {start} run past the end of the file"),
            )
        })?;
    let (start, end) = (start as usize, end as usize);
    if crc32fast::hash(&map[start..end]) != crc {
        return Err(foreign(path, format!("{name}: CRC-32 mismatch (the file is corrupt)")));
    }
    Ok(StorageData::Mapped {
        map: Arc::clone(map),
        start,
        end,
    })
}

/// Bytes of `numel` elements of `element`, when its size is known (the
/// format's dtypes and torch's other storage types).
fn storage_nbytes(element: ElementType<'_>, numel: u64) -> Option<u64> {
    let size = match element {
        ElementType::Known(d) => dtype_size(d) as u64,
        ElementType::Unsupported(_, name) => match name {
            "ComplexFloatStorage" => 8,
            "ComplexDoubleStorage" => 16,
            "QInt32Storage" => 4,
            "QUInt8Storage" | "QInt8Storage" | "QUInt4x2Storage" | "QUInt2x4Storage" => 1,
            _ => return None,
        },
    };
    numel.checked_mul(size)
}

fn read_legacy_format(path: &Path, map: &Arc<Mmap>) -> Result<Contents> {
    let data: &[u8] = map;
    let mut arena = Arena::default();
    let (root, end) = load_legacy_format(path, "torch.save file", &mut arena, data, Profile::TorchLegacy)?;
    if end != data.len() {
        return Err(foreign(
            path,
            format!("{} bytes after the last storage", data.len() - end),
        ));
    }
    // The storages lie in the mapped file: tensors share its pages.
    let tensors = Tensors::new(path, &arena, HashMap::new(), Some(Arc::clone(map)), map.len() as u64);
    training_dict::contents(path, &arena, root, &tensors)
}

/// Parses torch's legacy format in `data` (its object pickle under
/// `profile`) into `arena`, fills each storage's bytes, and returns the
/// object and the position after the last storage.
pub(crate) fn load_legacy_format<'a>(
    path: &Path,
    what: &str,
    arena: &mut Arena<'a>,
    data: &'a [u8],
    profile: Profile,
) -> Result<(Value<'a>, usize)> {
    let small = |arena: &mut Arena<'a>, at: usize, part: &str| -> Result<(Value<'a>, usize)> {
        let what = format!("{what} ({part})");
        let cx = Context {
            file: path,
            what: &what,
            profile: Profile::Plain,
            load_from_bytes: None,
        };
        pickle::load(arena, data, at, &cx)
    };
    let bad = |reason: &str| foreign(path, format!("{what}: {reason}"));

    let (magic, at) = small(arena, 0, "magic number")?;
    if !matches!(magic, Value::Long(LEGACY_MAGIC)) {
        return Err(bad("not torch's legacy serialization (bad magic number)"));
    }
    let (version, at) = small(arena, at, "protocol version")?;
    if !matches!(version, Value::Int(LEGACY_PROTOCOL_VERSION)) {
        return Err(bad("an unknown protocol version of torch's legacy serialization"));
    }
    let (sys_info, at) = small(arena, at, "system info")?;
    let little = dict_entry(arena, sys_info, "little_endian");
    if !matches!(little, Some(Value::Bool(true))) {
        return Err(bad("written on a machine that is not little-endian"));
    }

    // Each legacy pickle has storage keys of its own.
    let outer_storages = std::mem::take(&mut arena.storages);
    let result = (|| {
        let cx = Context {
            file: path,
            what,
            profile,
            load_from_bytes: None,
        };
        let (root, at) = pickle::load(arena, data, at, &cx)?;
        let (keys, mut at) = small(arena, at, "storage keys")?;
        let keys: Option<Vec<&'a str>> = match keys {
            Value::Obj(id) => match arena.get(id) {
                Obj::List(items) => items
                    .iter()
                    .map(|v| match v {
                        Value::Str(s) => Some(*s),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            },
            _ => None,
        };
        let keys = keys.ok_or_else(|| bad("the storage key list is not a list of strings"))?;
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let mut named: Vec<&str> = arena.storages.keys().copied().collect();
        named.sort_unstable();
        if sorted != named {
            return Err(bad("the storage keys do not match the storages the pickle names"));
        }
        for key in keys {
            let id = arena.storages[key];
            let storage = *arena.storage(id).expect("storages holds storages");
            if storage.data.is_some() {
                return Err(bad(&format!("storage {key:?} listed twice")));
            }
            let head = data
                .get(at..at + 8)
                .ok_or_else(|| bad(&format!("storage {key:?}: the data is truncated")))?;
            let numel = u64::from_le_bytes(head.try_into().expect("8 bytes"));
            let nbytes = storage_nbytes(storage.element, storage.numel)
                .ok_or_else(|| bad(&format!("storage {key:?} of an unknown element size")))?;
            let left = (data.len() - at - 8) as u64;
            if numel != storage.numel || nbytes > left {
                return Err(bad(&format!(
                    "storage {key:?} has {numel} elements at byte {at}, declared {}, with {left} bytes left",
                    storage.numel
                )));
            }
            let start = at + 8;
            let end = start + nbytes as usize;
            arena.storage_mut(id).expect("a storage").data = Some(&data[start..end]);
            at = end;
        }
        Ok((root, at))
    })();
    arena.storages = outer_storages;
    result
}

/// The value under the string key `key` of a dict, if `value` is one.
pub(crate) fn dict_entry<'a>(arena: &Arena<'a>, value: Value<'a>, key: &str) -> Option<Value<'a>> {
    let Value::Obj(id) = value else { return None };
    let Obj::Dict(d) = arena.get(id) else { return None };
    d.entries
        .iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if *s == key))
        .map(|(_, v)| *v)
}

/// A storage's bytes.
#[derive(Debug, Clone)]
pub(crate) enum StorageData<'s> {
    /// A range of a mapped file.
    Mapped { map: Arc<Mmap>, start: usize, end: usize },
    /// Bytes of its own (an inflated member).
    Owned(Arc<Vec<u8>>),
    /// Bytes inside a buffer that is not kept (copied out per tensor).
    Borrowed(&'s [u8]),
}

impl StorageData<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            StorageData::Mapped { map, start, end } => &map[*start..*end],
            StorageData::Owned(v) => v,
            StorageData::Borrowed(b) => b,
        }
    }
}

/// Turns the tensors of an unpickled object into [`ForeignTensor`]s.
pub(crate) struct Tensors<'r, 'a> {
    pub file: &'r Path,
    pub arena: &'r Arena<'a>,
    /// The bytes of the storages that are not in the arena (members of a
    /// `torch.save` archive).
    pub storages: HashMap<ObjId, StorageData<'static>>,
    /// The mapped file, when storages the arena holds lie in it (torch's
    /// legacy format as a file): their tensors become ranges of it.
    pub map: Option<Arc<Mmap>>,
    /// Tensors already made contiguous, by object: one tensor referenced
    /// many times is copied once.
    pub copies: RefCell<HashMap<ObjId, Arc<Vec<u8>>>>,
    /// Bytes that copies may still take: views of one storage would
    /// otherwise copy it once each, far beyond the file's size.
    pub copy_budget: Cell<u64>,
}

impl<'r, 'a> Tensors<'r, 'a> {
    /// Tensors of `arena`, whose copies may take `input_bytes` (the file's
    /// or the inflated pickle's size) four times, plus 64 MiB.
    pub fn new(
        file: &'r Path,
        arena: &'r Arena<'a>,
        storages: HashMap<ObjId, StorageData<'static>>,
        map: Option<Arc<Mmap>>,
        input_bytes: u64,
    ) -> Self {
        Tensors {
            file,
            arena,
            storages,
            map,
            copies: RefCell::default(),
            copy_budget: Cell::new(input_bytes.saturating_mul(4).saturating_add(64 << 20)),
        }
    }

    /// `bytes` copied (or the copy made before of tensor `id`).
    fn copy(&self, id: ObjId, name: &str, make: impl FnOnce() -> Vec<u8>, len: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(done) = self.copies.borrow().get(&id) {
            return Ok(Arc::clone(done));
        }
        let left = self.copy_budget.get();
        if len as u64 > left {
            return Err(foreign(
                self.file,
                format!(
                    "tensor {name}: copying it would take more memory than the file's size allows (views                      of one storage copied many times)"
                ),
            ));
        }
        self.copy_budget.set(left - len as u64);
        let bytes = Arc::new(make());
        self.copies.borrow_mut().insert(id, Arc::clone(&bytes));
        Ok(bytes)
    }
}

impl<'a> Tensors<'_, 'a> {
    /// `bytes` as a range of the mapped file, if they lie in it.
    fn in_map(&self, bytes: &'a [u8]) -> Option<StorageData<'a>> {
        let map = self.map.as_ref()?;
        let start = (bytes.as_ptr() as usize).checked_sub(map.as_ptr() as usize)?;
        let end = start + bytes.len();
        (end <= map.len()).then(|| StorageData::Mapped {
            map: Arc::clone(map),
            start,
            end,
        })
    }

    /// The tensor `id` of the arena, named `name`: its bytes in C order, a
    /// range of the storage when the view is contiguous.
    pub fn tensor(&self, id: ObjId, name: &str) -> Result<ForeignTensor> {
        let Obj::Tensor(t) = self.arena.get(id) else {
            return Err(foreign(self.file, format!("{name} is not a tensor")));
        };
        let dtype = match t.element {
            ElementType::Known(d) => d,
            ElementType::Unsupported(module, ty) => {
                return Err(foreign(
                    self.file,
                    format!(
                        "tensor {name} is of {module}.{ty}, which the format cannot hold (it holds F64 F32 \
                         F16 BF16 I64 I32 I16 I8 U8 BOOL): convert the tensor in PyTorch first"
                    ),
                ))
            }
        };
        let storage = self.arena.storage(t.storage).expect("tensors refer to storages");
        let data = match (storage.data, self.storages.get(&t.storage)) {
            (Some(bytes), _) => self.in_map(bytes).unwrap_or(StorageData::Borrowed(bytes)),
            (None, Some(data)) => data.clone(),
            (None, None) => {
                return Err(foreign(
                    self.file,
                    format!("tensor {name}: its storage {:?} has no bytes", storage.key),
                ));
            }
        };
        let bytes = data.as_slice();
        let item = dtype_size(dtype);
        pickle::check_view(t.offset, &t.size, &t.stride, item as u64, bytes.len() as u64)
            .map_err(|r| foreign(self.file, format!("tensor {name}: {r}")))?;
        let shape: Vec<usize> = t.size.iter().map(|&n| n as usize).collect();
        let numel: usize = shape.iter().product();
        let out = if numel == 0 {
            TensorBytes::Owned(Arc::new(Vec::new()))
        } else if is_contiguous(&t.size, &t.stride) {
            let start = t.offset as usize * item;
            let end = start + numel * item;
            match data {
                StorageData::Mapped { map, start: base, .. } => TensorBytes::Mapped {
                    map,
                    start: base + start,
                    end: base + end,
                },
                StorageData::Owned(v) if start == 0 && end == v.len() => TensorBytes::Owned(v),
                _ => TensorBytes::Owned(self.copy(id, name, || bytes[start..end].to_vec(), end - start)?),
            }
        } else {
            let make = || gather(bytes, item, t.offset as usize, &shape, &t.stride);
            TensorBytes::Owned(self.copy(id, name, make, numel * item)?)
        };
        if dtype == Dtype::BOOL && out.as_slice().iter().any(|&b| b > 1) {
            return Err(foreign(
                self.file,
                format!("tensor {name}: a bool element that is not 0 or 1"),
            ));
        }
        Ok(ForeignTensor {
            name: name.to_owned(),
            dtype,
            shape,
            data: out,
        })
    }
}

/// Whether a view's elements are in C order without gaps (dimensions of
/// size 1 may have any stride).
fn is_contiguous(size: &[u64], stride: &[u64]) -> bool {
    let mut expected = 1u64;
    for (&n, &s) in size.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

/// Copies a strided view into C order (bounds checked by the caller).
fn gather(bytes: &[u8], item: usize, offset: usize, shape: &[usize], stride: &[u64]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * item);
    let rank = shape.len();
    let mut index = vec![0usize; rank];
    for _ in 0..numel {
        let element = offset + index.iter().zip(stride).map(|(&i, &s)| i * s as usize).sum::<usize>();
        out.extend_from_slice(&bytes[element * item..(element + 1) * item]);
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}
