//! The bridge between tch tensors and the format layer: dtype mapping,
//! tensors as streaming write sources, tensors that point into a
//! checkpoint's private mapping (zero-copy loads), and copies of file
//! bytes straight from the mapping into existing tensors.

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void};

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::error::{Error, Result};
use crate::format::{threads_for, Checkpoint, Dtype, PrivateMapping, TensorEntry, TensorSource};
use crate::progress::Tracker;

extern "C" {
    // src/borrowed_memory.cpp
    fn pts_tensor_over_memory(
        data: *mut c_void,
        sizes: *const i64,
        ndim: usize,
        dtype: c_int,
        release: unsafe extern "C" fn(*mut c_void),
        context: *mut c_void,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

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

/// libtorch's `c10::ScalarType` number of a v1 kind.
fn scalar_type(kind: Kind) -> c_int {
    match kind {
        Kind::Uint8 => 0,
        Kind::Int8 => 1,
        Kind::Int16 => 2,
        Kind::Int => 3,
        Kind::Int64 => 4,
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::Bool => 11,
        Kind::BFloat16 => 15,
        other => unreachable!("{other:?} is not a format v1 kind"),
    }
}

/// Drops the mapping reference a tensor's storage held.
unsafe extern "C" fn release_mapping(context: *mut c_void) {
    // SAFETY: `context` is the Box made in `mapped`, released once by the
    // storage that owned it.
    drop(unsafe { Box::from_raw(context.cast::<PrivateMapping>()) });
}

fn shape_of(entry: &TensorEntry) -> Vec<i64> {
    entry.shape.iter().map(|&d| d as i64).collect()
}

/// A file tensor as a CPU tensor whose bytes ARE the file's bytes in the
/// checkpoint's private mapping: no copy. The mapping stays alive while
/// the tensor's storage does; writing to the tensor (training) changes
/// private pages only, never the file. A tensor whose bytes are not
/// aligned to its element size is copied instead.
pub fn mapped(ckpt: &Checkpoint, entry: &TensorEntry) -> Result<Tensor> {
    let kind = kind_of(entry.dtype).ok_or_else(|| Error::StateMismatch {
        tensor: entry.name.clone(),
        reason: format!("dtype {:?} has no libtorch equivalent", entry.dtype),
    })?;
    if entry.start % kind.elt_size_in_bytes() as u64 != 0 {
        return read_new(ckpt, entry);
    }
    let map = ckpt.private_mapping();
    // SAFETY: `start` lies inside the mapping (validated by the reader).
    let data = unsafe { map.as_mut_ptr().add(entry.start as usize) };
    let shape = shape_of(entry);
    let context = Box::into_raw(Box::new(map)).cast::<c_void>();
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `data` holds `entry.byte_len()` bytes of this dtype and
    // shape for as long as `context` (a mapping reference) is alive; the
    // shim owns `context` from this call on and releases it exactly once.
    let error = unsafe {
        pts_tensor_over_memory(
            data.cast(),
            shape.as_ptr(),
            shape.len(),
            scalar_type(kind),
            release_mapping,
            context,
            &mut out,
        )
    };
    crate::optim::kernels::check(error)?;
    crate::optim::kernels::owned(out)
}

/// A raw destination pointer, moved to a copying thread.
struct Destination(*mut u8);
// SAFETY: each job writes a disjoint range of a tensor the caller lends
// exclusively for the copy.
unsafe impl Send for Destination {}

/// Copies file tensors into tensors that fit them (see [`check_fits`]),
/// straight from the checkpoint's mapping: no staging buffer, and on
/// several threads when there is enough to copy. CPU contiguous
/// destinations are written in place; any other is copied from a mapped
/// view of the file tensor. The source pages are dropped from the
/// mapping as they are copied, so a copy does not hold the file's size in
/// resident memory on top of its destination.
pub fn copy_into(ckpt: &Checkpoint, pairs: &mut [(&TensorEntry, &mut Tensor)]) -> Result<()> {
    copy_into_tracked(ckpt, pairs, &Tracker::silent(0))
}

/// [`copy_into`], advancing `tracker` by the bytes of each piece copied
/// (from the copying threads).
pub fn copy_into_tracked(
    ckpt: &Checkpoint,
    pairs: &mut [(&TensorEntry, &mut Tensor)],
    tracker: &Tracker,
) -> Result<()> {
    const PIECE: usize = 8 << 20;
    let map = ckpt.private_mapping();
    let mut jobs: Vec<(usize, &[u8], Destination)> = Vec::new();
    for (entry, dst) in pairs.iter_mut() {
        let len = entry.byte_len() as usize;
        if len == 0 {
            continue;
        }
        if dst.device() != Device::Cpu || !dst.is_contiguous() {
            let src = mapped(ckpt, entry)?;
            tch::no_grad(|| dst.f_copy_(&src))?;
            tracker.advance(len as u64);
            continue;
        }
        let src = ckpt.tensor_bytes(entry);
        let base = dst.data_ptr().cast::<u8>();
        for (i, piece) in src.chunks(PIECE).enumerate() {
            // SAFETY: `check_fits` established that dst holds exactly
            // `len` bytes of contiguous CPU storage.
            let dst = Destination(unsafe { base.add(i * PIECE) });
            jobs.push((entry.start as usize + i * PIECE, piece, dst));
        }
    }
    let total: usize = jobs.iter().map(|(_, src, _)| src.len()).sum();
    let threads = threads_for(total);
    let run = |jobs: Vec<(usize, &[u8], Destination)>| {
        for (at, src, dst) in jobs {
            // SAFETY: see `Destination`; source and destination never
            // overlap (one is the file's mapping, the other a tensor).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0, src.len()) };
            // Whole pages of this tensor's bytes only: no other tensor
            // points into them.
            map.release(at, at + src.len());
            tracker.advance(src.len() as u64);
        }
    };
    if threads == 1 {
        run(jobs);
        return Ok(());
    }
    let mut shares: Vec<Vec<(usize, &[u8], Destination)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        shares[i % threads].push(job);
    }
    std::thread::scope(|s| {
        for share in shares {
            s.spawn(|| run(share));
        }
    });
    Ok(())
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

/// A file tensor as a new CPU tensor of its own dtype and shape, in memory
/// of its own (copied from the mapping).
pub fn read_new(ckpt: &Checkpoint, entry: &TensorEntry) -> Result<Tensor> {
    read_new_tracked(ckpt, entry, &Tracker::silent(0))
}

/// [`read_new`], advancing `tracker` as the bytes are copied.
pub fn read_new_tracked(ckpt: &Checkpoint, entry: &TensorEntry, tracker: &Tracker) -> Result<Tensor> {
    let kind = kind_of(entry.dtype).ok_or_else(|| Error::StateMismatch {
        tensor: entry.name.clone(),
        reason: format!("dtype {:?} has no libtorch equivalent", entry.dtype),
    })?;
    let mut t = Tensor::f_empty(shape_of(entry), (kind, Device::Cpu))?;
    copy_into_tracked(ckpt, &mut [(entry, &mut t)], tracker)?;
    Ok(t)
}
