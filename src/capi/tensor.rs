//! Tensor handles: a libtorch tensor, built from and read into plain
//! buffers (C, Go), or wrapping a C++ `torch::Tensor` without a copy.

use std::ffi::c_void;

use tch::{Device, Kind, Tensor};

use super::*;
use crate::format::{dtype_size, Dtype};
use crate::tch_bridge::{dtype_of, kind_of};

/// An element type (one of the `PTS_DTYPE_*` values): format v1's dtypes.
pub type pts_dtype_t = u32;

/// 64-bit float (`torch.float64`, safetensors `F64`).
pub const PTS_DTYPE_F64: pts_dtype_t = 1;
/// 32-bit float (`torch.float32`, `F32`).
pub const PTS_DTYPE_F32: pts_dtype_t = 2;
/// 16-bit IEEE float (`torch.float16`, `F16`).
pub const PTS_DTYPE_F16: pts_dtype_t = 3;
/// bfloat16 (`torch.bfloat16`, `BF16`).
pub const PTS_DTYPE_BF16: pts_dtype_t = 4;
/// 64-bit signed integer (`torch.int64`, `I64`).
pub const PTS_DTYPE_I64: pts_dtype_t = 5;
/// 32-bit signed integer (`torch.int32`, `I32`).
pub const PTS_DTYPE_I32: pts_dtype_t = 6;
/// 16-bit signed integer (`torch.int16`, `I16`).
pub const PTS_DTYPE_I16: pts_dtype_t = 7;
/// 8-bit signed integer (`torch.int8`, `I8`).
pub const PTS_DTYPE_I8: pts_dtype_t = 8;
/// 8-bit unsigned integer (`torch.uint8`, `U8`).
pub const PTS_DTYPE_U8: pts_dtype_t = 9;
/// Boolean, one byte per element (`torch.bool`, `BOOL`).
pub const PTS_DTYPE_BOOL: pts_dtype_t = 10;

const DTYPE_TABLE: [(pts_dtype_t, Dtype); 10] = [
    (PTS_DTYPE_F64, Dtype::F64),
    (PTS_DTYPE_F32, Dtype::F32),
    (PTS_DTYPE_F16, Dtype::F16),
    (PTS_DTYPE_BF16, Dtype::BF16),
    (PTS_DTYPE_I64, Dtype::I64),
    (PTS_DTYPE_I32, Dtype::I32),
    (PTS_DTYPE_I16, Dtype::I16),
    (PTS_DTYPE_I8, Dtype::I8),
    (PTS_DTYPE_U8, Dtype::U8),
    (PTS_DTYPE_BOOL, Dtype::BOOL),
];

pub(crate) fn dtype_from_c(d: pts_dtype_t) -> CResult<Dtype> {
    DTYPE_TABLE
        .iter()
        .find(|(c, _)| *c == d)
        .map(|(_, f)| *f)
        .ok_or_else(|| pts_error_t::new(PTS_ERROR_INVALID_ARGUMENT, format!("unknown dtype code {d}")))
}

pub(crate) fn dtype_to_c(d: Dtype) -> pts_dtype_t {
    DTYPE_TABLE
        .iter()
        .find(|(_, f)| *f == d)
        .map(|(c, _)| *c)
        .expect("every v1 dtype has a code")
}

/// A tensor: a reference to a libtorch tensor (shallow: two handles may
/// share storage, as two `torch::Tensor`s do). Owned by whoever received
/// it; free it with `pts_tensor_free`. `const pts_tensor_t *` may be read
/// from several threads; writes to shared storage need the caller's
/// synchronization, as in LibTorch.
pub struct pts_tensor_t {
    pub(crate) tensor: Tensor,
}

impl pts_tensor_t {
    pub(crate) fn boxed(tensor: Tensor) -> *mut pts_tensor_t {
        Box::into_raw(Box::new(pts_tensor_t { tensor }))
    }

    fn kind_and_dtype(&self) -> CResult<(Kind, Dtype)> {
        let kind = self.tensor.f_kind()?;
        let dtype = dtype_of(kind).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("tensor dtype {kind:?} has no pts_dtype_t"),
            )
        })?;
        Ok((kind, dtype))
    }

    fn nbytes(&self) -> CResult<usize> {
        let (_, dtype) = self.kind_and_dtype()?;
        Ok(self.tensor.numel() * dtype_size(dtype))
    }
}

