//! The registry from C: model factories given as `(fn, user_data,
//! finalizer)`, the kwargs a factory reads, and the builder through which
//! it hands the library its parameters, buffers and forward function.

use std::collections::HashSet;
use std::ffi::{c_char, c_void};

use tch::{nn, Tensor};

use super::*;
use crate::error::{Error, Result};
use crate::kwargs::Kwargs;
use crate::registry::{BoxedModel, Forward, Registry};

/// A registry: class name -> model factory. Containers take a snapshot of
/// it when they are created, so registering later does not change them.
/// Owned by the caller; free it with `pts_registry_free` (factories live
/// on while a container built from it does). `const pts_registry_t *` may
/// be shared by threads; registering needs exclusive use.
pub struct pts_registry_t {
    pub(crate) registry: Registry,
}

/// The constructor kwargs a factory receives: read them with the
/// `pts_kwargs_*` getters, whose errors name the class and the kwarg. A
/// kwarg that no getter reads is refused as unexpected once the factory
/// returns (as Python refuses an unexpected keyword argument), unless the
/// factory took the whole object with `pts_kwargs_json`. Borrowed: valid
/// only during the factory call.
pub struct pts_kwargs_t {
    _private: [u8; 0],
}

/// What a factory fills in: the model's parameters and buffers, and its
/// forward function. Borrowed: valid only during the factory call.
pub struct pts_model_builder_t {
    class: String,
    names: HashSet<String>,
    entries: Vec<(String, Tensor, bool)>,
    forward: Option<CForward>,
    thread_safe: bool,
}

/// Frees a user pointer the library took ownership of (a factory's
/// `user_data`, a model's forward `instance`). Called exactly once, from
/// whichever thread drops the last reference.
pub type pts_finalizer_t = Option<unsafe extern "C" fn(data: *mut c_void)>;

/// A model factory: builds the model `kwargs` describe and adds its
/// tensors to `builder` (`pts_model_builder_add_parameter` in the order an
/// optimizer should see them, which for a PyTorch model is
/// `model.parameters()` order, then `pts_model_builder_add_buffer`), and
/// sets its forward function. `loading` is true when the values are about
/// to be overwritten from a file: build the tensors with
/// `pts_tensor_empty` (uninitialized, untouched memory), since the
/// library compares them with the file before writing anything and a
/// file's kwargs must not make the loader fill memory the file does not
/// hold. Returns NULL, or an error (made with `pts_error_new`, or one a
/// `pts_kwargs_*` getter returned) that the library takes ownership of.
pub type pts_model_factory_t = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        kwargs: *const pts_kwargs_t,
        loading: bool,
        builder: *mut pts_model_builder_t,
    ) -> *mut pts_error_t,
>;

/// A model's forward function: reads `input` (borrowed for the call) and
/// writes a new tensor handle to `*output` (the library takes ownership of
/// it), with gradient tracking when `train` is true. Returns NULL, or an
/// error that the library takes ownership of.
pub type pts_forward_t = Option<
    unsafe extern "C" fn(
        instance: *mut c_void,
        input: *const pts_tensor_t,
        train: bool,
        output: *mut *mut pts_tensor_t,
    ) -> *mut pts_error_t,
>;

/// A user pointer with the finalizer that frees it.
pub(super) struct Owned {
    pub(super) data: *mut c_void,
    pub(super) finalizer: pts_finalizer_t,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(f) = self.finalizer {
            // SAFETY: the caller handed us `data` with this finalizer; it
            // runs once, here.
            unsafe { f(self.data) }
        }
    }
}

// SAFETY: the header requires that user data registered with the library
// may be used and finalized from any thread (one at a time per container;
// concurrently for a factory shared by containers on several threads).
unsafe impl Send for Owned {}
unsafe impl Sync for Owned {}

struct CForward {
    func: pts_forward_t,
    instance: Owned,
}

/// A model whose tensors a C factory handed over and whose forward is a
/// C function.
struct CModel {
    class: String,
    forward: Option<CForward>,
    /// The factory declared that forward with `train` false may run on
    /// several threads at once.
    thread_safe: bool,
}

impl std::fmt::Debug for CModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CModel")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

