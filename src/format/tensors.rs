//! The safetensors members: v1's dtypes, header construction for the
//! writer, and validation of a header before any tensor byte is handed out.

use std::collections::HashMap;

use safetensors::tensor::{Metadata, TensorInfo};
pub use safetensors::Dtype;
use serde_json::Value;

use super::{json, FormatError};

/// Largest safetensors header a reader accepts (the safetensors crate's own cap).
pub const MAX_TENSOR_HEADER_BYTES: u64 = 100_000_000;

/// The dtypes v1 allows, by their safetensors names.
pub const DTYPES: &[Dtype] = &[
    Dtype::F64,
    Dtype::F32,
    Dtype::F16,
    Dtype::BF16,
    Dtype::I64,
    Dtype::I32,
    Dtype::I16,
    Dtype::I8,
    Dtype::U8,
    Dtype::BOOL,
];

/// Bytes per element of a v1 dtype.
pub fn dtype_size(d: Dtype) -> usize {
    d.bitsize() / 8
}

/// The safetensors name of a dtype (`"F32"`, `"BOOL"`, ...).
pub fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

fn parse_dtype(s: &str) -> Option<Dtype> {
    DTYPES.iter().copied().find(|d| dtype_name(*d) == s)
}

/// One tensor of a member, with its data's absolute position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute file offset of the first data byte.
    pub start: u64,
    /// Absolute file offset one past the last data byte.
    pub end: u64,
}

