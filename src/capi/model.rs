//! Inference models from C: a loaded model that many threads may run at
//! once (an inference server's request handlers), read-only.

use std::ffi::{c_char, CString};

use super::container::json_text;
use super::load_options::options_or_default;
use super::*;
use crate::inference::InferenceModel;
use crate::registry::Registry;

/// A model loaded for inference: eval mode, no gradients, no optimizer.
/// Owned by the caller; free it with `pts_model_free`. Unlike a container,
/// `const pts_model_t *` may be used by many threads at once:
/// `pts_model_forward` calls run concurrently for the built-in models and
/// for factories that declared their forward thread-safe
/// (`pts_model_builder_set_thread_safe`), one at a time otherwise.
pub struct pts_model_t {
    inner: InferenceModel,
    class: CString,
}

/// Loads the model of the file at `path` (an optimizer or scheduler in it
/// is ignored) over `registry` (NULL: the built-in classes) with `options`
/// (NULL: the defaults, verified and zero-copy), with every check of
/// `pts_container_load`. On success `*out` is the model and
/// `*metadata_json` the flat metadata; the caller frees both
/// (`pts_model_free`, `pts_string_free`).
#[no_mangle]
pub unsafe extern "C" fn pts_model_load(
    registry: *const pts_registry_t,
    path: *const c_char,
    options: *const pts_load_options_t,
    out: *mut *mut pts_model_t,
    metadata_json: *mut *mut c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let path = unsafe { arg_str(path, "path") }?;
        let (out, meta_out) = (Out::new(out, "out")?, Out::new(metadata_json, "metadata_json")?);
        // SAFETY: NULL or a live registry (header contract).
        let registry = unsafe { registry.as_ref() }.map_or_else(Registry::new, |r| r.registry.clone());
        let (inner, meta) = InferenceModel::load(path, &registry, &options_or_default(options))?;
        let class = CString::new(inner.class().replace('\0', "\\0")).expect("NULs replaced");
        let meta = json_text(&meta)?;
        meta_out.write(meta);
        out.write(Box::into_raw(Box::new(pts_model_t { inner, class })));
        Ok(())
    })
}

/// Runs the model on `input` in eval mode with no gradient tracking. The
/// caller frees `*output`. May be called from several threads at once on
/// the same model.
#[no_mangle]
pub unsafe extern "C" fn pts_model_forward(
    model: *const pts_model_t,
    input: *const pts_tensor_t,
    output: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_ref(model, "model") }?;
        let input = unsafe { arg_ref(input, "input") }?;
        let output = Out::new(output, "output")?;
        output.write(pts_tensor_t::boxed(m.inner.forward(&input.tensor)?));
        Ok(())
    })
}

/// The model's class name (`pytorch_saver.models.Sequential`, ...).
/// Borrowed: valid until the model is freed.
#[no_mangle]
pub unsafe extern "C" fn pts_model_class(model: *const pts_model_t, out: *mut *const c_char) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_ref(model, "model") }?;
        let out = Out::new(out, "out")?;
        out.write(m.class.as_ptr());
        Ok(())
    })
}

/// Whether forward calls on this model run concurrently (true) or one at
/// a time (false: a factory that did not declare its forward thread-safe).
#[no_mangle]
pub unsafe extern "C" fn pts_model_is_concurrent(model: *const pts_model_t, out: *mut bool) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_ref(model, "model") }?;
        let out = Out::new(out, "out")?;
        out.write(m.inner.is_concurrent());
        Ok(())
    })
}

/// A tensor of the model's state dict by name, as a new handle sharing its
/// storage (read it; writing to it while forward calls run is a data
/// race). The caller frees `*out`; `PTS_ERROR_NOT_FOUND` for an unknown
/// name.
#[no_mangle]
pub unsafe extern "C" fn pts_model_state_tensor(
    model: *const pts_model_t,
    name: *const c_char,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_ref(model, "model") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let out = Out::new(out, "out")?;
        let t = m.inner.state_dict().remove(name).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_NOT_FOUND,
                format!("model {} has no tensor named {name:?}", m.inner.class()),
            )
        })?;
        out.write(pts_tensor_t::boxed(t));
        Ok(())
    })
}

/// Frees a model (running its factory's finalizers). NULL is a no-op.
/// No forward call may be running on it.
#[no_mangle]
pub unsafe extern "C" fn pts_model_free(model: *mut pts_model_t) {
    if !model.is_null() {
        boundary_or((), || {
            // SAFETY: a handle this library allocated, freed once.
            drop(unsafe { Box::from_raw(model) })
        })
    }
}
