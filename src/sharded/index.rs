//! `index.json` of a sharded checkpoint (FORMAT.md 13.1): the one owner of
//! its schema in Rust. [`ShardIndex::parse`] runs steps 2 and 3 of
//! FORMAT.md 13.5 on the index's bytes: the JSON and its schema (the
//! format version first), then each tensor's chunks, in tensor name order:
//! every chunk inside its tensor and pointing at a shard, and the chunks
//! tiling the tensor exactly. The shards themselves (step 4) are the
//! reader's, [`super::ShardedCheckpoint`].

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use crate::format::metadata::{is_checkpoint_id, parse_producer, MAX_METADATA_BYTES};
use crate::format::{dtype_name, dtype_size, Dtype, FileKind, FormatError, Metadata, Producer, DTYPES};

/// The index's file name in a sharded checkpoint's location.
pub const INDEX_FILE: &str = "index.json";
/// The value of the index's `format` key.
pub const INDEX_FORMAT: &str = "pytorch-saver-sharded";
/// The index version this library reads (`format_version`).
pub const INDEX_FORMAT_VERSION: u64 = 1;
/// Largest `index.json` a reader accepts (as for `metadata.json`).
pub const MAX_INDEX_BYTES: u64 = MAX_METADATA_BYTES;

/// One shard file (`shards[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEntry {
    /// The file's name, relative to the location.
    pub file: String,
    /// The rank that wrote it.
    pub rank: u64,
    /// The file's size in bytes.
    pub size: u64,
}

/// One chunk of a tensor: the box `offsets[d] .. offsets[d] + sizes[d]`
/// of the global tensor, held as tensor `tensor` of shard `shard`'s
/// `model.safetensors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offsets: Vec<u64>,
    pub sizes: Vec<u64>,
    /// The position of its shard in [`ShardIndex::shards`].
    pub shard: usize,
    /// The chunk's tensor name in that shard.
    pub tensor: String,
}

impl Chunk {
    /// Its element count (the index's tiling check bounds it by its
    /// tensor's).
    pub fn numel(&self) -> u64 {
        self.sizes.iter().product()
    }

    fn describe(&self, i: usize) -> String {
        format!("{i} (offsets {:?}, sizes {:?})", self.offsets, self.sizes)
    }
}

/// A tensor of the index: its global dtype and shape, and its chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexTensor {
    pub dtype: Dtype,
    /// The global shape (every size fits an `i64`, the element count a
    /// `u64` and the byte size a `usize`).
    pub shape: Vec<i64>,
    pub requires_grad: bool,
    pub chunks: Vec<Chunk>,
}

impl IndexTensor {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// The assembled tensor's size in bytes.
    pub fn byte_len(&self) -> u64 {
        self.numel() * dtype_size(self.dtype) as u64
    }

    /// The global shape as sizes.
    pub fn dims(&self) -> Vec<u64> {
        self.shape.iter().map(|&d| d as u64).collect()
    }
}

/// `container` (FORMAT.md 13.3): the file metadata of a model container's
/// checkpoint, validated, and the placements of its distributed tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// A `checkpoint` or `inference` document without extra state.
    pub metadata: Metadata,
    /// Model tensor name (without `model.`) to `{"mesh_shape", "placements"}`.
    pub placements: Map<String, Value>,
}

/// A validated `index.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardIndex {
    pub format_version: u64,
    /// 32 lowercase hexadecimal digits, written into every shard.
    pub checkpoint_id: String,
    /// Unix seconds when the save began.
    pub timestamp: u64,
    pub producer: Producer,
    pub world_size: u64,
    pub shards: Vec<ShardEntry>,
    /// By name, in name order.
    pub tensors: BTreeMap<String, IndexTensor>,
    /// The non-tensor values, plain JSON.
    pub values: Map<String, Value>,
    /// Each name's path in the nested state dict that was saved.
    pub planner_data: Map<String, Value>,
    pub container: Option<ContainerInfo>,
}

