//! Containers from C: the whole life cycle of a model with its optimizer
//! and scheduler (initialize, train, save, load, restore, forward).

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use serde_json::{Map, Value};
use tch::Tensor;

use super::load_options::options_or_default;
use super::registry::instance_of;
use super::*;
use crate::container::{ContainerSpec, ModelContainer, UserMetadata};
use crate::registry::Registry;

/// A container: a model built by name through the registry, with an
/// optional optimizer over its parameters and scheduler over that
/// optimizer. Owned by the caller; free it with `pts_container_free`.
/// One thread at a time, const calls (forward, save) included: a model's
/// forward may change the model (a C++ module's train flag); it may move
/// between threads.
pub struct pts_container_t {
    pub(super) inner: ModelContainer,
    /// The model's parameters in optimizer order, with names ready to lend.
    params: Vec<(CString, Tensor)>,
}

impl pts_container_t {
    pub(super) fn new(registry: Option<&pts_registry_t>) -> Self {
        let registry = registry.map_or_else(Registry::new, |r| r.registry.clone());
        let mut inner = ModelContainer::with_registry(Arc::new(registry));
        inner.set_producer_language("c").expect("a valid language");
        pts_container_t {
            inner,
            params: Vec::new(),
        }
    }

    /// Re-reads the parameter list after the model changed.
    pub(super) fn refresh(&mut self) {
        self.params = match self.inner.model() {
            Ok(model) => model
                .parameters()
                .into_iter()
                .map(|(name, t)| (CString::new(name.replace('\0', "\\0")).expect("NULs replaced"), t))
                .collect(),
            Err(_) => Vec::new(),
        };
    }
}

unsafe fn kwargs_arg(json: *const c_char, name: &str) -> CResult<Map<String, Value>> {
    match unsafe { opt_str(json, name) }? {
        Some(text) => json_object_arg(text, name),
        None => Ok(Map::new()),
    }
}

pub(crate) fn json_text(map: &Map<String, Value>) -> CResult<*mut c_char> {
    owned_string(serde_json::to_string(map).expect("a JSON map serializes"))
}

/// A new, empty container over `registry`'s classes (a snapshot taken
/// now), or over the built-in classes when `registry` is NULL. The caller
/// frees `*out`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_new(
    registry: *const pts_registry_t,
    out: *mut *mut pts_container_t,
) -> *mut pts_error_t {
    boundary(|| {
        let out = Out::new(out, "out")?;
        // SAFETY: NULL or a live registry (header contract).
        let registry = unsafe { registry.as_ref() };
        out.write(Box::into_raw(Box::new(pts_container_t::new(registry))));
        Ok(())
    })
}

/// Sets the language the files this container writes record as their
/// producer's (`__pytorch_saver__.producer.language`, docs/FORMAT.md):
/// `"c"` by default; a binding sets its own (`"c++"`, `"go"`, ...). 1 to 32
/// printable ASCII characters, else `PTS_ERROR_USAGE`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_set_producer_language(
    container: *mut pts_container_t,
    language: *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_mut(container, "container") }?;
        let language = unsafe { arg_str(language, "language") }?;
        c.inner.set_producer_language(language)?;
        Ok(())
    })
}

/// Builds the model `model_class` from `model_kwargs_json` (a JSON object;
/// NULL means `{}`), and optionally an optimizer (`optim_class` such as
/// `"torch.optim.Adam"`, NULL for none) and a scheduler (`sched_class`
/// such as `"torch.optim.lr_scheduler.StepLR"`, NULL for none; it needs an
/// optimizer). Replaces what the container held only once everything is
/// built: on error the container is unchanged.
#[no_mangle]
pub unsafe extern "C" fn pts_container_initialize(
    container: *mut pts_container_t,
    model_class: *const c_char,
    model_kwargs_json: *const c_char,
    optim_class: *const c_char,
    optim_kwargs_json: *const c_char,
    sched_class: *const c_char,
    sched_kwargs_json: *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_mut(container, "container") }?;
        let model_class = unsafe { arg_str(model_class, "model_class") }?;
        let mut spec = ContainerSpec::model(model_class, unsafe {
            kwargs_arg(model_kwargs_json, "model_kwargs_json")
        }?);
        if let Some(class) = unsafe { opt_str(optim_class, "optim_class") }? {
            spec = spec.optimizer(class, unsafe { kwargs_arg(optim_kwargs_json, "optim_kwargs_json") }?);
        }
        if let Some(class) = unsafe { opt_str(sched_class, "sched_class") }? {
            spec = spec.scheduler(class, unsafe { kwargs_arg(sched_kwargs_json, "sched_kwargs_json") }?);
        }
        c.inner.initialize(spec)?;
        c.refresh();
        Ok(())
    })
}

