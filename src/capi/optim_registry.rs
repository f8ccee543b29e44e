//! User optimizer classes from C: a class given as its hyperparameter
//! defaults (JSON), its state layout and a step function with user data;
//! the group and state handles that step function reads and writes.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use serde_json::Value;
use tch::Tensor;

use super::registry::Owned;
use super::*;
use crate::error::{Error, Result};
use crate::optim::{OptimizerClass, ParamGroup, ParamState, StateKey, StateShape};

/// A parameter group's hyperparameters, as a step function reads them
/// (`pts_optim_group_f64`, `_i64`, `_bool`). Borrowed: valid only during
/// the call it is passed to.
pub struct pts_optim_group_t {
    _private: [u8; 0],
}

/// One parameter's optimizer state (PyTorch's `optimizer.state[p]`): the
/// tensors a step function gets (`pts_optim_state_get`) and sets
/// (`pts_optim_state_set`) by key. Borrowed: valid only during the step
/// call it is passed to.
pub struct pts_optim_state_t {
    class: String,
    keys: Vec<String>,
    state: ParamState,
}

/// One per-parameter state key of a user optimizer class.
#[repr(C)]
pub struct pts_optim_state_key_t {
    /// The key (`momentum_buffer`): non-empty, no `.`.
    pub name: *const c_char,
    /// True: a rank-0 tensor (a step counter); false: a tensor of the
    /// parameter's shape.
    pub rank0: bool,
    /// True: a parameter's non-empty state must hold it (a file whose
    /// state lacks it is refused).
    pub required: bool,
}

/// A user optimizer's step on one parameter: update `param` in place from
/// `grad` (read-only), reading the hyperparameters from `group` and
/// creating or advancing `state`. Called under no_grad, for every
/// parameter that has a gradient, group by group. Every handle is
/// borrowed for the call. Returns NULL, or an error (made with
/// `pts_error_new`) that the library takes ownership of and reports,
/// with its message, as `PTS_ERROR_CALLBACK` from the step.
pub type pts_optim_step_t = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        group: *const pts_optim_group_t,
        param: *mut pts_tensor_t,
        grad: *const pts_tensor_t,
        state: *mut pts_optim_state_t,
    ) -> *mut pts_error_t,
>;

/// A check of a group's hyperparameters across keys, on kwargs and on
/// groups loaded from a file (each key's JSON type is checked before).
/// Returns NULL, or an error whose message says what is wrong.
pub type pts_optim_check_group_t =
    Option<unsafe extern "C" fn(user_data: *mut c_void, group: *const pts_optim_group_t) -> *mut pts_error_t>;

/// An optimizer class: read when it is registered (the library copies
/// what it needs), the function pointers kept.
#[repr(C)]
pub struct pts_optimizer_class_t {
    /// The hyperparameters (the param_group keys, which are the class's
    /// kwargs) with their defaults, as one JSON object in PyTorch's order,
    /// such as `{"lr": 0.01, "beta": 0.9}`. `lr` is required and its
    /// default must be a number; a value given for a key must have its
    /// default's JSON type (null accepts anything).
    pub hyperparameters_json: *const c_char,
    /// The state keys (`n_state_keys` of them; NULL when 0).
    pub state_keys: *const pts_optim_state_key_t,
    pub n_state_keys: usize,
    /// The step function (required).
    pub step: pts_optim_step_t,
    /// A group check, or NULL for none.
    pub check_group: pts_optim_check_group_t,
}

/// A class registered from C.
struct CClass {
    hyperparameters: Vec<(String, Value)>,
    layout: Vec<StateKey>,
    step: unsafe extern "C" fn(
        *mut c_void,
        *const pts_optim_group_t,
        *mut pts_tensor_t,
        *const pts_tensor_t,
        *mut pts_optim_state_t,
    ) -> *mut pts_error_t,
    check_group: pts_optim_check_group_t,
    user_data: Arc<Owned>,
    name: String,
}

/// The message of an error a callback returned (NULL: none).
fn callback_result(err: *mut pts_error_t) -> std::result::Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a returned error is ours to free.
    let err = unsafe { Box::from_raw(err) };
    Err(err.message().to_owned())
}

fn group_ptr(group: &ParamGroup) -> *const pts_optim_group_t {
    (group as *const ParamGroup).cast()
}

