//! [`ShardedCheckpoint`]: a sharded checkpoint (FORMAT.md 13) read as one
//! logical checkpoint. Opening it reads and checks the index (13.5 steps 1
//! to 3) and every shard's structure, metadata and tensor headers (step
//! 4), without reading tensor data; a tensor is assembled from its chunks
//! when asked for; [`verify`](ShardedCheckpoint::verify) reads every
//! shard whole and checks every CRC-32.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::index::{IndexTensor, ShardIndex, INDEX_FILE, MAX_INDEX_BYTES};
use crate::format::{dtype_name, dtype_size, Checkpoint, Dtype, FileKind, FormatError, LazyCheckpoint, MemberName};
use crate::storage::{is_url, Location, RemoteObject};

/// Where a sharded checkpoint is: its location (directory or prefix) and
/// its index, as the caller wrote them.
#[derive(Debug, Clone)]
struct Place {
    /// The directory or prefix holding the index and the shards.
    base: String,
    index: String,
}

impl Place {
    /// `location` is the directory or prefix, or the index itself (its
    /// last path segment being `index.json`).
    fn of(location: &str) -> Place {
        let trimmed = location.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { location } else { trimmed };
        match trimmed.rsplit_once('/') {
            Some((base, INDEX_FILE)) => Place {
                base: if base.is_empty() { "/".into() } else { base.into() },
                index: trimmed.into(),
            },
            None if trimmed == INDEX_FILE => Place {
                base: ".".into(),
                index: trimmed.into(),
            },
            _ => Place {
                base: trimmed.into(),
                index: Place::join(trimmed, INDEX_FILE),
            },
        }
    }

    fn join(base: &str, name: &str) -> String {
        if is_url(Path::new(base)) || base.ends_with('/') {
            format!("{}/{name}", base.trim_end_matches('/'))
        } else {
            Path::new(base).join(name).display().to_string()
        }
    }

    fn file(&self, name: &str) -> String {
        Place::join(&self.base, name)
    }
}

/// Whether `location` names a sharded checkpoint rather than one file: an
/// index (`.../index.json`), a local directory, or an object-store URL
/// that does not end in `.zip` (a prefix). For tools that take either.
pub fn is_sharded_location(location: &str) -> bool {
    let trimmed = location.trim_end_matches('/');
    if trimmed == INDEX_FILE || trimmed.ends_with(&format!("/{INDEX_FILE}")) {
        return true;
    }
    if is_url(Path::new(location)) {
        return match Location::parse(Path::new(location)) {
            Ok(Location::Local(p)) => p.is_dir(),
            _ => !trimmed.ends_with(".zip"),
        };
    }
    Path::new(location).is_dir()
}

/// One shard, opened lazily (structure, metadata, tensor headers).
struct OpenShard {
    /// Its path or URL.
    path: String,
    lazy: LazyCheckpoint,
}

/// A sharded checkpoint whose index and shards are checked (FORMAT.md
/// 13.5 steps 1 to 4; the shards' CRC-32s by [`verify`](Self::verify)).
/// Read-only; `Sync`: threads may read tensors at once.
pub struct ShardedCheckpoint {
    place: Place,
    index_json: String,
    index: ShardIndex,
    shards: Vec<OpenShard>,
}

impl std::fmt::Debug for ShardedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedCheckpoint")
            .field("location", &self.place.base)
            .field("checkpoint_id", &self.index.checkpoint_id)
            .finish_non_exhaustive()
    }
}

fn in_shard(file: &str, e: FormatError) -> FormatError {
    FormatError::InShard {
        file: file.into(),
        source: Box::new(e),
    }
}

fn mismatch(file: &str, reason: impl Into<String>) -> FormatError {
    FormatError::ShardMismatch {
        file: file.into(),
        reason: reason.into(),
    }
}

/// Step 1: the index's bytes, or `NotCommitted` when there is none.
fn read_index(place: &Place) -> Result<Vec<u8>, FormatError> {
    let not_committed = || FormatError::NotCommitted {
        location: place.base.clone(),
    };
    let too_large = |len| FormatError::TooLarge {
        what: INDEX_FILE.into(),
        len,
        max: MAX_INDEX_BYTES,
    };
    match Location::parse(Path::new(&place.index))? {
        Location::Local(p) => {
            let meta = match std::fs::metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_committed()),
                Err(e) => return Err(FormatError::io("cannot open", &p, e)),
            };
            if !meta.is_file() {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
                return Err(FormatError::io("cannot open", &p, e));
            }
            if meta.len() > MAX_INDEX_BYTES {
                return Err(too_large(meta.len()));
            }
            std::fs::read(&p).map_err(|e| FormatError::io("cannot read", &p, e))
        }
        Location::Remote(r) => {
            if !r.exists()? {
                return Err(not_committed());
            }
            let object = RemoteObject::open(&r)?;
            if object.size() > MAX_INDEX_BYTES {
                return Err(too_large(object.size()));
            }
            Ok(object.read_range(0, object.size())?.to_vec())
        }
    }
}