/// The forward instance of a model built by a C factory whose forward
/// function is `forward`.
pub(crate) fn instance_of(model: &crate::Model, forward: pts_forward_t) -> Option<*mut c_void> {
    let f = model.module::<CModel>()?.forward.as_ref()?;
    // Function pointers are compared as addresses: the caller asks for
    // the instance its own forward was registered with.
    let address = |g: pts_forward_t| g.map(|g| g as usize);
    (address(forward).is_some() && address(f.func) == address(forward)).then_some(f.instance.data)
}

impl Forward for CModel {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let callback_error = |message: String| Error::Callback {
            what: format!("forward of {}", self.class),
            message,
        };
        let Some(CForward {
            func: Some(func),
            instance,
        }) = &self.forward
        else {
            return Err(Error::Usage(format!(
                "model {} has no forward function: its factory did not call pts_model_builder_set_forward",
                self.class
            )));
        };
        let input = pts_tensor_t {
            tensor: xs.shallow_clone(),
        };
        let mut output: *mut pts_tensor_t = std::ptr::null_mut();
        // SAFETY: a function pointer the factory supplied, called with
        // its own instance, a live input handle and a valid out slot.
        let err = unsafe { func(instance.data, &input, train, &mut output) };
        // SAFETY: whatever the callback returned is ours to free.
        let output = (!output.is_null()).then(|| unsafe { Box::from_raw(output) });
        if !err.is_null() {
            let err = unsafe { Box::from_raw(err) };
            return Err(callback_error(err.message().to_owned()));
        }
        output
            .map(|o| o.tensor)
            .ok_or_else(|| callback_error("returned no error and no output tensor".into()))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_sync(&self) -> Option<&(dyn Forward + Sync)> {
        self.thread_safe.then_some(self as &(dyn Forward + Sync))
    }
}

// SAFETY: see `Owned`: the forward instance may move between threads.
unsafe impl Send for CModel {}
// SAFETY: `&self` reaches the instance only through the forward function,
// and only concurrently when the factory declared that function
// thread-safe (`as_sync`); otherwise `InferenceModel` serializes calls.
unsafe impl Sync for CModel {}