fn schema(field: impl Into<String>, reason: impl Into<String>) -> FormatError {
    FormatError::IndexSchema {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A `metadata.json` schema error of a document embedded in the index
/// (the container's metadata, the producer), renamed to its place there.
fn embedded(e: FormatError, place: &str, strip: &str) -> FormatError {
    match e {
        FormatError::Schema { field, reason } => {
            let inner = field.strip_prefix(strip).unwrap_or(&field);
            let field = match inner {
                "" => place.to_owned(),
                _ if strip.is_empty() => format!("{place}.{inner}"),
                _ => format!("{place}{inner}"),
            };
            schema(field, reason)
        }
        other => other,
    }
}

fn as_u64(value: &Value, field: &str, what: &str) -> Result<u64, FormatError> {
    value
        .as_u64()
        .ok_or_else(|| schema(field, format!("must be {what}, got {value}")))
}

/// An integer >= 0 that fits an `i64` (a size or offset).
fn as_size(value: &Value, field: &str) -> Result<u64, FormatError> {
    as_u64(value, field, "an integer >= 0")?
        .try_into()
        .map(|v: i64| v as u64)
        .map_err(|_| schema(field, format!("{value} is larger than the largest size, {}", i64::MAX)))
}

fn size_list(value: Option<Value>, field: &str) -> Result<Vec<u64>, FormatError> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| as_size(v, &format!("{field}[{i}]")))
            .collect(),
        Some(_) => Err(schema(field, "must be a list of integers >= 0")),
        None => Err(schema(field, "missing")),
    }
}

/// Refuses keys of `obj` outside `allowed`.
fn only_keys(obj: &Map<String, Value>, allowed: &[&str], field: &str) -> Result<(), FormatError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(schema(
            field,
            format!("unknown key {k:?} (the keys are {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn object(value: Option<Value>, field: &str) -> Result<Map<String, Value>, FormatError> {
    match value {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(schema(field, "must be an object")),
        None => Err(schema(field, "missing")),
    }
}

impl ShardIndex {
    /// Parses and checks an index's bytes: steps 2 and 3 of FORMAT.md
    /// 13.5 (`Json`, `Schema`, `UnsupportedVersion`, then `Schema` or
    /// `ChunkTiling` for each tensor's chunks in name order).
    pub fn parse(bytes: &[u8]) -> Result<ShardIndex, FormatError> {
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(FormatError::TooLarge {
                what: INDEX_FILE.into(),
                len: bytes.len() as u64,
                max: MAX_INDEX_BYTES,
            });
        }
        let top = crate::format::json::parse_object(bytes).map_err(FormatError::IndexJson)?;
        let index = Self::from_json(top)?;
        index.check_chunks()?;
        Ok(index)
    }

    /// Step 2: the schema of 13.1 (and 13.3 for a container checkpoint).
    fn from_json(mut top: Map<String, Value>) -> Result<ShardIndex, FormatError> {
        match top.get("format") {
            Some(Value::String(s)) if s == INDEX_FORMAT => {}
            Some(v) => return Err(schema("format", format!("must be {INDEX_FORMAT:?}, got {v}"))),
            None => return Err(schema("format", "missing: not a sharded checkpoint's index")),
        }
        let format_version = match top.get("format_version") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(INDEX_FORMAT_VERSION) => INDEX_FORMAT_VERSION,
                _ => {
                    return Err(FormatError::UnsupportedVersion {
                        found: format!("{n} of {INDEX_FILE}"),
                        supported: INDEX_FORMAT_VERSION.to_string(),
                    })
                }
            },
            Some(_) => return Err(schema("format_version", "must be an integer")),
            None => return Err(schema("format_version", "missing")),
        };
        only_keys(
            &top,
            &[
                "format",
                "format_version",
                "checkpoint_id",
                "timestamp",
                "producer",
                "world_size",
                "shards",
                "tensors",
                "values",
                "planner_data",
                "container",
            ],
            "(top level)",
        )?;
        let checkpoint_id = match top.remove("checkpoint_id") {
            Some(Value::String(s)) if is_checkpoint_id(&s) => s,
            Some(v) => {
                return Err(schema(
                    "checkpoint_id",
                    format!("must be 32 lowercase hexadecimal digits, got {v}"),
                ))
            }
            None => return Err(schema("checkpoint_id", "missing")),
        };
        let timestamp = match top.remove("timestamp") {
            Some(v) => as_u64(&v, "timestamp", "an integer >= 0 (Unix seconds)")?,
            None => return Err(schema("timestamp", "missing")),
        };
        let producer =
            parse_producer(top.remove("producer"), "producer").map_err(|e| embedded(e, "producer", "producer"))?;
        let world_size = match top.remove("world_size") {
            Some(v) => match as_u64(&v, "world_size", "an integer >= 1")? {
                0 => return Err(schema("world_size", "must be an integer >= 1, got 0")),
                n => n,
            },
            None => return Err(schema("world_size", "missing")),
        };
        let shards = shards(top.remove("shards"), world_size)?;
        let tensors = tensors(top.remove("tensors"))?;
        let values = object(top.remove("values"), "values")?;
        if let Some(name) = values.keys().find(|k| k.is_empty()) {
            return Err(schema("values", format!("a name is empty ({name:?})")));
        }
        if let Some(name) = values.keys().find(|k| tensors.contains_key(*k)) {
            return Err(schema(
                format!("values.{name}"),
                "the name is a tensor's too (a name is in tensors or in values, not both)",
            ));
        }
        let planner_data = planner_data(top.remove("planner_data"), &tensors, &values)?;
        let container = match top.remove("container") {
            None => None,
            Some(v) => Some(container(v, &tensors, &values)?),
        };
        Ok(ShardIndex {
            format_version,
            checkpoint_id,
            timestamp,
            producer,
            world_size,
            shards,
            tensors,
            values,
            planner_data,
            container,
        })
    }

    /// Step 3: for each tensor in name order, its chunks: each inside the
    /// tensor with one offset and size per dimension and pointing at a
    /// shard (`Schema`), no chunk naming a shard's tensor another chunk
    /// names (`Schema`), then no two overlapping and none of the tensor's
    /// elements uncovered (`ChunkTiling`).
    fn check_chunks(&self) -> Result<(), FormatError> {
        let mut named: HashMap<(usize, &str), (&str, usize)> = HashMap::new();
        for (name, t) in &self.tensors {
            let dims = t.dims();
            for (i, c) in t.chunks.iter().enumerate() {
                let field = format!("tensors.{name}.chunks[{i}]");
                if c.offsets.len() != dims.len() || c.sizes.len() != dims.len() {
                    return Err(schema(
                        field,
                        format!(
                            "has {} offsets and {} sizes; the tensor has {} dimensions",
                            c.offsets.len(),
                            c.sizes.len(),
                            dims.len()
                        ),
                    ));
                }
                for (d, &dim) in dims.iter().enumerate() {
                    let end = c.offsets[d].checked_add(c.sizes[d]);
                    if end.is_none_or(|e| e > dim) {
                        return Err(schema(
                            field,
                            format!(
                                "lies outside the tensor: along dimension {d} it covers {}..{}+{}, the tensor 0..{}",
                                c.offsets[d], c.offsets[d], c.sizes[d], dim
                            ),
                        ));
                    }
                }
                if c.shard >= self.shards.len() {
                    return Err(schema(
                        field,
                        format!(
                            "points at shard {}; the index has {} shards",
                            c.shard,
                            self.shards.len()
                        ),
                    ));
                }
                if let Some((other, j)) = named.insert((c.shard, &c.tensor), (name, i)) {
                    return Err(schema(
                        field,
                        format!(
                            "names tensor {:?} of shard {}, as chunk {j} of tensor {other:?} does",
                            c.tensor, c.shard
                        ),
                    ));
                }
            }
            check_tiling(name, t)?;
        }
        Ok(())
    }
}