/// A shape argument `(shape, ndim)`: NULL is accepted when `ndim` is 0 (a
/// scalar).
unsafe fn shape_arg<'a>(shape: *const i64, ndim: usize) -> CResult<&'a [i64]> {
    if ndim == 0 {
        return Ok(&[]);
    }
    if shape.is_null() {
        return Err(pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, "argument shape is NULL"));
    }
    // SAFETY: the caller guarantees ndim readable int64_t at shape.
    Ok(unsafe { std::slice::from_raw_parts(shape, ndim) })
}

/// Shape (dims, ndim) as libtorch sizes, checking that the byte length
/// matches.
fn checked_shape(dtype: Dtype, shape: &[i64], len: usize) -> CResult<()> {
    let mut numel: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| {
            pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("negative dimension {d} in shape {shape:?}"),
            )
        })?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| pts_error_t::new(PTS_ERROR_INVALID_ARGUMENT, format!("shape {shape:?} overflows")))?;
    }
    let want = numel
        .checked_mul(dtype_size(dtype))
        .ok_or_else(|| pts_error_t::new(PTS_ERROR_INVALID_ARGUMENT, format!("shape {shape:?} overflows")))?;
    if want != len {
        return Err(pts_error_t::new(
            PTS_ERROR_INVALID_ARGUMENT,
            format!("shape {shape:?} of {dtype:?} needs {want} bytes, the buffer has {len}"),
        ));
    }
    Ok(())
}

/// A new CPU tensor with a copy of `len` bytes at `data` (native byte
/// order, C-contiguous), of dtype `dtype` and shape `shape[0..ndim]`
/// (`ndim` 0 is a scalar). `len` must be exactly the shape's byte size.
/// On success `*out` is a new tensor the caller frees; the buffer is not
/// retained.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_from_buffer(
    dtype: pts_dtype_t,
    shape: *const i64,
    ndim: usize,
    data: *const c_void,
    len: usize,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let out = Out::new(out, "out")?;
        let dtype = dtype_from_c(dtype)?;
        let shape = unsafe { shape_arg(shape, ndim) }?;
        checked_shape(dtype, shape, len)?;
        let bytes = unsafe { arg_bytes(data.cast(), len, "data") }?;
        let kind = kind_of(dtype).expect("v1 dtypes map to kinds");
        let tensor = Tensor::f_empty(shape, (kind, Device::Cpu))?;
        if len > 0 {
            // SAFETY: a fresh contiguous CPU tensor of exactly `len` bytes.
            let dst = unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut u8, len) };
            dst.copy_from_slice(bytes);
        }
        out.write(pts_tensor_t::boxed(tensor));
        Ok(())
    })
}

/// A new CPU tensor of dtype `dtype` and shape `shape[0..ndim]` whose
/// memory is NOT initialized: it costs no resident memory until written.
/// For a model factory called with `loading` true, whose values all come
/// from the file: the library checks the model against the file before it
/// writes a byte, so a file whose kwargs describe a huge model is refused
/// without that memory ever being touched. An allocation libtorch refuses
/// is `PTS_ERROR_TORCH`. The caller frees `*out`.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_empty(
    dtype: pts_dtype_t,
    shape: *const i64,
    ndim: usize,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let out = Out::new(out, "out")?;
        let dtype = dtype_from_c(dtype)?;
        let shape = unsafe { shape_arg(shape, ndim) }?;
        if let Some(d) = shape.iter().find(|&&d| d < 0) {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("negative dimension {d} in shape {shape:?}"),
            ));
        }
        let kind = kind_of(dtype).expect("v1 dtypes map to kinds");
        out.write(pts_tensor_t::boxed(Tensor::f_empty(shape, (kind, Device::Cpu))?));
        Ok(())
    })
}

/// The tensor's dtype.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_dtype(tensor: *const pts_tensor_t, out: *mut pts_dtype_t) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_ref(tensor, "tensor") }?;
        let out = Out::new(out, "out")?;
        out.write(dtype_to_c(t.kind_and_dtype()?.1));
        Ok(())
    })
}