/// Runs a C factory and turns what it built into a model under `path`.
fn build_c_model(
    factory: &Owned,
    func: unsafe extern "C" fn(*mut c_void, *const pts_kwargs_t, bool, *mut pts_model_builder_t) -> *mut pts_error_t,
    path: nn::Path<'_>,
    kw: &Kwargs<'_>,
) -> Result<BoxedModel> {
    let class = kw.class().to_owned();
    let mut builder = pts_model_builder_t {
        class: class.clone(),
        names: HashSet::new(),
        entries: Vec::new(),
        forward: None,
        thread_safe: false,
    };
    let kw_ptr = (kw as *const Kwargs<'_>).cast::<pts_kwargs_t>();
    // SAFETY: the registered factory, with its own user data, a kwargs
    // pointer and a builder that outlive the call.
    let err = unsafe { func(factory.data, kw_ptr, kw.loading(), &mut builder) };
    if !err.is_null() {
        // SAFETY: a returned error is ours to free.
        let err = unsafe { Box::from_raw(err) };
        let message = err.message();
        return Err(if err.code() == PTS_ERROR_INVALID_KWARGS {
            let reason = message.strip_prefix(&format!("{class}: ")).unwrap_or(message);
            Error::InvalidKwargs {
                class,
                reason: reason.to_owned(),
            }
        } else {
            Error::Factory {
                class,
                reason: message.to_owned(),
            }
        });
    }
    for (name, tensor, trainable) in builder.entries.drain(..) {
        let mut parts: Vec<&str> = name.split('.').collect();
        let leaf = parts.pop().expect("split yields one part at least");
        let sub = parts.iter().fold(path.clone(), |p, part| p.sub(part));
        drop(sub.add(leaf, tensor, trainable));
    }
    Ok(Box::new(CModel {
        class,
        forward: builder.forward.take(),
        thread_safe: builder.thread_safe,
    }))
}

/// A new registry holding the built-in classes (`torch.nn.Linear`,
/// `pytorch_saver.models.MLP`, `pytorch_saver.models.Sequential`; see
/// docs/MODELS.md). The caller frees `*out`.
#[no_mangle]
pub unsafe extern "C" fn pts_registry_new(out: *mut *mut pts_registry_t) -> *mut pts_error_t {
    boundary(|| {
        let out = Out::new(out, "out")?;
        out.write(Box::into_raw(Box::new(pts_registry_t {
            registry: Registry::new(),
        })));
        Ok(())
    })
}

/// Registers a model factory under `name` (use the Python class's
/// `module.QualName` so that files written by Python resolve to it).
/// The library takes ownership of `user_data` whatever the outcome:
/// `finalizer` (may be NULL) runs when the last registry or container
/// using the factory is freed, or before this returns on error. The
/// factory may be called from any thread that uses a container built on
/// this registry, and concurrently if several threads do.
#[no_mangle]
pub unsafe extern "C" fn pts_registry_register_model(
    registry: *mut pts_registry_t,
    name: *const c_char,
    factory: pts_model_factory_t,
    user_data: *mut c_void,
    finalizer: pts_finalizer_t,
) -> *mut pts_error_t {
    let owned = Owned {
        data: user_data,
        finalizer,
    };
    boundary(move || {
        let registry = unsafe { arg_mut(registry, "registry") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let func = factory.ok_or_else(|| pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, "argument factory is NULL"))?;
        registry
            .registry
            .register_model(name, move |path, kw| build_c_model(&owned, func, path, kw))?;
        Ok(())
    })
}

/// Whether `name` is registered.
#[no_mangle]
pub unsafe extern "C" fn pts_registry_contains(
    registry: *const pts_registry_t,
    name: *const c_char,
    out: *mut bool,
) -> *mut pts_error_t {
    boundary(|| {
        let registry = unsafe { arg_ref(registry, "registry") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let out = Out::new(out, "out")?;
        out.write(registry.registry.has_model(name));
        Ok(())
    })
}

/// Frees a registry. Containers built from it keep their snapshot. NULL
/// is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_registry_free(registry: *mut pts_registry_t) {
    if !registry.is_null() {
        boundary_or((), || {
            // SAFETY: a handle this library allocated, freed once.
            drop(unsafe { Box::from_raw(registry) })
        })
    }
}

unsafe fn builder_add(
    builder: *mut pts_model_builder_t,
    name: *const c_char,
    tensor: *const pts_tensor_t,
    trainable: bool,
) -> *mut pts_error_t {
    boundary(|| {
        let b = unsafe { arg_mut(builder, "builder") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let t = unsafe { arg_ref(tensor, "tensor") }?;
        if name.split('.').any(str::is_empty) {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!(
                    "{}: tensor name {name:?} has an empty component (names are PyTorch's dotted state-dict keys, such as fc1.weight)",
                    b.class
                ),
            ));
        }
        if !b.names.insert(name.to_owned()) {
            return Err(pts_error_t::new(
                PTS_ERROR_DUPLICATE_NAME,
                format!("{}: tensor {name:?} was added twice", b.class),
            ));
        }
        b.entries.push((name.to_owned(), t.tensor.shallow_clone(), trainable));
        Ok(())
    })
}

/// Adds a trainable parameter named `name` (PyTorch's state-dict key,
/// such as `fc1.weight`). The model shares the tensor (no copy): optimizer
/// steps and loads change the caller's tensor in place. The handle stays
/// the caller's.
#[no_mangle]
pub unsafe extern "C" fn pts_model_builder_add_parameter(
    builder: *mut pts_model_builder_t,
    name: *const c_char,
    tensor: *const pts_tensor_t,
) -> *mut pts_error_t {
    unsafe { builder_add(builder, name, tensor, true) }
}

/// Adds a buffer (state that is saved and loaded but not trained, such as
/// `bn.running_mean`), shared as `pts_model_builder_add_parameter` shares.
#[no_mangle]
pub unsafe extern "C" fn pts_model_builder_add_buffer(
    builder: *mut pts_model_builder_t,
    name: *const c_char,
    tensor: *const pts_tensor_t,
) -> *mut pts_error_t {
    unsafe { builder_add(builder, name, tensor, false) }
}

/// Sets the model's forward function and the instance it runs on. The
/// library takes ownership of `instance` whatever the outcome: `finalizer`
/// (may be NULL) runs when the model is dropped (its container freed or
/// re-initialized, or the factory failing), or before this returns on
/// error. Setting it twice is `PTS_ERROR_USAGE`.
#[no_mangle]
pub unsafe extern "C" fn pts_model_builder_set_forward(
    builder: *mut pts_model_builder_t,
    forward: pts_forward_t,
    instance: *mut c_void,
    finalizer: pts_finalizer_t,
) -> *mut pts_error_t {
    let instance = Owned {
        data: instance,
        finalizer,
    };
    boundary(move || {
        let b = unsafe { arg_mut(builder, "builder") }?;
        if forward.is_none() {
            return Err(pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, "argument forward is NULL"));
        }
        if b.forward.is_some() {
            return Err(pts_error_t::new(
                PTS_ERROR_USAGE,
                format!("{}: the forward function is already set", b.class),
            ));
        }
        b.forward = Some(CForward {
            func: forward,
            instance,
        });
        Ok(())
    })
}