impl TensorEntry {
    pub fn byte_len(&self) -> u64 {
        self.end - self.start
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The bytes of a safetensors header for the given tensors, and the order in
/// which their data must follow. Tensors are ordered as the safetensors
/// crate orders them (by dtype alignment, largest first, then by name), and
/// the header is padded with spaces so that tensor data starts 64 bytes
/// after a 64-byte aligned member start.
pub(crate) fn build_header(
    member: &str,
    tensors: &[(String, Dtype, Vec<usize>)],
) -> Result<(Vec<u8>, Vec<usize>), FormatError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[b].1.cmp(&tensors[a].1).then(tensors[a].0.cmp(&tensors[b].0)));
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    let mut seen = std::collections::HashSet::new();
    for &i in &order {
        let (name, dtype, shape) = &tensors[i];
        if !DTYPES.contains(dtype) {
            return Err(FormatError::InvalidInput(format!(
                "{member}: tensor {name:?} has dtype {dtype:?}, not one of v1's dtypes"
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(FormatError::InvalidInput(format!(
                "{member}: tensor name {name:?} twice"
            )));
        }
        let n = shape
            .iter()
            .try_fold(dtype_size(*dtype), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| FormatError::InvalidInput(format!("{member}: tensor {name:?} is too large")))?;
        infos.push((
            name.clone(),
            TensorInfo {
                dtype: *dtype,
                shape: shape.clone(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let metadata = Metadata::new(None, infos).map_err(|e| FormatError::InvalidInput(format!("{member}: {e}")))?;
    let mut json = serde_json::to_vec(&metadata).map_err(|e| FormatError::InvalidInput(e.to_string()))?;
    let padded = (8 + json.len()).next_multiple_of(64) - 8;
    json.resize(padded, b' ');
    if json.len() as u64 > MAX_TENSOR_HEADER_BYTES {
        return Err(FormatError::InvalidInput(format!(
            "{member}: safetensors header of {} bytes exceeds {MAX_TENSOR_HEADER_BYTES}",
            json.len()
        )));
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok((out, order))
}

/// Validates a whole safetensors member (`bytes`, which may be an mmap:
/// only the header and BOOL tensors are read) whose first byte is at
/// absolute offset `base`.
/// Returns the tensors ordered by data offset.
pub(crate) fn validate_member(member: &str, base: u64, bytes: &[u8]) -> Result<Vec<TensorEntry>, FormatError> {
    let header_err = |reason: String| FormatError::TensorHeader {
        member: member.into(),
        reason,
    };
    let size = bytes.len() as u64;
    if size < 8 {
        return Err(header_err(format!(
            "member is {size} bytes, shorter than the 8-byte header length"
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_TENSOR_HEADER_BYTES {
        return Err(FormatError::TooLarge {
            what: format!("{member} header"),
            len: n,
            max: MAX_TENSOR_HEADER_BYTES,
        });
    }
    if 8 + n > size {
        return Err(header_err(format!(
            "header length {n} runs past the end of the {size}-byte member"
        )));
    }
    let obj = json::parse_object(&bytes[8..8 + n as usize]).map_err(header_err)?;
    let data_base = base + 8 + n;
    let data_len = size - 8 - n;
    let mut entries = Vec::with_capacity(obj.len());
    for (name, info) in &obj {
        if name == "__metadata__" {
            let ok = info.as_object().is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err(header_err("__metadata__ must map strings to strings".into()));
            }
            continue;
        }
        entries.push(parse_entry(member, name, info, data_base, data_len)?);
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut cursor = data_base;
    let mut prev: Option<&TensorEntry> = None;
    for e in &entries {
        let data_err = |reason: String| FormatError::TensorData {
            member: member.into(),
            tensor: e.name.clone(),
            start: e.start - data_base,
            end: e.end - data_base,
            reason,
        };
        if e.start < cursor {
            let p = prev.expect("cursor moved only after a tensor");
            return Err(data_err(format!(
                "overlaps tensor {:?} (bytes {}..{})",
                p.name,
                p.start - data_base,
                p.end - data_base
            )));
        }
        if e.start > cursor {
            return Err(data_err(format!("{} unclaimed bytes before it", e.start - cursor)));
        }
        cursor = e.end;
        prev = Some(e);
    }
    if cursor != data_base + data_len {
        return Err(header_err(format!(
            "{} bytes of tensor data are claimed by no tensor",
            data_base + data_len - cursor
        )));
    }
    // A BOOL byte other than 0 or 1 is no bool: libtorch would hand the
    // value on as is, and the Python reader refuses it.
    for e in entries.iter().filter(|e| e.dtype == Dtype::BOOL) {
        let data = &bytes[(e.start - base) as usize..(e.end - base) as usize];
        if let Some(i) = data.iter().position(|&b| b > 1) {
            return Err(FormatError::TensorData {
                member: member.into(),
                tensor: e.name.clone(),
                start: e.start - data_base,
                end: e.end - data_base,
                reason: format!("BOOL element {i} is byte {}, not 0 or 1", data[i]),
            });
        }
    }
    // Second opinion from the reference implementation; it agrees whenever
    // the checks above pass, so a disagreement is reported, not ignored.
    safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| header_err(format!("rejected by the safetensors crate: {e}")))?;
    Ok(entries)
}

fn parse_entry(
    member: &str,
    name: &str,
    info: &Value,
    data_base: u64,
    data_len: u64,
) -> Result<TensorEntry, FormatError> {
    let header_err = |reason: String| FormatError::TensorHeader {
        member: member.into(),
        reason: format!("tensor {name:?}: {reason}"),
    };
    let obj = info
        .as_object()
        .ok_or_else(|| header_err("entry is not an object".into()))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        return Err(header_err(format!("unknown field {k:?}")));
    }
    let dtype_str = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| header_err("dtype missing or not a string".into()))?;
    let dtype = parse_dtype(dtype_str).ok_or_else(|| FormatError::UnsupportedDtype {
        member: member.into(),
        tensor: name.into(),
        dtype: dtype_str.into(),
    })?;
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| header_err("shape missing or not an array".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| header_err("shape has an entry that is not a non-negative integer".into()))?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| header_err("data_offsets must be two non-negative integers".into()))?;
    let (s, e) = offsets;
    let data_err = |reason: String| FormatError::TensorData {
        member: member.into(),
        tensor: name.into(),
        start: s,
        end: e,
        reason,
    };
    if e < s {
        return Err(data_err("end before start".into()));
    }
    if e > data_len {
        return Err(data_err(format!(
            "out of range: the member has {data_len} bytes of tensor data"
        )));
    }
    let need = shape
        .iter()
        .try_fold(dtype_size(dtype) as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| data_err(format!("shape {shape:?} overflows")))?;
    if need != e - s {
        return Err(data_err(format!(
            "shape {shape:?} of {dtype_str} needs {need} bytes, the offsets give {}",
            e - s
        )));
    }
    Ok(TensorEntry {
        name: name.into(),
        dtype,
        shape,
        start: data_base + s,
        end: data_base + e,
    })
}

/// Looks a tensor up by name among a member's entries.
pub(crate) fn index_by_name(entries: &[TensorEntry]) -> HashMap<String, usize> {
    entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect()
}