/// Loads the file at `path` into a new container over `registry` (NULL:
/// the built-in classes): validates it (every CRC-32), rebuilds the model,
/// optimizer and scheduler it names, and loads their state zero-copy: the
/// tensors point into a private, copy-on-write mapping of the file
/// (training writes private pages, never the file). A model whose kwargs
/// do not describe the file's tensors is refused before it is built. On
/// success `*out` is the new container and `*metadata_json` the flat
/// metadata (`model_kwargs`, `optim_kwargs`, `scheduler_kwargs`,
/// `timestamp` and the user's keys) as JSON text; the caller frees both
/// (`pts_container_free`, `pts_string_free`). `pts_container_load_ex`
/// takes options (copy, skip the CRC check).
#[no_mangle]
pub unsafe extern "C" fn pts_container_load(
    registry: *const pts_registry_t,
    path: *const c_char,
    out: *mut *mut pts_container_t,
    metadata_json: *mut *mut c_char,
) -> *mut pts_error_t {
    unsafe { pts_container_load_ex(registry, path, std::ptr::null(), out, metadata_json) }
}

/// `pts_container_load` with `options` (NULL: the defaults).
#[no_mangle]
pub unsafe extern "C" fn pts_container_load_ex(
    registry: *const pts_registry_t,
    path: *const c_char,
    options: *const pts_load_options_t,
    out: *mut *mut pts_container_t,
    metadata_json: *mut *mut c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let path = unsafe { arg_str(path, "path") }?;
        let (out, meta_out) = (Out::new(out, "out")?, Out::new(metadata_json, "metadata_json")?);
        // SAFETY: NULL or a live registry (header contract).
        let mut c = pts_container_t::new(unsafe { registry.as_ref() });
        let meta = c.inner.load_with(path, &options_or_default(options))?;
        c.refresh();
        let meta = json_text(&meta)?;
        meta_out.write(meta);
        out.write(Box::into_raw(Box::new(c)));
        Ok(())
    })
}

/// Loads the file's state into the objects the container already holds,
/// keeping their storage (tensors the caller holds, such as a C++
/// module's parameters, see the values): every CRC-32 and every tensor is
/// checked first, then the bytes are copied straight from the file's
/// mapping into the tensors. The file must name the same model, optimizer
/// and scheduler classes. All or nothing. The caller frees
/// `*metadata_json` (flat metadata, as `pts_container_load` gives).
#[no_mangle]
pub unsafe extern "C" fn pts_container_restore(
    container: *mut pts_container_t,
    path: *const c_char,
    metadata_json: *mut *mut c_char,
) -> *mut pts_error_t {
    unsafe { pts_container_restore_ex(container, path, std::ptr::null(), metadata_json) }
}

/// `pts_container_restore` with `options` (NULL: the defaults; the copy
/// option does not apply: a restore always copies into the existing
/// tensors).
#[no_mangle]
pub unsafe extern "C" fn pts_container_restore_ex(
    container: *mut pts_container_t,
    path: *const c_char,
    options: *const pts_load_options_t,
    metadata_json: *mut *mut c_char,
) -> *mut pts_error_t {
    unsafe { read_into(container, path, options, metadata_json, |c, p, o| c.restore_with(p, o)) }
}

/// Loads the file at `path` into this container, as `pts_container_load`
/// loads into a new one (rebuilding the model, optimizer and scheduler the
/// file names, through the container's registry), and restores every
/// tracked object from the file's extra state: each tracked name must have
/// an entry of the object's class in the file (`PTS_ERROR_STATE_MISMATCH`
/// otherwise), entries not tracked are left alone. All or nothing: on
/// error the container and its tracked objects keep what they held.
/// `options` may be NULL (the defaults). The caller frees
/// `*metadata_json` (the flat metadata).
#[no_mangle]
pub unsafe extern "C" fn pts_container_load_into(
    container: *mut pts_container_t,
    path: *const c_char,
    options: *const pts_load_options_t,
    metadata_json: *mut *mut c_char,
) -> *mut pts_error_t {
    unsafe { read_into(container, path, options, metadata_json, |c, p, o| c.load_with(p, o)) }
}

/// A read of the file at `path` into `container` (a restore, or a load
/// into it), its parameter list refreshed, the flat metadata written to
/// `*metadata_json`.
unsafe fn read_into(
    container: *mut pts_container_t,
    path: *const c_char,
    options: *const pts_load_options_t,
    metadata_json: *mut *mut c_char,
    read: fn(&mut ModelContainer, &str, &crate::container::LoadOptions) -> crate::Result<Map<String, Value>>,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_mut(container, "container") }?;
        let path = unsafe { arg_str(path, "path") }?;
        let meta_out = Out::new(metadata_json, "metadata_json")?;
        let meta = read(&mut c.inner, path, &options_or_default(options))?;
        c.refresh();
        meta_out.write(json_text(&meta)?);
        Ok(())
    })
}