/// Whether two chunks share an element: their ranges intersect along
/// every dimension (two chunks of a rank-0 tensor always do).
fn overlap(a: &Chunk, b: &Chunk) -> bool {
    (0..a.offsets.len()).all(|d| {
        let start = a.offsets[d].max(b.offsets[d]);
        let end = (a.offsets[d] + a.sizes[d]).min(b.offsets[d] + b.sizes[d]);
        start < end
    })
}

/// The chunks of `t` (each inside it) tile it: no two overlap, and their
/// element counts add up to the tensor's. Overlaps are looked for along
/// the dimension where the chunks' offsets differ most, comparing a chunk
/// only with those that start before it ends there.
fn check_tiling(name: &str, t: &IndexTensor) -> Result<(), FormatError> {
    let chunks = &t.chunks;
    // An empty chunk shares no element (a rank-0 chunk holds one).
    let mut order: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].numel() > 0).collect();
    let sweep = (0..t.shape.len()).max_by_key(|&d| chunks.iter().map(|c| c.offsets[d]).collect::<HashSet<_>>().len());
    if let Some(d) = sweep {
        order.sort_by_key(|&i| chunks[i].offsets[d]);
    }
    for (k, &i) in order.iter().enumerate() {
        for &j in &order[k + 1..] {
            if let Some(d) = sweep {
                if chunks[j].offsets[d] >= chunks[i].offsets[d] + chunks[i].sizes[d] {
                    break;
                }
            }
            if overlap(&chunks[i], &chunks[j]) {
                let (a, b) = (i.min(j), i.max(j));
                return Err(FormatError::ChunkTiling {
                    tensor: name.into(),
                    reason: format!("chunks {} and {} overlap", chunks[a].describe(a), chunks[b].describe(b)),
                });
            }
        }
    }
    let covered: u128 = chunks.iter().map(|c| u128::from(c.numel())).sum();
    let total = u128::from(t.numel());
    if covered != total {
        return Err(FormatError::ChunkTiling {
            tensor: name.into(),
            reason: format!(
                "its chunks cover {covered} of its {total} elements: {} elements are in no chunk",
                total - covered
            ),
        });
    }
    Ok(())
}

