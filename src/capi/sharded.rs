//! Read-only handles on sharded checkpoints (docs/FORMAT.md section 13):
//! open a location, list its tensors with their global shapes, read a
//! tensor assembled from its chunks, verify every shard; and consolidate
//! a sharded checkpoint into one file. Needs no model.

use std::ffi::{c_char, c_void, CString};

use super::*;
use crate::sharded::{consolidate, ShardedCheckpoint};

/// An open sharded checkpoint: its index and every shard's structure
/// checked at open (no tensor data read). Read-only: a
/// `const pts_sharded_t *` may be shared by threads. Owned by the caller;
/// free it with `pts_sharded_free`, after which nothing borrowed from it
/// may be used.
pub struct pts_sharded_t {
    sharded: ShardedCheckpoint,
    index_json: CString,
    /// Tensor names in name order.
    names: Vec<CString>,
}

/// Opens the sharded checkpoint at `location`: a directory or object-store
/// prefix URL holding `index.json`, or the path or URL of the
/// `index.json` itself. Checks the index (chunks tiling every tensor) and
/// opens every shard (size, kind, shard block, chunk tensors), reading no
/// tensor data; `pts_sharded_verify` checks every CRC-32. A location
/// without an index is `PTS_ERROR_FORMAT` of kind `"NotCommitted"`; the
/// other refusals have kinds `"ChunkTiling"`, `"MissingShard"`,
/// `"ShardMismatch"`, `"Json"`, `"Schema"`, `"UnsupportedVersion"`,
/// `"TensorNotFound"` or a shard's own format kind. On success `*out` is a
/// new handle the caller frees.
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_open(location: *const c_char, out: *mut *mut pts_sharded_t) -> *mut pts_error_t {
    boundary(|| {
        let location = unsafe { arg_str(location, "location") }?;
        let out = Out::new(out, "out")?;
        let sharded = ShardedCheckpoint::open(location)?;
        let index_json = CString::new(sharded.index_json())
            .map_err(|e| pts_error_t::new(PTS_ERROR_FORMAT, format!("index.json holds a NUL byte: {e}")))?;
        let names = sharded
            .tensor_names()
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                pts_error_t::new(
                    PTS_ERROR_FORMAT,
                    format!("index.json: tensor name with a NUL byte: {e}"),
                )
            })?;
        out.write(Box::into_raw(Box::new(pts_sharded_t {
            sharded,
            index_json,
            names,
        })));
        Ok(())
    })
}

/// The text of `index.json`, as read. Borrowed: valid until the handle is
/// freed.
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_index(sharded: *const pts_sharded_t, out: *mut *const c_char) -> *mut pts_error_t {
    boundary(|| {
        let s = unsafe { arg_ref(sharded, "sharded") }?;
        let out = Out::new(out, "out")?;
        out.write(s.index_json.as_ptr());
        Ok(())
    })
}

/// The number of tensors in the index.
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_tensor_count(sharded: *const pts_sharded_t, out: *mut usize) -> *mut pts_error_t {
    boundary(|| {
        let s = unsafe { arg_ref(sharded, "sharded") }?;
        let out = Out::new(out, "out")?;
        out.write(s.names.len());
        Ok(())
    })
}

/// The name of the tensor at `index` in name order (0 to count - 1).
/// Borrowed: valid until the handle is freed.
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_tensor_name(
    sharded: *const pts_sharded_t,
    index: usize,
    out: *mut *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let s = unsafe { arg_ref(sharded, "sharded") }?;
        let out = Out::new(out, "out")?;
        let name = s.names.get(index).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("index {index} is past the {} tensors of the index", s.names.len()),
            )
        })?;
        out.write(name.as_ptr());
        Ok(())
    })
}

/// A tensor's dtype, global shape and assembled byte size. `*shape`
/// points to `*ndim` sizes (not to be read when `*ndim` is 0, a scalar),
/// borrowed until the handle is freed. An unknown name is
/// `PTS_ERROR_NOT_FOUND`.
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_tensor_info(
    sharded: *const pts_sharded_t,
    name: *const c_char,
    dtype: *mut pts_dtype_t,
    shape: *mut *const i64,
    ndim: *mut usize,
    nbytes: *mut usize,
) -> *mut pts_error_t {
    boundary(|| {
        let s = unsafe { arg_ref(sharded, "sharded") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let (dtype, shape, ndim, nbytes) = (
            Out::new(dtype, "dtype")?,
            Out::new(shape, "shape")?,
            Out::new(ndim, "ndim")?,
            Out::new(nbytes, "nbytes")?,
        );
        let (d, dims) = s.sharded.tensor_info(name)?;
        let len = s.sharded.tensor_byte_len(name)?;
        dtype.write(dtype_to_c(d));
        shape.write(dims.as_ptr());
        ndim.write(dims.len());
        // The index's check bounds every tensor's size by usize.
        nbytes.write(len as usize);
        Ok(())
    })
}

/// Assembles a tensor from its chunks into `data` (C-contiguous,
/// little-endian); `len` must equal its byte size. Reads each chunk from
/// its shard (a ranged read from an object store).
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_tensor_read(
    sharded: *const pts_sharded_t,
    name: *const c_char,
    data: *mut c_void,
    len: usize,
) -> *mut pts_error_t {
    boundary(|| {
        let s = unsafe { arg_ref(sharded, "sharded") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let want = s.sharded.tensor_byte_len(name)?;
        if len as u64 != want {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("tensor {name:?} has {want} bytes, the buffer {len}"),
            ));
        }
        let dst = unsafe { arg_bytes_mut(data.cast(), len, "data") }?;
        s.sharded.read_tensor_into(name, dst)?;
        Ok(())
    })
}

/// Reads every shard whole and checks it as `pts_checkpoint_open` does
/// (every CRC-32); the error names the first shard that fails.
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_verify(sharded: *const pts_sharded_t) -> *mut pts_error_t {
    boundary(|| {
        let s = unsafe { arg_ref(sharded, "sharded") }?;
        s.sharded.verify()?;
        Ok(())
    })
}

/// Writes the sharded checkpoint at `location` as one ordinary file at
/// `out_path` (ending in `.zip`; a path or an object-store URL): a
/// container checkpoint as the checkpoint or inference file its index
/// describes, anything else as a weights file. Every shard is verified
/// first; tensors are assembled one at a time. An existing `out_path` is
/// never replaced (`PTS_ERROR_IO`); a failure leaves no file.
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_consolidate(location: *const c_char, out_path: *const c_char) -> *mut pts_error_t {
    boundary(|| {
        let location = unsafe { arg_str(location, "location") }?;
        let out_path = unsafe { arg_str(out_path, "out_path") }?;
        consolidate(location, out_path)?;
        Ok(())
    })
}

/// Frees a sharded checkpoint handle and everything borrowed from it.
/// NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_sharded_free(sharded: *mut pts_sharded_t) {
    if !sharded.is_null() {
        boundary_or((), || {
            // SAFETY: a handle this library allocated, freed once.
            drop(unsafe { Box::from_raw(sharded) })
        })
    }
}