/// The tensor's number of dimensions (0 for a scalar).
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_ndim(tensor: *const pts_tensor_t, out: *mut usize) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_ref(tensor, "tensor") }?;
        let out = Out::new(out, "out")?;
        out.write(t.tensor.dim());
        Ok(())
    })
}

/// Writes the tensor's `ndim` sizes to `dims[0..ndim]`; `capacity` is the
/// room at `dims` and must be at least `ndim` (see `pts_tensor_ndim`).
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_shape(
    tensor: *const pts_tensor_t,
    dims: *mut i64,
    capacity: usize,
) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_ref(tensor, "tensor") }?;
        let size = t.tensor.size();
        if capacity < size.len() {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("the tensor has {} dimensions, dims has room for {capacity}", size.len()),
            ));
        }
        if !size.is_empty() {
            if dims.is_null() {
                return Err(pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, "argument dims is NULL"));
            }
            // SAFETY: checked non-null; the caller guarantees `capacity` slots.
            unsafe { std::ptr::copy_nonoverlapping(size.as_ptr(), dims, size.len()) };
        }
        Ok(())
    })
}

/// The tensor's size in bytes (elements times the dtype's size).
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_nbytes(tensor: *const pts_tensor_t, out: *mut usize) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_ref(tensor, "tensor") }?;
        let out = Out::new(out, "out")?;
        out.write(t.nbytes()?);
        Ok(())
    })
}

/// Copies the tensor's elements into `data` (`len` bytes, which must equal
/// `pts_tensor_nbytes`), C-contiguous in native byte order, from whatever
/// device and layout the tensor has.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_copy_to_buffer(
    tensor: *const pts_tensor_t,
    data: *mut c_void,
    len: usize,
) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_ref(tensor, "tensor") }?;
        let nbytes = t.nbytes()?;
        if len != nbytes {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("the tensor has {nbytes} bytes, the buffer {len}"),
            ));
        }
        let dst = unsafe { arg_bytes_mut(data.cast(), len, "data") }?;
        if len == 0 {
            return Ok(());
        }
        let src = t.tensor.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
        // SAFETY: a contiguous CPU tensor of exactly `len` bytes, alive
        // for this scope.
        let bytes = unsafe { std::slice::from_raw_parts(src.data_ptr() as *const u8, len) };
        dst.copy_from_slice(bytes);
        Ok(())
    })
}

/// Overwrites the tensor's elements in place with `len` bytes at `data`
/// (native byte order, C-contiguous, the tensor's dtype; `len` must equal
/// `pts_tensor_nbytes`), on whatever device the tensor is, without
/// recording it for autograd (as under `torch.no_grad()`): how a C or Go
/// optimizer step updates a parameter or its state. Every handle sharing
/// the storage sees the new values.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_copy_from_buffer(
    tensor: *mut pts_tensor_t,
    data: *const c_void,
    len: usize,
) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_mut(tensor, "tensor") }?;
        let (kind, _) = t.kind_and_dtype()?;
        let nbytes = t.nbytes()?;
        if len != nbytes {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("the tensor has {nbytes} bytes, the buffer {len}"),
            ));
        }
        let bytes = unsafe { arg_bytes(data.cast(), len, "data") }?;
        if len == 0 {
            return Ok(());
        }
        let src = Tensor::f_empty(t.tensor.size(), (kind, Device::Cpu))?;
        // SAFETY: a fresh contiguous CPU tensor of exactly `len` bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(src.data_ptr() as *mut u8, len) };
        dst.copy_from_slice(bytes);
        let _guard = tch::no_grad_guard();
        t.tensor.f_copy_(&src)?;
        Ok(())
    })
}

/// PyTorch's `tensor.backward(gradient)`: back-propagates `gradient` (the
/// tensor's shape) through the graph that computed `tensor`, adding to
/// the `.grad` of every leaf that requires gradients. On a parameter
/// handle (`pts_container_parameter`) it adds `gradient` to the
/// parameter's `.grad`: how a C or Go caller that computes gradients
/// itself hands them to the optimizer before `pts_container_step`.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_backward(
    tensor: *const pts_tensor_t,
    gradient: *const pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_ref(tensor, "tensor") }?;
        let g = unsafe { arg_ref(gradient, "gradient") }?;
        if !t.tensor.requires_grad() {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                "the tensor does not require gradients: it is not a parameter, nor computed from one",
            ));
        }
        if g.tensor.size() != t.tensor.size() {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!(
                    "the gradient has shape {:?}, the tensor {:?}",
                    g.tensor.size(),
                    t.tensor.size()
                ),
            ));
        }
        let g = g
            .tensor
            .f_detach()?
            .f_to_device(t.tensor.device())?
            .f_to_kind(t.tensor.f_kind()?)?;
        // d/dt sum(t * g) = g, bit for bit: the vector-Jacobian product.
        t.tensor.f_mul(&g)?.f_sum(t.tensor.f_kind()?)?.f_backward()?;
        Ok(())
    })
}