pub(super) unsafe fn user_metadata(json: *const c_char) -> CResult<UserMetadata> {
    let map = unsafe { kwargs_arg(json, "metadata_json") }?;
    Ok(UserMetadata::try_from(map)?)
}

unsafe fn save_with(
    container: *const pts_container_t,
    dir: *const c_char,
    prefix: *const c_char,
    metadata_json: *const c_char,
    path_out: *mut *mut c_char,
    inference: bool,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        let dir = unsafe { arg_str(dir, "dir") }?;
        let prefix = unsafe { opt_str(prefix, "prefix") }?.unwrap_or("");
        let meta = unsafe { user_metadata(metadata_json) }?;
        let path_out = Out::new(path_out, "path")?;
        let path = if inference {
            c.inner.save_inference(dir, prefix, &meta)?
        } else {
            c.inner.save(dir, prefix, &meta)?
        };
        path_out.write(owned_string(path.to_string_lossy())?);
        Ok(())
    })
}

/// Saves a training checkpoint (model, optimizer, scheduler) atomically
/// into directory `dir` as `{prefix}_checkpoint_{unix seconds}.zip`
/// (`prefix` NULL or "": `checkpoint_{ts}.zip`; never overwriting a file).
/// `metadata_json` (NULL: none) is a JSON object of extra keys such as
/// `{"loss": 0.55, "epoch": 5}`; reserved keys are refused before anything
/// is written. The caller frees `*path` with `pts_string_free`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_save(
    container: *const pts_container_t,
    dir: *const c_char,
    prefix: *const c_char,
    metadata_json: *const c_char,
    path: *mut *mut c_char,
) -> *mut pts_error_t {
    unsafe { save_with(container, dir, prefix, metadata_json, path, false) }
}

/// Reports the progress of every later save of `container`
/// (`pts_container_save`, `pts_container_save_inference`,
/// `pts_manager_save` and `pts_manager_save_async`) to `callback` (NULL:
/// to nobody), with `user_data`. The library takes ownership of
/// `user_data` whatever the outcome: `finalizer` (may be NULL) runs once
/// no save can report to it any more (the callback is replaced, or the
/// container is freed and no background save of it runs), or before this
/// returns when `callback` is NULL or on error. The
/// total is the file's size in bytes, the count the bytes written so far.
/// Calls come from the saving thread, one at a time (see
/// `pts_progress_fn`); a background save (`pts_manager_save_async`) calls
/// from its writing thread until `pts_manager_wait` (or the next save, or
/// `pts_manager_close`) returns.
#[no_mangle]
pub unsafe extern "C" fn pts_container_set_save_progress(
    container: *mut pts_container_t,
    callback: pts_progress_fn,
    user_data: *mut c_void,
    finalizer: pts_finalizer_t,
) -> *mut pts_error_t {
    boundary(|| {
        let progress = super::progress::progress_from_c(callback, user_data, finalizer);
        let c = unsafe { arg_mut(container, "container") }?;
        c.inner.set_save_progress(progress);
        Ok(())
    })
}

/// Saves the model alone, as `{prefix}_inference_{unix seconds}.zip`;
/// otherwise as `pts_container_save`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_save_inference(
    container: *const pts_container_t,
    dir: *const c_char,
    prefix: *const c_char,
    metadata_json: *const c_char,
    path: *mut *mut c_char,
) -> *mut pts_error_t {
    unsafe { save_with(container, dir, prefix, metadata_json, path, true) }
}

/// Runs one training call on the container's objects.
unsafe fn with_container(
    container: *mut pts_container_t,
    call: impl FnOnce(&mut ModelContainer) -> crate::Result<()>,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_mut(container, "container") }?;
        Ok(call(&mut c.inner)?)
    })
}

/// `optimizer.zero_grad()`: every parameter's gradient becomes undefined
/// (None). `PTS_ERROR_USAGE` without an optimizer.
#[no_mangle]
pub unsafe extern "C" fn pts_container_zero_grad(container: *mut pts_container_t) -> *mut pts_error_t {
    unsafe { with_container(container, |c| c.zero_grad()) }
}

/// `optimizer.step()`, with torch.optim's math bit for bit.
#[no_mangle]
pub unsafe extern "C" fn pts_container_step(container: *mut pts_container_t) -> *mut pts_error_t {
    unsafe { with_container(container, |c| c.step()) }
}

/// `scheduler.step()`. ReduceLROnPlateau needs
/// `pts_container_scheduler_step_metric` instead.
#[no_mangle]
pub unsafe extern "C" fn pts_container_scheduler_step(container: *mut pts_container_t) -> *mut pts_error_t {
    unsafe { with_container(container, |c| c.scheduler_step()) }
}