impl OptimizerClass for CClass {
    fn hyperparameters(&self) -> Vec<(String, Value)> {
        self.hyperparameters.clone()
    }

    fn state_layout(&self) -> Vec<StateKey> {
        self.layout.clone()
    }

    fn check_group(&self, group: &ParamGroup) -> std::result::Result<(), String> {
        match self.check_group {
            // SAFETY: the registered function with its own user data and
            // a group that outlives the call.
            Some(check) => callback_result(unsafe { check(self.user_data.data, group_ptr(group)) }),
            None => Ok(()),
        }
    }

    fn step(&self, group: &ParamGroup, param: &mut Tensor, grad: &Tensor, state: &mut ParamState) -> Result<()> {
        let mut handle = pts_optim_state_t {
            class: self.name.clone(),
            keys: self.layout.iter().map(|k| k.name.clone()).collect(),
            state: std::mem::take(state),
        };
        let mut param_handle = pts_tensor_t {
            tensor: param.shallow_clone(),
        };
        let grad_handle = pts_tensor_t {
            tensor: grad.shallow_clone(),
        };
        // SAFETY: the registered step with its own user data and handles
        // that outlive the call.
        let err = unsafe {
            (self.step)(
                self.user_data.data,
                group_ptr(group),
                &mut param_handle,
                &grad_handle,
                &mut handle,
            )
        };
        *state = handle.state;
        callback_result(err).map_err(|message| Error::Callback {
            what: format!("step of {}", self.name),
            message,
        })
    }
}

/// The class `cls` describes, for `name`.
unsafe fn read_class(name: &str, cls: &pts_optimizer_class_t, user_data: Arc<Owned>) -> CResult<CClass> {
    let json = unsafe { arg_str(cls.hyperparameters_json, "cls->hyperparameters_json") }?;
    let hyperparameters = match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(m)) => m.into_iter().collect(),
        _ => {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_JSON,
                format!("{name}: hyperparameters_json must be a JSON object of defaults, got {json:?}"),
            ))
        }
    };
    let keys: &[pts_optim_state_key_t] = match cls.n_state_keys {
        0 => &[],
        n if cls.state_keys.is_null() => {
            return Err(pts_error_t::new(
                PTS_ERROR_NULL_ARGUMENT,
                format!("argument cls->state_keys is NULL, with n_state_keys {n}"),
            ))
        }
        // SAFETY: the caller guarantees n_state_keys readable entries.
        n => unsafe { std::slice::from_raw_parts(cls.state_keys, n) },
    };
    let mut layout = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let key = unsafe { arg_str(k.name, &format!("cls->state_keys[{i}].name")) }?;
        layout.push(StateKey {
            name: key.to_owned(),
            shape: if k.rank0 {
                StateShape::Rank0
            } else {
                StateShape::LikeParam
            },
            required: k.required,
        });
    }
    let step = cls
        .step
        .ok_or_else(|| pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, "argument cls->step is NULL"))?;
    Ok(CClass {
        hyperparameters,
        layout,
        step,
        check_group: cls.check_group,
        user_data,
        name: name.to_owned(),
    })
}