/// Wraps a C++ `torch::Tensor` with no copy: `torch_tensor` points to a
/// `torch::Tensor` (an `at::Tensor`) of the same libtorch this library
/// links; the new handle shares its storage and autograd state, and the
/// caller's tensor stays the caller's. For C++ (the header-only wrapper
/// uses it); C and Go use `pts_tensor_from_buffer`.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_from_torch(
    torch_tensor: *const c_void,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        if torch_tensor.is_null() {
            return Err(pts_error_t::new(
                PTS_ERROR_NULL_ARGUMENT,
                "argument torch_tensor is NULL",
            ));
        }
        let out = Out::new(out, "out")?;
        // SAFETY: the caller passes a live at::Tensor*; clone_from_ptr
        // takes a new reference to its TensorImpl and leaves it the caller's.
        let tensor = unsafe { Tensor::clone_from_ptr(torch_tensor as *mut torch_sys::C_tensor) };
        out.write(pts_tensor_t::boxed(tensor));
        Ok(())
    })
}

/// The `torch::Tensor *` (an `at::Tensor *`) inside the handle, for C++
/// to copy (a reference-count increment, no data copy). Borrowed: valid
/// until the handle is freed.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_torch_ptr(
    tensor: *const pts_tensor_t,
    out: *mut *const c_void,
) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_ref(tensor, "tensor") }?;
        let out = Out::new(out, "out")?;
        out.write(t.tensor.as_ptr().cast());
        Ok(())
    })
}

/// Frees a tensor handle (the storage lives on while anything else
/// references it). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_free(tensor: *mut pts_tensor_t) {
    if !tensor.is_null() {
        boundary_or((), || {
            // SAFETY: a handle this library allocated, freed once.
            drop(unsafe { Box::from_raw(tensor) })
        })
    }
}

/// Sets `tensor`'s gradient (its `.grad`) to a copy of `grad`, which must
/// have the tensor's shape and dtype; with `grad` NULL, clears it
/// (PyTorch's `grad = None`, what `zero_grad` does). `tensor` must require
/// gradients: a parameter from `pts_container_parameter` does. For a C
/// closure of `pts_container_step_closure`, which has no autograd.
#[no_mangle]
pub unsafe extern "C" fn pts_tensor_set_grad(tensor: *mut pts_tensor_t, grad: *const pts_tensor_t) -> *mut pts_error_t {
    boundary(|| {
        let t = unsafe { arg_mut(tensor, "tensor") }?;
        let invalid = |m: String| pts_error_t::new(PTS_ERROR_INVALID_ARGUMENT, m);
        if !t.tensor.requires_grad() {
            return Err(invalid("the tensor does not require gradients".into()));
        }
        // SAFETY: NULL or a live tensor handle (header contract).
        let grad = unsafe { grad.as_ref() };
        if let Some(g) = grad {
            if g.tensor.size() != t.tensor.size() || g.tensor.kind() != t.tensor.kind() {
                return Err(invalid(format!(
                    "the gradient is {:?} {:?}, the tensor {:?} {:?}",
                    g.tensor.kind(),
                    g.tensor.size(),
                    t.tensor.kind(),
                    t.tensor.size()
                )));
            }
        }
        crate::optim::kernels::clear_grad(&mut t.tensor)?;
        if let Some(g) = grad {
            // d/dt sum(t * g) = 1 * g: exactly g.
            let g = g.tensor.detach();
            let sum = tch::with_grad(|| t.tensor.f_mul(&g)?.f_sum(None::<Kind>));
            sum?.f_backward()?;
        }
        Ok(())
    })
}