/// `scheduler.step(metric)`, for ReduceLROnPlateau.
#[no_mangle]
pub unsafe extern "C" fn pts_container_scheduler_step_metric(
    container: *mut pts_container_t,
    metric: f64,
) -> *mut pts_error_t {
    unsafe { with_container(container, |c| c.scheduler_step_with_metric(metric)) }
}

/// The optimizer's number of parameter groups.
#[no_mangle]
pub unsafe extern "C" fn pts_container_param_group_count(
    container: *const pts_container_t,
    out: *mut usize,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        let out = Out::new(out, "out")?;
        out.write(c.inner.lrs()?.len());
        Ok(())
    })
}

/// The current learning rate of parameter group `group`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_lr(
    container: *const pts_container_t,
    group: usize,
    out: *mut f64,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        let out = Out::new(out, "out")?;
        let lrs = c.inner.lrs()?;
        let lr = lrs.get(group).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("group {group} is past the optimizer's {} groups", lrs.len()),
            )
        })?;
        out.write(*lr);
        Ok(())
    })
}

/// Runs the model on `input`. With `train` false: eval mode and no
/// gradient tracking (inference); with `train` true: training mode with
/// autograd, so that a C++ caller can call `backward()` on a loss built
/// from the output. The caller frees `*output`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_forward(
    container: *const pts_container_t,
    input: *const pts_tensor_t,
    train: bool,
    output: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        let input = unsafe { arg_ref(input, "input") }?;
        let output = Out::new(output, "output")?;
        let model = c.inner.model()?;
        let y = if train {
            model.forward_t(&input.tensor, true)?
        } else {
            model.forward(&input.tensor)?
        };
        output.write(pts_tensor_t::boxed(y));
        Ok(())
    })
}

/// The model's number of trainable parameters.
#[no_mangle]
pub unsafe extern "C" fn pts_container_parameter_count(
    container: *const pts_container_t,
    out: *mut usize,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        let out = Out::new(out, "out")?;
        c.inner.model()?;
        out.write(c.params.len());
        Ok(())
    })
}

/// Parameter `index` in optimizer order (PyTorch's `model.parameters()`
/// order): its state-dict name, borrowed until the container is freed or
/// re-initialized or loaded, and a new handle sharing its storage (an
/// optimizer step changes what it reads) that the caller frees.
#[no_mangle]
pub unsafe extern "C" fn pts_container_parameter(
    container: *const pts_container_t,
    index: usize,
    name: *mut *const c_char,
    tensor: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        let (name, tensor) = (Out::new(name, "name")?, Out::new(tensor, "tensor")?);
        c.inner.model()?;
        let (n, t) = c.params.get(index).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("index {index} is past the model's {} parameters", c.params.len()),
            )
        })?;
        name.write(n.as_ptr());
        tensor.write(pts_tensor_t::boxed(t.shallow_clone()));
        Ok(())
    })
}

/// Any tensor of the model's state dict (a parameter or a buffer) by its
/// name, as a new handle sharing its storage; the caller frees it.
#[no_mangle]
pub unsafe extern "C" fn pts_container_state_tensor(
    container: *const pts_container_t,
    name: *const c_char,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let out = Out::new(out, "out")?;
        let model = c.inner.model()?;
        let t = model.var_store().variables().remove(name).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_NOT_FOUND,
                format!("model {} has no tensor named {name:?}", model.class()),
            )
        })?;
        out.write(pts_tensor_t::boxed(t));
        Ok(())
    })
}

/// The `instance` pointer that the model's factory passed to
/// `pts_model_builder_set_forward`, for a caller that knows its type: the
/// call succeeds only when the model's forward function is `forward`, so
/// an instance is never taken for another binding's (the C++ wrapper gets
/// its module back this way). `PTS_ERROR_USAGE` for a model built another
/// way or with another forward. Borrowed: valid until the container is
/// freed, re-initialized or loaded.
#[no_mangle]
pub unsafe extern "C" fn pts_container_model_instance(
    container: *const pts_container_t,
    forward: pts_forward_t,
    out: *mut *mut c_void,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        if forward.is_none() {
            return Err(pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, "argument forward is NULL"));
        }
        let out = Out::new(out, "out")?;
        let model = c.inner.model()?;
        let instance = instance_of(model, forward).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_USAGE,
                format!(
                    "model {} was not built by a C factory with the given forward function",
                    model.class()
                ),
            )
        })?;
        out.write(instance);
        Ok(())
    })
}

/// Frees a container and the model, optimizer and scheduler it holds
/// (running the model's finalizer). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_container_free(container: *mut pts_container_t) {
    if !container.is_null() {
        boundary_or((), || {
            // SAFETY: a handle this library allocated, freed once.
            drop(unsafe { Box::from_raw(container) })
        })
    }
}