/// The size of a shard file, or `MissingShard` when it does not exist.
fn shard_size(path: &str) -> Result<u64, FormatError> {
    let missing = || FormatError::MissingShard { file: path.into() };
    match Location::parse(Path::new(path))? {
        Location::Local(p) => match std::fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing()),
            Err(e) => Err(FormatError::io("cannot open", &p, e)),
        },
        Location::Remote(r) => match r.exists()? {
            false => Err(missing()),
            true => Ok(RemoteObject::open(&r)?.size()),
        },
    }
}

impl ShardedCheckpoint {
    /// Opens the sharded checkpoint at `location`: a local directory or
    /// an object-store prefix URL holding `index.json`, or the path or URL
    /// of the index itself (anything whose last path segment is
    /// `index.json`). Checks FORMAT.md 13.5 steps 1 to 4 in order: the
    /// index (`NotCommitted`, `Json`, `Schema`, `UnsupportedVersion`,
    /// `ChunkTiling`), then each shard (`MissingShard`, `ShardMismatch`,
    /// the shard's own kinds, `TensorNotFound`), reading each shard's
    /// structure, metadata and tensor headers but no tensor data.
    pub fn open(location: &str) -> Result<Self, FormatError> {
        let place = Place::of(location);
        let bytes = read_index(&place)?;
        let index = ShardIndex::parse(&bytes)?;
        let index_json = String::from_utf8(bytes).map_err(|e| FormatError::IndexJson(e.to_string()))?;
        let mut shards = Vec::with_capacity(index.shards.len());
        for (i, entry) in index.shards.iter().enumerate() {
            let path = place.file(&entry.file);
            let size = shard_size(&path)?;
            if size != entry.size {
                return Err(mismatch(
                    &path,
                    format!("is {size} bytes; index.json says {}", entry.size),
                ));
            }
            let lazy = LazyCheckpoint::open(PathBuf::from(&path)).map_err(|e| in_shard(&path, e))?;
            let shard = OpenShard { path, lazy };
            check_shard(&index, i, &shard)?;
            shards.push(shard);
        }
        Ok(ShardedCheckpoint {
            place,
            index_json,
            index,
            shards,
        })
    }

    /// The location (directory or prefix) holding the index and shards.
    pub fn location(&self) -> &str {
        &self.place.base
    }

    /// The index's text, as read.
    pub fn index_json(&self) -> &str {
        &self.index_json
    }