fn shards(value: Option<Value>, world_size: u64) -> Result<Vec<ShardEntry>, FormatError> {
    let items = match value {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(schema("shards", "must be a list of objects")),
        None => return Err(schema("shards", "missing")),
    };
    let mut out: Vec<ShardEntry> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let field = format!("shards[{i}]");
        let mut o = object(Some(item), &field)?;
        only_keys(&o, &["file", "rank", "size"], &field)?;
        let file = match o.remove("file") {
            Some(Value::String(s)) if !s.is_empty() && !s.contains('/') && s != "." && s != ".." => s,
            Some(v) => {
                return Err(schema(
                    format!("{field}.file"),
                    format!("must be a file name (no \"/\", not \".\" or \"..\"), got {v}"),
                ))
            }
            None => return Err(schema(format!("{field}.file"), "missing")),
        };
        let rank = match o.remove("rank") {
            Some(v) => as_u64(&v, &format!("{field}.rank"), "an integer >= 0")?,
            None => return Err(schema(format!("{field}.rank"), "missing")),
        };
        if rank >= world_size {
            return Err(schema(
                format!("{field}.rank"),
                format!("rank {rank} is not below world_size {world_size}"),
            ));
        }
        let size = match o.remove("size") {
            Some(v) => as_u64(&v, &format!("{field}.size"), "an integer >= 0 (bytes)")?,
            None => return Err(schema(format!("{field}.size"), "missing")),
        };
        if let Some(j) = out.iter().position(|s| s.rank == rank) {
            return Err(schema(
                format!("{field}.rank"),
                format!("rank {rank} is shards[{j}]'s too"),
            ));
        }
        if let Some(j) = out.iter().position(|s| s.file == file) {
            return Err(schema(
                format!("{field}.file"),
                format!("{file:?} is shards[{j}]'s too"),
            ));
        }
        out.push(ShardEntry { file, rank, size });
    }
    Ok(out)
}

fn parse_dtype(name: &str) -> Option<Dtype> {
    DTYPES.iter().copied().find(|d| dtype_name(*d) == name)
}