/// Registers an optimizer class under `name` (use the Python class's
/// `module.QualName`), so that containers built on this registry
/// initialize, step, save and load it as a built-in one. A
/// `torch.optim.*` name, a name already registered and a class without
/// `lr` are refused. The library takes ownership of `user_data` whatever
/// the outcome: `free_user_data` (may be NULL) runs once, when the last
/// registry, container or optimizer using the class is freed, or before
/// this returns on error. The functions may be called from any thread
/// that uses a container built on this registry.
#[no_mangle]
pub unsafe extern "C" fn pts_registry_register_optimizer(
    registry: *mut pts_registry_t,
    name: *const c_char,
    cls: *const pts_optimizer_class_t,
    user_data: *mut c_void,
    free_user_data: pts_finalizer_t,
) -> *mut pts_error_t {
    let owned = Arc::new(Owned {
        data: user_data,
        finalizer: free_user_data,
    });
    boundary(move || {
        let registry = unsafe { arg_mut(registry, "registry") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let cls = unsafe { arg_ref(cls, "cls") }?;
        let class = unsafe { read_class(name, cls, owned) }?;
        registry.registry.register_optimizer(name, class)?;
        Ok(())
    })
}

/// Whether `name` is a registered optimizer class (the built-in ones are
/// not registered: they are always there).
#[no_mangle]
pub unsafe extern "C" fn pts_registry_contains_optimizer(
    registry: *const pts_registry_t,
    name: *const c_char,
    out: *mut bool,
) -> *mut pts_error_t {
    boundary(|| {
        let registry = unsafe { arg_ref(registry, "registry") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let out = Out::new(out, "out")?;
        out.write(registry.registry.has_optimizer(name));
        Ok(())
    })
}

/// One hyperparameter through a `ParamGroup` getter, written to `out`.
unsafe fn read_group<T>(
    group: *const pts_optim_group_t,
    key: *const c_char,
    out: *mut T,
    get: impl FnOnce(&ParamGroup, &str) -> Result<T>,
) -> *mut pts_error_t {
    boundary(|| {
        // SAFETY: the handle is the `ParamGroup` the library passed to
        // the callback, alive for the call.
        let group = unsafe { arg_ref(group.cast::<ParamGroup>(), "group") }?;
        let key = unsafe { arg_str(key, "key") }?;
        let out = Out::new(out, "out")?;
        out.write(get(group, key)?);
        Ok(())
    })
}

/// A number hyperparameter (an integer is accepted, as in Python).
/// Missing or not a number: `PTS_ERROR_INVALID_STATE` naming the key.
#[no_mangle]
pub unsafe extern "C" fn pts_optim_group_f64(
    group: *const pts_optim_group_t,
    key: *const c_char,
    out: *mut f64,
) -> *mut pts_error_t {
    unsafe { read_group(group, key, out, |g, key| g.f64(key)) }
}

/// An integer hyperparameter.
#[no_mangle]
pub unsafe extern "C" fn pts_optim_group_i64(
    group: *const pts_optim_group_t,
    key: *const c_char,
    out: *mut i64,
) -> *mut pts_error_t {
    unsafe {
        read_group(group, key, out, |g, key| match g.get(key) {
            Some(v) => v.as_i64().ok_or_else(|| Error::InvalidState {
                what: format!("param_groups key {key:?}"),
                reason: format!("must be an integer, got {v}"),
            }),
            None => Err(Error::InvalidState {
                what: format!("param_groups key {key:?}"),
                reason: "missing".into(),
            }),
        })
    }
}

/// A boolean hyperparameter.
#[no_mangle]
pub unsafe extern "C" fn pts_optim_group_bool(
    group: *const pts_optim_group_t,
    key: *const c_char,
    out: *mut bool,
) -> *mut pts_error_t {
    unsafe { read_group(group, key, out, |g, key| g.bool(key)) }
}

/// The state tensor `key`: `*out` is a new handle sharing its storage
/// (write through it to update the state in place; the caller frees the
/// handle), or NULL when the state has no such key (the first step).
#[no_mangle]
pub unsafe extern "C" fn pts_optim_state_get(
    state: *const pts_optim_state_t,
    key: *const c_char,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let state = unsafe { arg_ref(state, "state") }?;
        let key = unsafe { arg_str(key, "key") }?;
        let out = Out::new(out, "out")?;
        out.write(match state.state.get(key) {
            Some(t) => pts_tensor_t::boxed(t.shallow_clone()),
            None => std::ptr::null_mut(),
        });
        Ok(())
    })
}

/// Sets the state tensor `key` (one of the class's state keys) to share
/// `tensor`'s storage; the handle stays the caller's. After the step the
/// library checks each tensor's shape against the class's layout.
#[no_mangle]
pub unsafe extern "C" fn pts_optim_state_set(
    state: *mut pts_optim_state_t,
    key: *const c_char,
    tensor: *const pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let state = unsafe { arg_mut(state, "state") }?;
        let key = unsafe { arg_str(key, "key") }?;
        let tensor = unsafe { arg_ref(tensor, "tensor") }?;
        if !state.keys.iter().any(|k| k == key) {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("{}: {key:?} is not one of its state keys {:?}", state.class, state.keys),
            ));
        }
        state.state.insert(key.to_owned(), tensor.tensor.shallow_clone());
        Ok(())
    })
}