    /// The parsed, validated index.
    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// The path or URL of every shard file, in the index's order.
    pub fn shard_paths(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.path.as_str()).collect()
    }

    /// Every tensor's name, in name order.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.index.tensors.keys().map(String::as_str).collect()
    }

    fn entry(&self, name: &str) -> Result<&IndexTensor, FormatError> {
        self.index.tensors.get(name).ok_or_else(|| FormatError::TensorNotFound {
            member: INDEX_FILE.into(),
            tensor: name.into(),
        })
    }

    /// A tensor's dtype and global shape (`TensorNotFound` when the index
    /// has no such tensor).
    pub fn tensor_info(&self, name: &str) -> Result<(Dtype, &[i64]), FormatError> {
        let t = self.entry(name)?;
        Ok((t.dtype, &t.shape))
    }

    /// The assembled tensor's size in bytes.
    pub fn tensor_byte_len(&self, name: &str) -> Result<u64, FormatError> {
        Ok(self.entry(name)?.byte_len())
    }

    /// Assembles tensor `name` into `dst` (its elements in C order,
    /// little-endian): each chunk read from its shard (one ranged read
    /// from an object store) and copied into its place. `dst` must be the
    /// tensor's size exactly.
    pub fn read_tensor_into(&self, name: &str, dst: &mut [u8]) -> Result<(), FormatError> {
        let t = self.entry(name)?;
        if dst.len() as u64 != t.byte_len() {
            return Err(FormatError::InvalidInput(format!(
                "tensor {name:?} has {} bytes, the destination {}",
                t.byte_len(),
                dst.len()
            )));
        }
        let dims = t.dims();
        let esize = dtype_size(t.dtype);
        for chunk in &t.chunks {
            let shard = &self.shards[chunk.shard];
            let entry = shard
                .lazy
                .tensor(MemberName::Model, &chunk.tensor)
                .map_err(|e| in_shard(&shard.path, e))?;
            let bytes = shard.lazy.read_tensor(entry).map_err(|e| in_shard(&shard.path, e))?;
            place_chunk(dst, &dims, esize, &chunk.offsets, &chunk.sizes, &bytes);
        }
        Ok(())
    }

    /// Assembles tensor `name` into new memory.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<u8>, FormatError> {
        let mut out = vec![0u8; self.tensor_byte_len(name)? as usize];
        self.read_tensor_into(name, &mut out)?;
        Ok(out)
    }

    /// The non-tensor values (`values` of the index).
    pub fn values(&self) -> &Map<String, Value> {
        &self.index.values
    }

    /// Reads every shard whole, in the index's order, as a full open does
    /// (FORMAT.md section 9: every CRC-32, every `BOOL` byte); the first
    /// failure, naming its shard, is the error. The index and the tiling
    /// were checked at open.
    pub fn verify(&self) -> Result<(), FormatError> {
        for shard in &self.shards {
            Checkpoint::open(&shard.path).map_err(|e| in_shard(&shard.path, e))?;
        }
        Ok(())
    }

    /// Tensor `name`, assembled into a new CPU tensor of its dtype and
    /// global shape.
    #[cfg(feature = "torch")]
    pub fn tensor(&self, name: &str) -> crate::Result<tch::Tensor> {
        let (dtype, shape) = self.tensor_info(name)?;
        let kind = crate::tch_bridge::kind_of(dtype).ok_or_else(|| crate::Error::StateMismatch {
            tensor: name.into(),
            reason: format!("dtype {} has no libtorch equivalent", dtype_name(dtype)),
        })?;
        let t = tch::Tensor::f_empty(shape, (kind, tch::Device::Cpu))?;
        let len = self.tensor_byte_len(name)? as usize;
        if len > 0 {
            // SAFETY: a new contiguous CPU tensor of exactly `len` bytes,
            // not shared with anything yet.
            let dst = unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<u8>(), len) };
            self.read_tensor_into(name, dst)?;
        }
        Ok(t)
    }
}

/// Step 4 for shard `i`, once its size matched and it opened: a weights
/// file whose shard block is the index's, holding each chunk the index
/// puts in it (name, dtype, shape) and nothing else.
fn check_shard(index: &ShardIndex, i: usize, shard: &OpenShard) -> Result<(), FormatError> {
    let file = &shard.path;
    let entry = &index.shards[i];
    let meta = shard.lazy.metadata();
    if meta.kind != FileKind::Weights {
        return Err(mismatch(
            file,
            format!("is a {} file; a shard is a weights file", meta.kind.as_str()),
        ));
    }
    let Some(block) = &meta.shard else {
        return Err(mismatch(file, "has no shard block (__pytorch_saver__.shard)"));
    };
    if block.checkpoint_id != index.checkpoint_id {
        return Err(mismatch(
            file,
            format!(
                "belongs to checkpoint {}; index.json is checkpoint {}",
                block.checkpoint_id, index.checkpoint_id
            ),
        ));
    }
    if block.rank != entry.rank {
        return Err(mismatch(
            file,
            format!(
                "was written by rank {}; index.json says rank {}",
                block.rank, entry.rank
            ),
        ));
    }
    let mut named = std::collections::HashSet::new();
    for (name, t) in &index.tensors {
        for (c, chunk) in t.chunks.iter().enumerate().filter(|(_, c)| c.shard == i) {
            let found = shard
                .lazy
                .tensor(MemberName::Model, &chunk.tensor)
                .map_err(|e| in_shard(file, e))?;
            let sizes: Vec<usize> = chunk.sizes.iter().map(|&s| s as usize).collect();
            if found.dtype != t.dtype || found.shape != sizes {
                return Err(mismatch(
                    file,
                    format!(
                        "tensor {:?} (chunk {c} of {name:?}) is {} {:?}; index.json says {} {:?}",
                        chunk.tensor,
                        dtype_name(found.dtype),
                        found.shape,
                        dtype_name(t.dtype),
                        sizes
                    ),
                ));
            }
            named.insert(chunk.tensor.as_str());
        }
    }
    if let Some(extra) = shard
        .lazy
        .tensors(MemberName::Model)
        .iter()
        .find(|e| !named.contains(e.name.as_str()))
    {
        return Err(mismatch(
            file,
            format!("holds tensor {:?}, which no chunk of index.json names", extra.name),
        ));
    }
    Ok(())
}