fn tensors(value: Option<Value>) -> Result<BTreeMap<String, IndexTensor>, FormatError> {
    let entries = object(value, "tensors")?;
    let mut out = BTreeMap::new();
    for (name, entry) in entries {
        if name.is_empty() {
            return Err(schema("tensors", "a name is empty"));
        }
        let field = format!("tensors.{name}");
        let mut o = object(Some(entry), &field)?;
        only_keys(&o, &["dtype", "shape", "requires_grad", "chunks"], &field)?;
        let dtype = match o.remove("dtype") {
            Some(Value::String(s)) => parse_dtype(&s).ok_or_else(|| {
                schema(
                    format!("{field}.dtype"),
                    format!(
                        "{s:?} is not one of {}",
                        DTYPES.iter().map(|d| dtype_name(*d)).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?,
            Some(_) => return Err(schema(format!("{field}.dtype"), "must be a string")),
            None => return Err(schema(format!("{field}.dtype"), "missing")),
        };
        let dims = size_list(o.remove("shape"), &format!("{field}.shape"))?;
        let bytes = dims
            .iter()
            .try_fold(dtype_size(dtype) as u64, |acc, &d| acc.checked_mul(d))
            .filter(|&b| usize::try_from(b).is_ok());
        if bytes.is_none() {
            return Err(schema(
                format!("{field}.shape"),
                format!(
                    "{dims:?} of {} is more bytes than this machine can address",
                    dtype_name(dtype)
                ),
            ));
        }
        let requires_grad = match o.remove("requires_grad") {
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(schema(format!("{field}.requires_grad"), "must be true or false")),
            None => return Err(schema(format!("{field}.requires_grad"), "missing")),
        };
        let chunks = match o.remove("chunks") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(_) => return Err(schema(format!("{field}.chunks"), "must be a non-empty list of objects")),
            None => return Err(schema(format!("{field}.chunks"), "missing")),
        };
        let chunks = chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| chunk(c, &format!("{field}.chunks[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let shape = dims.iter().map(|&d| d as i64).collect();
        out.insert(
            name,
            IndexTensor {
                dtype,
                shape,
                requires_grad,
                chunks,
            },
        );
    }
    Ok(out)
}

fn chunk(value: Value, field: &str) -> Result<Chunk, FormatError> {
    let mut o = object(Some(value), field)?;
    only_keys(&o, &["offsets", "sizes", "shard", "tensor"], field)?;
    let offsets = size_list(o.remove("offsets"), &format!("{field}.offsets"))?;
    let sizes = size_list(o.remove("sizes"), &format!("{field}.sizes"))?;
    let shard = match o.remove("shard") {
        Some(v) => as_u64(&v, &format!("{field}.shard"), "an integer >= 0")?,
        None => return Err(schema(format!("{field}.shard"), "missing")),
    };
    let tensor = match o.remove("tensor") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err(schema(format!("{field}.tensor"), "must be a non-empty string")),
        None => return Err(schema(format!("{field}.tensor"), "missing")),
    };
    Ok(Chunk {
        offsets,
        sizes,
        shard: usize::try_from(shard).unwrap_or(usize::MAX),
        tensor,
    })
}

/// `planner_data`: exactly the names of `tensors` and `values`, each to a
/// non-empty list of strings and integers.
fn planner_data(
    value: Option<Value>,
    tensors: &BTreeMap<String, IndexTensor>,
    values: &Map<String, Value>,
) -> Result<Map<String, Value>, FormatError> {
    let data = object(value, "planner_data")?;
    for (name, path) in &data {
        if !tensors.contains_key(name) && !values.contains_key(name) {
            return Err(schema(
                format!("planner_data.{name}"),
                "names neither a tensor nor a value of the index",
            ));
        }
        let ok = match path {
            Value::Array(items) => !items.is_empty() && items.iter().all(|p| p.is_string() || p.is_u64() || p.is_i64()),
            _ => false,
        };
        if !ok {
            return Err(schema(
                format!("planner_data.{name}"),
                "must be a non-empty list of strings and integers",
            ));
        }
    }
    if let Some(name) = tensors.keys().chain(values.keys()).find(|n| !data.contains_key(*n)) {
        return Err(schema("planner_data", format!("has no entry for {name:?}")));
    }
    Ok(data)
}

/// `container` (FORMAT.md 13.3): its metadata is a valid `checkpoint` or
/// `inference` document without extra state, the tensors are `model.*`
/// and, with an optimizer, its `optimizer.state.<index>.<key>`, and
/// `values` is empty.
fn container(
    value: Value,
    tensors: &BTreeMap<String, IndexTensor>,
    values: &Map<String, Value>,
) -> Result<ContainerInfo, FormatError> {
    let mut o = object(Some(value), "container")?;
    only_keys(&o, &["metadata", "placements"], "container")?;
    let meta = object(o.remove("metadata"), "container.metadata")?;
    let metadata = Metadata::from_json(meta).map_err(|e| embedded(e, "container.metadata", ""))?;
    if metadata.kind == FileKind::Weights {
        return Err(schema(
            "container.metadata",
            "must be of kind checkpoint or inference, not weights",
        ));
    }
    if metadata.extra.is_some() {
        return Err(schema(
            "container.metadata",
            "holds extra state, which a sharded checkpoint does not carry",
        ));
    }
    if let Some(name) = values.keys().next() {
        return Err(schema(
            format!("values.{name}"),
            "a container checkpoint has no values (its state is in container.metadata)",
        ));
    }
    for name in tensors.keys() {
        let field = format!("tensors.{name}");
        if name.strip_prefix("model.").is_some_and(|r| !r.is_empty()) {
            continue;
        }
        if let Some(rest) = name.strip_prefix("optimizer.") {
            let optimizer = metadata
                .optimizer
                .as_ref()
                .ok_or_else(|| schema(&field, "an optimizer tensor, but container.metadata holds no optimizer"))?;
            optimizer
                .check_tensor_name(rest)
                .map_err(|reason| schema(&field, reason))?;
        } else {
            return Err(schema(
                field,
                "a container checkpoint's tensors are named model.<name> or optimizer.state.<index>.<key>",
            ));
        }
    }
    let placements = match o.remove("placements") {
        None => Map::new(),
        Some(v) => placements(object(Some(v), "container.placements")?, tensors)?,
    };
    Ok(ContainerInfo { metadata, placements })
}

/// `container.placements`: model tensor names to their device mesh's
/// shape and one placement per mesh dimension.
fn placements(
    entries: Map<String, Value>,
    tensors: &BTreeMap<String, IndexTensor>,
) -> Result<Map<String, Value>, FormatError> {
    for (name, entry) in &entries {
        let field = format!("container.placements.{name}");
        let Some(t) = tensors.get(&format!("model.{name}")) else {
            return Err(schema(field, format!("names no tensor (no model.{name} in tensors)")));
        };
        let Value::Object(o) = entry else {
            return Err(schema(field, "must be an object"));
        };
        only_keys(o, &["mesh_shape", "placements"], &field)?;
        let mesh = size_list(o.get("mesh_shape").cloned(), &format!("{field}.mesh_shape"))?;
        if mesh.is_empty() || mesh.contains(&0) {
            return Err(schema(
                format!("{field}.mesh_shape"),
                "must be a non-empty list of integers >= 1",
            ));
        }
        let Some(Value::Array(places)) = o.get("placements") else {
            return Err(schema(format!("{field}.placements"), "must be a list of strings"));
        };
        if places.len() != mesh.len() {
            return Err(schema(
                format!("{field}.placements"),
                format!("has {} entries; the mesh has {} dimensions", places.len(), mesh.len()),
            ));
        }
        for (i, p) in places.iter().enumerate() {
            let dim = p
                .as_str()
                .and_then(|s| s.strip_prefix("S(")?.strip_suffix(')')?.parse::<usize>().ok());
            let ok = matches!(p.as_str(), Some("R" | "P")) || dim.is_some_and(|d| d < t.shape.len());
            if !ok {
                return Err(schema(
                    format!("{field}.placements[{i}]"),
                    format!(
                        "must be \"R\", \"P\" or \"S(d)\" with d below the tensor's {} dimensions, got {p}",
                        t.shape.len()
                    ),
                ));
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offsets: &[u64], sizes: &[u64]) -> Chunk {
        Chunk {
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
            shard: 0,
            tensor: "t".into(),
        }
    }

    fn tensor(shape: &[i64], chunks: Vec<Chunk>) -> IndexTensor {
        IndexTensor {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            requires_grad: false,
            chunks,
        }
    }

    #[test]
    fn row_column_and_block_tilings_pass() {
        let rows = tensor(&[4, 3], vec![chunk(&[0, 0], &[2, 3]), chunk(&[2, 0], &[2, 3])]);
        let cols = tensor(&[4, 3], vec![chunk(&[0, 0], &[4, 1]), chunk(&[0, 1], &[4, 2])]);
        let blocks = tensor(
            &[4, 4],
            vec![
                chunk(&[0, 0], &[2, 2]),
                chunk(&[0, 2], &[2, 2]),
                chunk(&[2, 0], &[2, 2]),
                chunk(&[2, 2], &[2, 2]),
            ],
        );
        let scalar = tensor(&[], vec![chunk(&[], &[])]);
        let empty = tensor(&[0, 3], vec![chunk(&[0, 0], &[0, 3]), chunk(&[0, 0], &[0, 3])]);
        for t in [rows, cols, blocks, scalar, empty] {
            check_tiling("t", &t).unwrap();
        }
    }

    #[test]
    fn an_overlap_names_both_chunks_and_a_gap_counts_the_missing_elements() {
        let t = tensor(
            &[4, 4],
            vec![
                chunk(&[0, 0], &[2, 4]),
                chunk(&[2, 0], &[2, 2]),
                chunk(&[1, 2], &[3, 2]),
            ],
        );
        let e = check_tiling("w", &t).unwrap_err();
        assert_eq!(e.kind(), "ChunkTiling");
        assert!(
            e.to_string().contains("chunks 0 (offsets [0, 0], sizes [2, 4]) and 2"),
            "{e}"
        );
        let t = tensor(&[4, 4], vec![chunk(&[0, 0], &[2, 4]), chunk(&[2, 0], &[2, 3])]);
        let e = check_tiling("w", &t).unwrap_err();
        assert!(e.to_string().contains("cover 14 of its 16 elements: 2 elements"), "{e}");
        let two_scalars = tensor(&[], vec![chunk(&[], &[]), chunk(&[], &[])]);
        assert!(check_tiling("s", &two_scalars)
            .unwrap_err()
            .to_string()
            .contains("overlap"));
    }
}
