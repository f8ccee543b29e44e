//! Safe wrappers over src/optim/kernels.cpp: the ATen ops with the scalar
//! arguments (`alpha`, `value`, `beta`, a clamp's lone `min`) and the
//! `linalg_vector_norm` that tch 0.26 leaves out, and clearing a
//! gradient. With `tch_bridge` (tensors over a mapping) and `capi`, the only
//! FFI in the crate; see the C++ file for why these exist.

use std::ffi::{c_char, CStr};

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Error, Result};

extern "C" {
    fn pts_kernel_free_error(error: *mut c_char);
    fn pts_kernel_add(s: *const C_tensor, other: *const C_tensor, alpha: f64, out: *mut *mut C_tensor) -> *mut c_char;
    fn pts_kernel_add_(s: *mut C_tensor, other: *const C_tensor, alpha: f64) -> *mut c_char;
    fn pts_kernel_addcmul(
        s: *const C_tensor,
        t1: *const C_tensor,
        t2: *const C_tensor,
        value: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn pts_kernel_addcmul_(s: *mut C_tensor, t1: *const C_tensor, t2: *const C_tensor, value: f64) -> *mut c_char;
    fn pts_kernel_addcdiv_(s: *mut C_tensor, t1: *const C_tensor, t2: *const C_tensor, value: f64) -> *mut c_char;
    fn pts_kernel_addmm(
        s: *const C_tensor,
        mat1: *const C_tensor,
        mat2: *const C_tensor,
        beta: f64,
        alpha: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn pts_kernel_clamp_min(s: *const C_tensor, min: f64, out: *mut *mut C_tensor) -> *mut c_char;
    fn pts_kernel_clamp_min_(s: *mut C_tensor, min: f64) -> *mut c_char;
    fn pts_kernel_vector_norm(
        s: *const C_tensor,
        dim: *const i64,
        dim_len: i64,
        keepdim: bool,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn pts_kernel_clear_grad(s: *mut C_tensor) -> *mut c_char;
}

/// Turns the shim's error string into an error, freeing it.
pub(crate) fn check(error: *mut c_char) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string malloc'ed by
    // the shim, owned by us from here and freed once.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { pts_kernel_free_error(error) };
    Err(Error::Torch(crate::error::torch_message(&message)))
}

/// Takes ownership of a tensor the shim allocated.
pub(crate) fn owned(out: *mut C_tensor) -> Result<Tensor> {
    if out.is_null() {
        return Err(Error::Torch("kernel returned no tensor".into()));
    }
    // SAFETY: the shim returns a heap at::Tensor that nothing else owns;
    // tch's Tensor frees it on drop.
    Ok(unsafe { Tensor::from_ptr(out) })
}

// SAFETY (every call below): tch tensors are valid at::Tensor handles for
// the duration of the call; the shim catches every C++ exception.

/// `a + alpha * b` (torch.add with alpha).
pub fn add(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    check(unsafe { pts_kernel_add(a.as_ptr(), b.as_ptr(), alpha, &mut out) })?;
    owned(out)
}

/// `a += alpha * b` (Tensor.add_ with alpha).
pub fn add_(a: &mut Tensor, b: &Tensor, alpha: f64) -> Result<()> {
    check(unsafe { pts_kernel_add_(a.as_mut_ptr(), b.as_ptr(), alpha) })
}

/// `a + value * t1 * t2` (torch.addcmul with value).
pub fn addcmul(a: &Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    check(unsafe { pts_kernel_addcmul(a.as_ptr(), t1.as_ptr(), t2.as_ptr(), value, &mut out) })?;
    owned(out)
}

/// `a += value * t1 * t2` (Tensor.addcmul_ with value).
pub fn addcmul_(a: &mut Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Result<()> {
    check(unsafe { pts_kernel_addcmul_(a.as_mut_ptr(), t1.as_ptr(), t2.as_ptr(), value) })
}

/// `a += value * t1 / t2` (Tensor.addcdiv_ with value).
pub fn addcdiv_(a: &mut Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Result<()> {
    check(unsafe { pts_kernel_addcdiv_(a.as_mut_ptr(), t1.as_ptr(), t2.as_ptr(), value) })
}

/// `beta * a + alpha * (m1 @ m2)` (torch.addmm with beta and alpha).
pub fn addmm(a: &Tensor, m1: &Tensor, m2: &Tensor, beta: f64, alpha: f64) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    check(unsafe { pts_kernel_addmm(a.as_ptr(), m1.as_ptr(), m2.as_ptr(), beta, alpha, &mut out) })?;
    owned(out)
}

/// `a.clamp(min=min)`: at::clamp with no upper bound (tch's `clamp`
/// takes both; `clamp_min` is another ATen op).
pub fn clamp_min(a: &Tensor, min: f64) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    check(unsafe { pts_kernel_clamp_min(a.as_ptr(), min, &mut out) })?;
    owned(out)
}

/// `a.clamp_(min=min)`.
pub fn clamp_min_(a: &mut Tensor, min: f64) -> Result<()> {
    check(unsafe { pts_kernel_clamp_min_(a.as_mut_ptr(), min) })
}

/// `torch.linalg.vector_norm(a, 2, dim, keepdim)`, what `Tensor.norm()`,
/// `Tensor.norm(2)` and `torch.norm(a, dim=d, keepdim=k)` run; `dim` None:
/// over the whole tensor.
pub fn vector_norm(a: &Tensor, dim: Option<&[i64]>, keepdim: bool) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    let (ptr, len) = match dim {
        Some(d) => (d.as_ptr(), d.len() as i64),
        None => (std::ptr::null(), -1),
    };
    check(unsafe { pts_kernel_vector_norm(a.as_ptr(), ptr, len, keepdim, &mut out) })?;
    owned(out)
}

/// Sets the tensor's `.grad` to undefined (PyTorch's `grad = None`).
pub fn clear_grad(t: &mut Tensor) -> Result<()> {
    check(unsafe { pts_kernel_clear_grad(t.as_mut_ptr()) })
}
