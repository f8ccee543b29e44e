//! Read-only checkpoint handles: open and validate a file, read its
//! metadata, list its tensors, copy or borrow their bytes. Needs no model.

use std::ffi::{c_char, c_void, CString};

use super::*;
use crate::format::{Checkpoint, MemberName, TensorEntry};

/// Which tensor member of a checkpoint (one of the `PTS_MEMBER_*` values).
pub type pts_member_t = u32;

/// `model.safetensors`: the model's state dict, under PyTorch's names.
pub const PTS_MEMBER_MODEL: pts_member_t = 1;
/// `optimizer.safetensors`: the optimizer's per-parameter state tensors
/// (`state.<index>.<key>`); absent from inference files.
pub const PTS_MEMBER_OPTIMIZER: pts_member_t = 2;
/// `extra.safetensors` (format version 2): the tensors of the extra
/// training state, each named by a `tensor` tag of an entry of the
/// metadata's `__pytorch_saver__.extra`; absent from files without extra
/// state.
pub const PTS_MEMBER_EXTRA: pts_member_t = 3;

/// One member's tensor names and shapes, kept C-ready for borrowing.
struct MemberIndex {
    names: Vec<CString>,
    shapes: Vec<Vec<i64>>,
}

/// An open, fully validated checkpoint (every CRC and header checked at
/// open). Read-only: a `const pts_checkpoint_t *` may be shared by
/// threads. Owned by the caller; free it with `pts_checkpoint_free`, after
/// which nothing borrowed from it may be used.
pub struct pts_checkpoint_t {
    ckpt: Checkpoint,
    metadata_json: CString,
    model: MemberIndex,
    optimizer: MemberIndex,
    extra: MemberIndex,
}

impl pts_checkpoint_t {
    fn member(&self, member: pts_member_t) -> CResult<(MemberName, &MemberIndex)> {
        match member {
            PTS_MEMBER_MODEL => Ok((MemberName::Model, &self.model)),
            PTS_MEMBER_OPTIMIZER => Ok((MemberName::Optimizer, &self.optimizer)),
            PTS_MEMBER_EXTRA => Ok((MemberName::Extra, &self.extra)),
            _ => Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("unknown member code {member} (PTS_MEMBER_MODEL, PTS_MEMBER_OPTIMIZER or PTS_MEMBER_EXTRA)"),
            )),
        }
    }

    /// The entry and its position in the member's listing.
    fn entry(&self, member: pts_member_t, name: *const c_char) -> CResult<(usize, &TensorEntry, &MemberIndex)> {
        let (m, index) = self.member(member)?;
        let name = unsafe { arg_str(name, "name") }?;
        let pos = self.ckpt.tensor_position(m, name)?;
        Ok((pos, &self.ckpt.tensors(m)[pos], index))
    }
}

fn index(ckpt: &Checkpoint, member: MemberName) -> CResult<MemberIndex> {
    let entries = ckpt.tensors(member);
    let names = entries
        .iter()
        .map(|e| CString::new(e.name.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pts_error_t::new(PTS_ERROR_FORMAT, format!("{member}: tensor name with a NUL byte: {e}")))?;
    let shapes = entries
        .iter()
        .map(|e| e.shape.iter().map(|&d| d as i64).collect())
        .collect();
    Ok(MemberIndex { names, shapes })
}

/// Opens and validates the checkpoint at `path`. On success `*out` is a
/// new handle the caller frees. A malformed file is `PTS_ERROR_FORMAT`
/// (or `_IO`, `_UNSUPPORTED_VERSION`) with a message naming the member,
/// tensor and byte range.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_open(path: *const c_char, out: *mut *mut pts_checkpoint_t) -> *mut pts_error_t {
    unsafe { pts_checkpoint_open_ex(path, std::ptr::null(), out) }
}

/// `pts_checkpoint_open` with `options` (NULL: the defaults): with verify
/// off, the CRC-32 of the tensor data is not computed (the structure is
/// still validated); the copy option does not apply.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_open_ex(
    path: *const c_char,
    options: *const pts_load_options_t,
    out: *mut *mut pts_checkpoint_t,
) -> *mut pts_error_t {
    boundary(|| {
        let path = unsafe { arg_str(path, "path") }?;
        let out = Out::new(out, "out")?;
        let ckpt = Checkpoint::open_with(path, super::load_options::options_or_default(options).read_options())?;
        let json = serde_json::to_string(&ckpt.metadata().to_json()).expect("a JSON map serializes");
        let handle = pts_checkpoint_t {
            metadata_json: CString::new(json).expect("serde_json escapes NUL"),
            model: index(&ckpt, MemberName::Model)?,
            optimizer: index(&ckpt, MemberName::Optimizer)?,
            extra: index(&ckpt, MemberName::Extra)?,
            ckpt,
        };
        out.write(Box::into_raw(Box::new(handle)));
        Ok(())
    })
}

