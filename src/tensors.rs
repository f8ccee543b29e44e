//! The bridge between tch tensors and the format layer: dtype mapping,
//! tensors as streaming write sources, and reading file bytes straight into
//! a tensor's storage.

use std::borrow::Cow;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::format::{Checkpoint, Dtype, TensorEntry, TensorSource};

/// The format dtype of a tch kind, if v1 has one.
pub fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Double => Dtype::F64,
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// The tch kind of a v1 dtype.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// A named tensor as a write source. A CPU contiguous tensor is written
/// from its own storage with no copy; any other is made so one at a time.
pub struct TchSource<'t> {
    name: String,
    tensor: &'t Tensor,
    dtype: Dtype,
}

impl<'t> TchSource<'t> {
    pub fn new(name: impl Into<String>, tensor: &'t Tensor) -> Result<Self> {
        let name = name.into();
        let kind = tensor.f_kind()?;
        let dtype = dtype_of(kind).ok_or_else(|| Error::StateMismatch {
            tensor: name.clone(),
            reason: format!("dtype {kind:?} cannot be stored in format v1"),
        })?;
        Ok(TchSource { name, tensor, dtype })
    }
}

impl TensorSource for TchSource<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> Vec<usize> {
        self.tensor.size().iter().map(|&d| d as usize).collect()
    }
    fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>> {
        let numel = self.tensor.numel();
        let len = numel * self.dtype.bitsize() / 8;
        if len == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        if self.tensor.device() == Device::Cpu && self.tensor.is_contiguous() {
            // SAFETY: a defined, contiguous CPU tensor owns `len` bytes at
            // data_ptr, and `self` borrows the tensor for the slice's life.
            let ptr = self.tensor.data_ptr() as *const u8;
            return Ok(Cow::Borrowed(unsafe { std::slice::from_raw_parts(ptr, len) }));
        }
        let mut out = vec![0u8; len];
        self.tensor
            .f_contiguous()
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_copy_data_u8(&mut out, numel))
            .map_err(std::io::Error::other)?;
        Ok(Cow::Owned(out))
    }
}

/// Checks that a file tensor can be loaded into `dst` (same dtype, same shape).
pub fn check_fits(entry: &TensorEntry, dst: &Tensor) -> Result<()> {
    let mismatch = |reason: String| Error::StateMismatch {
        tensor: entry.name.clone(),
        reason,
    };
    let kind = dst.f_kind()?;
    if kind_of(entry.dtype) != Some(kind) {
        return Err(mismatch(format!(
            "the file has dtype {:?}, the model {kind:?}",
            entry.dtype
        )));
    }
    let shape: Vec<i64> = entry.shape.iter().map(|&d| d as i64).collect();
    if shape != dst.size() {
        return Err(mismatch(format!(
            "the file has shape {:?}, the model {:?}",
            entry.shape,
            dst.size()
        )));
    }
    Ok(())
}

/// Copies a file tensor into `dst`, which must fit (see [`check_fits`]).
/// A CPU contiguous destination is filled in place by positioned reads;
/// any other goes through one temporary CPU tensor.
pub fn read_into(ckpt: &Checkpoint, entry: &TensorEntry, dst: &mut Tensor) -> Result<()> {
    let len = entry.byte_len() as usize;
    if len == 0 {
        return Ok(());
    }
    if dst.device() == Device::Cpu && dst.is_contiguous() {
        // SAFETY: `check_fits` established that dst holds exactly `len`
        // bytes of contiguous CPU storage; the container has exclusive use
        // of its tensors while loading.
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.data_ptr() as *mut u8, len) };
        ckpt.read_tensor_into(entry, bytes)?;
        return Ok(());
    }
    let mut staging = vec![0u8; len];
    ckpt.read_tensor_into(entry, &mut staging)?;
    let kind = kind_of(entry.dtype).expect("checked by check_fits");
    let shape: Vec<i64> = entry.shape.iter().map(|&d| d as i64).collect();
    let src = Tensor::f_from_data_size(&staging, &shape, kind)?;
    tch::no_grad(|| dst.f_copy_(&src))?;
    Ok(())
}

/// A file tensor as a new CPU tensor of its own dtype and shape.
pub fn read_new(ckpt: &Checkpoint, entry: &TensorEntry) -> Result<Tensor> {
    let kind = kind_of(entry.dtype).ok_or_else(|| Error::StateMismatch {
        tensor: entry.name.clone(),
        reason: format!("dtype {:?} has no libtorch equivalent", entry.dtype),
    })?;
    let shape: Vec<i64> = entry.shape.iter().map(|&d| d as i64).collect();
    let mut t = Tensor::f_empty(&shape, (kind, Device::Cpu))?;
    read_into(ckpt, entry, &mut t)?;
    Ok(t)
}