/// Copies a chunk's elements (`src`, C order) into their place in the
/// global tensor `dst` of shape `dims`: one contiguous run per index of
/// the leading dimensions the chunk does not span whole.
fn place_chunk(dst: &mut [u8], dims: &[u64], esize: usize, offsets: &[u64], sizes: &[u64], src: &[u8]) {
    if sizes.contains(&0) {
        return;
    }
    let n = dims.len();
    // The chunk spans every dimension after k whole (k: the last one it
    // does not, or 0): each run of sizes[k..] is contiguous in dst.
    let k = (0..n).rev().find(|&d| sizes[d] != dims[d]).unwrap_or(0);
    let run = sizes[k..].iter().product::<u64>() as usize * esize;
    // Element strides of the global tensor.
    let mut strides = vec![1u64; n];
    for d in (0..n.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * dims[d + 1];
    }
    let outer = &sizes[..k];
    let mut idx = vec![0u64; outer.len()];
    let mut from = 0usize;
    loop {
        let start: u64 = (0..n)
            .map(|d| (offsets[d] + idx.get(d).copied().unwrap_or(0)) * strides[d])
            .sum();
        let at = start as usize * esize;
        dst[at..at + run].copy_from_slice(&src[from..from + run]);
        from += run;
        // Next index of the outer dimensions, last fastest.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < outer[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Assembles `chunks` of a tensor of `dims` whose element i is i, and
    /// compares with the whole.
    fn assemble(dims: &[u64], chunks: &[(&[u64], &[u64])]) {
        let total: u64 = dims.iter().product();
        let mut dst = vec![0u8; total as usize];
        let value = |pos: &[u64]| -> u8 {
            let mut flat = 0;
            for d in 0..dims.len() {
                flat = flat * dims[d] + pos[d];
            }
            flat as u8
        };
        for (offsets, sizes) in chunks {
            // The chunk's elements in C order.
            let count: u64 = sizes.iter().product();
            let mut src = Vec::new();
            for mut i in 0..count {
                let mut pos = vec![0; dims.len()];
                for d in (0..dims.len()).rev() {
                    pos[d] = offsets[d] + i % sizes[d];
                    i /= sizes[d];
                }
                src.push(value(&pos));
            }
            place_chunk(&mut dst, dims, 1, offsets, sizes, &src);
        }
        let want: Vec<u8> = (0..total).map(|i| i as u8).collect();
        assert_eq!(dst, want, "{dims:?} {chunks:?}");
    }

    #[test]
    fn chunks_land_in_their_places() {
        assemble(&[4, 3], &[(&[0, 0], &[2, 3]), (&[2, 0], &[2, 3])]);
        assemble(&[4, 3], &[(&[0, 0], &[4, 1]), (&[0, 1], &[4, 2])]);
        assemble(
            &[2, 4, 3],
            &[
                (&[0, 0, 0], &[2, 2, 3]),
                (&[0, 2, 0], &[2, 2, 2]),
                (&[0, 2, 2], &[2, 2, 1]),
            ],
        );
        assemble(&[], &[(&[], &[])]);
        assemble(&[5], &[(&[0], &[2]), (&[2], &[0]), (&[2], &[3])]);
    }

    #[test]
    fn a_location_is_a_directory_or_its_index() {
        let p = Place::of("/data/run/step-10");
        assert_eq!(
            (p.base.as_str(), p.index.as_str()),
            ("/data/run/step-10", "/data/run/step-10/index.json")
        );
        let p = Place::of("/data/run/step-10/index.json");
        assert_eq!(p.base, "/data/run/step-10");
        let p = Place::of("s3://bucket/run/step-10/");
        assert_eq!(p.index, "s3://bucket/run/step-10/index.json");
        assert_eq!(p.file("a.zip"), "s3://bucket/run/step-10/a.zip");
        let p = Place::of("index.json");
        assert_eq!(p.file("a.zip"), "./a.zip");
    }
}