/// Declares that the model's forward function, called with `train` false,
/// may run on several threads at once (it only reads the model), so that
/// a `pts_model_t` runs concurrent calls in parallel. Without it a
/// `pts_model_t` runs this model's forward one call at a time.
#[no_mangle]
pub unsafe extern "C" fn pts_model_builder_set_thread_safe(builder: *mut pts_model_builder_t) -> *mut pts_error_t {
    boundary(|| {
        unsafe { arg_mut(builder, "builder") }?.thread_safe = true;
        Ok(())
    })
}

/// The kwargs behind a handle.
unsafe fn kwargs<'a>(kwargs: *const pts_kwargs_t) -> CResult<&'a Kwargs<'a>> {
    // SAFETY: the handle is the `Kwargs` that `build_c_model` passed to
    // the factory, alive for the call.
    unsafe { arg_ref(kwargs.cast::<Kwargs<'a>>(), "kwargs") }
}

/// One kwarg through a `Kwargs` getter, written to `out`.
unsafe fn read_kwarg<T>(
    kwargs: *const pts_kwargs_t,
    key: *const c_char,
    out: *mut T,
    get: impl FnOnce(&Kwargs<'_>, &str) -> Result<T>,
) -> *mut pts_error_t {
    boundary(|| {
        let kw = unsafe { self::kwargs(kwargs) }?;
        let key = unsafe { arg_str(key, "key") }?;
        let out = Out::new(out, "out")?;
        out.write(get(kw, key)?);
        Ok(())
    })
}

/// An integer kwarg that must be present.
#[no_mangle]
pub unsafe extern "C" fn pts_kwargs_i64(
    kwargs: *const pts_kwargs_t,
    key: *const c_char,
    out: *mut i64,
) -> *mut pts_error_t {
    unsafe { read_kwarg(kwargs, key, out, |kw, key| kw.required_i64(key)) }
}

/// An integer kwarg, `default_value` when absent or null.
#[no_mangle]
pub unsafe extern "C" fn pts_kwargs_i64_or(
    kwargs: *const pts_kwargs_t,
    key: *const c_char,
    default_value: i64,
    out: *mut i64,
) -> *mut pts_error_t {
    unsafe { read_kwarg(kwargs, key, out, |kw, key| kw.i64_or(key, default_value)) }
}

/// A number kwarg (integers accepted, as in Python), `default_value` when
/// absent or null.
#[no_mangle]
pub unsafe extern "C" fn pts_kwargs_f64_or(
    kwargs: *const pts_kwargs_t,
    key: *const c_char,
    default_value: f64,
    out: *mut f64,
) -> *mut pts_error_t {
    unsafe { read_kwarg(kwargs, key, out, |kw, key| kw.f64_or(key, default_value)) }
}

/// A boolean kwarg, `default_value` when absent or null.
#[no_mangle]
pub unsafe extern "C" fn pts_kwargs_bool_or(
    kwargs: *const pts_kwargs_t,
    key: *const c_char,
    default_value: bool,
    out: *mut bool,
) -> *mut pts_error_t {
    unsafe { read_kwarg(kwargs, key, out, |kw, key| kw.bool_or(key, default_value)) }
}

/// The whole kwargs object as JSON text, for a factory that parses it
/// itself and so answers for refusing what it does not accept (no kwarg
/// counts as unexpected afterwards). The caller frees `*out` with
/// `pts_string_free`.
#[no_mangle]
pub unsafe extern "C" fn pts_kwargs_json(kwargs: *const pts_kwargs_t, out: *mut *mut c_char) -> *mut pts_error_t {
    boundary(|| {
        let kw = unsafe { self::kwargs(kwargs) }?;
        let out = Out::new(out, "out")?;
        let text = serde_json::to_string(kw.as_map()).expect("a JSON map serializes");
        let text = owned_string(text)?;
        kw.accept_all();
        out.write(text);
        Ok(())
    })
}
