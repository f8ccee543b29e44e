//! Safetensors files, both ways: one read as a state dict (its
//! `__metadata__` pairs become user metadata), and a state dict written as
//! one, the way the safetensors library lays it out, atomically.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Metadata as StMetadata, TensorInfo};
use safetensors::SafeTensors;
use serde_json::{Map, Value};

use super::publish::TempFile;
use super::{foreign, Contents, ForeignTensor, RecordedKwargs, SourceKind, TensorBytes};
use crate::error::{Error, Result};
use crate::format::{dtype_name, dtype_size, DTYPES};
use crate::progress::Tracker;

/// The `__metadata__` every file written here carries, as PyTorch's
/// writers (`safetensors.torch.save_file`, `save_pretrained`) do.
const FORMAT_METADATA: (&str, &str) = ("format", "pt");

/// The tensors of a safetensors file, ordered by their data, over one
/// read-only mapping of it, and its `__metadata__` (sorted by key).
pub(crate) fn read_tensors(path: &Path) -> Result<(Vec<ForeignTensor>, Map<String, Value>)> {
    let file = File::open(path).map_err(|e| foreign(path, format!("cannot open: {e}")))?;
    // SAFETY: a read-only mapping; as every reader of a mapped file, the
    // caller must not have the file truncated while the tensors live.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| foreign(path, format!("cannot map: {e}")))?;
    let map = Arc::new(map);
    let (n, metadata) =
        SafeTensors::read_metadata(&map).map_err(|e| foreign(path, format!("not a valid safetensors file: {e}")))?;
    let data_start = 8 + n;
    let infos = metadata.tensors();
    let mut tensors = Vec::with_capacity(infos.len());
    for name in metadata.offset_keys() {
        let info = infos[&name];
        if !DTYPES.contains(&info.dtype) {
            return Err(foreign(
                path,
                format!(
                    "tensor {name:?} has dtype {:?}, which this format cannot hold (it holds {})",
                    info.dtype,
                    DTYPES.iter().map(|d| dtype_name(*d)).collect::<Vec<_>>().join(" ")
                ),
            ));
        }
        let (start, end) = (data_start + info.data_offsets.0, data_start + info.data_offsets.1);
        if info.dtype == safetensors::Dtype::BOOL {
            if let Some(i) = map[start..end].iter().position(|&b| b > 1) {
                return Err(foreign(
                    path,
                    format!("BOOL tensor {name:?}: element {i} is neither 0 nor 1"),
                ));
            }
        }
        tensors.push(ForeignTensor {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            data: TensorBytes::Mapped {
                map: map.clone(),
                start,
                end,
            },
        });
    }
    let mut pairs: Vec<(String, String)> = metadata.metadata().clone().unwrap_or_default().into_iter().collect();
    pairs.sort();
    let user = pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    Ok((tensors, user))
}

/// Reads a safetensors file as a state dict.
pub(crate) fn read_safetensors_file(path: &Path) -> Result<Contents> {
    let (model, user) = read_tensors(path)?;
    Ok(Contents {
        source: SourceKind::Safetensors,
        model,
        model_class: None,
        optimizer: None,
        scheduler: None,
        user,
        recorded_kwargs: RecordedKwargs::default(),
        timestamp: None,
    })
}

/// The header (its length first) of a safetensors file of `tensors`, and
/// the order their data follows in: the safetensors library's (dtype,
/// largest alignment first, then name), padded with spaces to 8 bytes.
fn header(tensors: &[&ForeignTensor]) -> std::result::Result<(Vec<u8>, Vec<usize>), String> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        tensors[b]
            .dtype
            .cmp(&tensors[a].dtype)
            .then(tensors[a].name.cmp(&tensors[b].name))
    });
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for &i in &order {
        let t = tensors[i];
        let need = t
            .shape
            .iter()
            .try_fold(dtype_size(t.dtype), |acc, &d| acc.checked_mul(d))
            .filter(|&n| n == t.data.as_slice().len())
            .ok_or_else(|| format!("tensor {:?}: its bytes do not match its dtype and shape", t.name))?;
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (offset, offset + need),
            },
        ));
        offset += need;
    }
    let meta = HashMap::from([(FORMAT_METADATA.0.to_owned(), FORMAT_METADATA.1.to_owned())]);
    let metadata = StMetadata::new(Some(meta), infos).map_err(|e| e.to_string())?;
    let mut json = serde_json::to_vec(&metadata).map_err(|e| e.to_string())?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok((out, order))
}

/// Writes `tensors` to `file` as one safetensors file, advancing
/// `tracker` by each tensor's bytes.
pub(crate) fn write_tensors(tensors: &[&ForeignTensor], file: &File, path: &Path, tracker: &Tracker) -> Result<()> {
    let (head, order) = header(tensors).map_err(|reason| Error::Usage(format!("{}: {reason}", path.display())))?;
    let werr = |e: std::io::Error| Error::Format(crate::format::FormatError::io("cannot write", path, e));
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&head).map_err(werr)?;
    for i in order {
        let bytes = tensors[i].data.as_slice();
        out.write_all(bytes).map_err(werr)?;
        tracker.advance(bytes.len() as u64);
    }
    out.flush().map_err(werr)?;
    Ok(())
}

/// Writes a state dict as the safetensors file `output`, which must not
/// exist: under a temporary name beside it, fsynced, then linked to its
/// name.
pub(crate) fn write_safetensors_file(model: &[ForeignTensor], output: &Path, tracker: &Tracker) -> Result<()> {
    let tmp = TempFile::for_output(output)?;
    let tensors: Vec<&ForeignTensor> = model.iter().collect();
    write_tensors(&tensors, &tmp.file, &tmp.path, tracker)?;
    tmp.publish()
}