/// The whole `metadata.json` object as JSON text (the flat user keys and
/// the reserved `__pytorch_saver__` internals). Borrowed: valid until the
/// checkpoint is freed.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_metadata(
    checkpoint: *const pts_checkpoint_t,
    out: *mut *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(checkpoint, "checkpoint") }?;
        let out = Out::new(out, "out")?;
        out.write(c.metadata_json.as_ptr());
        Ok(())
    })
}

/// The number of tensors in a member (0 for an absent optimizer or extra
/// member).
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_tensor_count(
    checkpoint: *const pts_checkpoint_t,
    member: pts_member_t,
    out: *mut usize,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(checkpoint, "checkpoint") }?;
        let out = Out::new(out, "out")?;
        out.write(c.member(member)?.1.names.len());
        Ok(())
    })
}

/// The name of the member's tensor at `index` (file order, from 0 to
/// count - 1). Borrowed: valid until the checkpoint is freed.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_tensor_name(
    checkpoint: *const pts_checkpoint_t,
    member: pts_member_t,
    index: usize,
    out: *mut *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(checkpoint, "checkpoint") }?;
        let out = Out::new(out, "out")?;
        let (m, idx) = c.member(member)?;
        let name = idx.names.get(index).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!(
                    "index {index} is past the {} tensors of {}",
                    idx.names.len(),
                    m.as_str()
                ),
            )
        })?;
        out.write(name.as_ptr());
        Ok(())
    })
}

/// A tensor's dtype, shape and byte size. `*shape` points to `*ndim`
/// sizes (not to be read when `*ndim` is 0, a scalar), borrowed until the
/// checkpoint is freed.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_tensor_info(
    checkpoint: *const pts_checkpoint_t,
    member: pts_member_t,
    name: *const c_char,
    dtype: *mut pts_dtype_t,
    shape: *mut *const i64,
    ndim: *mut usize,
    nbytes: *mut usize,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(checkpoint, "checkpoint") }?;
        let (dtype, shape, ndim, nbytes) = (
            Out::new(dtype, "dtype")?,
            Out::new(shape, "shape")?,
            Out::new(ndim, "ndim")?,
            Out::new(nbytes, "nbytes")?,
        );
        let (pos, entry, idx) = c.entry(member, name)?;
        dtype.write(dtype_to_c(entry.dtype));
        shape.write(idx.shapes[pos].as_ptr());
        ndim.write(idx.shapes[pos].len());
        nbytes.write(entry.byte_len() as usize);
        Ok(())
    })
}

/// Copies a tensor's bytes (C-contiguous, little-endian as stored) into
/// `data`; `len` must equal its byte size.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_tensor_read(
    checkpoint: *const pts_checkpoint_t,
    member: pts_member_t,
    name: *const c_char,
    data: *mut c_void,
    len: usize,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(checkpoint, "checkpoint") }?;
        let (_, entry, _) = c.entry(member, name)?;
        if len as u64 != entry.byte_len() {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!(
                    "tensor {:?} has {} bytes, the buffer {len}",
                    entry.name,
                    entry.byte_len()
                ),
            ));
        }
        let dst = unsafe { arg_bytes_mut(data.cast(), len, "data") }?;
        c.ckpt.read_tensor_into(entry, dst)?;
        Ok(())
    })
}

/// Borrows a tensor's bytes in place, from the file's read-only memory
/// map (no copy): `*data` and `*len`, valid until the checkpoint is freed.
/// The pointer is not necessarily aligned for the dtype.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_tensor_borrow(
    checkpoint: *const pts_checkpoint_t,
    member: pts_member_t,
    name: *const c_char,
    data: *mut *const u8,
    len: *mut usize,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(checkpoint, "checkpoint") }?;
        let (data, len) = (Out::new(data, "data")?, Out::new(len, "len")?);
        let (_, entry, _) = c.entry(member, name)?;
        let bytes = c.ckpt.tensor_bytes(entry);
        data.write(bytes.as_ptr());
        len.write(bytes.len());
        Ok(())
    })
}

/// A tensor of the checkpoint as a new CPU tensor handle (a copy of its
/// bytes, with its dtype and shape). The caller frees `*out`.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_tensor(
    checkpoint: *const pts_checkpoint_t,
    member: pts_member_t,
    name: *const c_char,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(checkpoint, "checkpoint") }?;
        let out = Out::new(out, "out")?;
        let (_, entry, _) = c.entry(member, name)?;
        let tensor = crate::tch_bridge::read_new(&c.ckpt, entry)?;
        out.write(pts_tensor_t::boxed(tensor));
        Ok(())
    })
}

/// Frees a checkpoint handle and everything borrowed from it. NULL is a
/// no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_checkpoint_free(checkpoint: *mut pts_checkpoint_t) {
    if !checkpoint.is_null() {
        boundary_or((), || {
            // SAFETY: a handle this library allocated, freed once.
            drop(unsafe { Box::from_raw(checkpoint) })
        })
    }
}
