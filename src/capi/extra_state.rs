//! Extra training state from C (docs/FORMAT.md 11.3): the built-in
//! tracked objects (the RNG, counters), objects of the caller's given as a
//! table of callbacks, and the state handle those callbacks fill in and
//! read.

use std::ffi::{c_char, c_void};

use serde_json::Value;

use super::registry::Owned;
use super::*;
use crate::error::{Error, Result};
use crate::extra_state::{Counters, ExtraState, Rng, Stateful};
use crate::format::INTERNALS_KEY;

/// One tracked object's state: a typed value (JSON text, docs/FORMAT.md
/// 11.2) in which each tensor is a tag `{"__type__": "tensor", "name":
/// NAME}`, and the tensors those tags name. Borrowed: the library hands it
/// to a callback for the call only, writable (`pts_state_t *`) to
/// `get_state`, read-only (`const pts_state_t *`) to `check_state` and
/// `load_state`. A state the library read from a file keeps the file's
/// tensor names (`counter.weight` for the tensor an object added as
/// `weight` in entry `counter`): find a tensor through its tag
/// (`pts_state_tensor_at`) rather than by the name the object chose.
pub struct pts_state_t {
    _private: [u8; 0],
}

/// Fills in the object's current state: `pts_state_set_value_json` and
/// `pts_state_add_tensor`. Returns NULL, or an error that the library
/// takes ownership of.
pub type pts_get_state_t =
    Option<unsafe extern "C" fn(user_data: *mut c_void, state: *mut pts_state_t) -> *mut pts_error_t>;

/// Checks a state read from a file, changing nothing (`check_state`), or
/// loads it (`load_state`). Returns NULL, or an error that the library
/// takes ownership of. A container calls `check_state` on every tracked
/// object before it calls `load_state` on any, so `check_state` refuses
/// whatever `load_state` could not take: a load is all or nothing.
pub type pts_read_state_t =
    Option<unsafe extern "C" fn(user_data: *mut c_void, state: *const pts_state_t) -> *mut pts_error_t>;

/// An object of the caller's whose state a container saves and restores:
/// its class name (copied by `pts_container_track`) and its callbacks,
/// each called with `user_data`. `get_state`, `check_state` and
/// `load_state` are required; `free_user_data` may be NULL.
///
/// An error a callback returns reaches the caller of save, load or
/// restore with the entry's name: `PTS_ERROR_INVALID_STATE` and
/// `PTS_ERROR_STATE_MISMATCH` keep their code (with the entry's path,
/// `__pytorch_saver__.extra.<name>`), any other code becomes
/// `PTS_ERROR_CALLBACK`, naming the callback and the entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pts_stateful_t {
    /// The class name written with the state (`"my_project.EMA"`): a file
    /// entry is restored only into an object of the same class.
    pub class_name: *const c_char,
    /// The caller's pointer, passed to every callback.
    pub user_data: *mut c_void,
    /// Fills in the object's state for a save.
    pub get_state: pts_get_state_t,
    /// Checks a file's state, changing nothing.
    pub check_state: pts_read_state_t,
    /// Loads a file's state that `check_state` accepted.
    pub load_state: pts_read_state_t,
    /// Frees `user_data` when the container drops the object (untracked,
    /// the container freed, or tracking failed); may be NULL.
    pub free_user_data: pts_finalizer_t,
}

type ReadState = unsafe extern "C" fn(*mut c_void, *const pts_state_t) -> *mut pts_error_t;

/// A tracked object whose methods are C callbacks.
struct CStateful {
    entry: String,
    class: String,
    get_state: unsafe extern "C" fn(*mut c_void, *mut pts_state_t) -> *mut pts_error_t,
    check_state: ReadState,
    load_state: ReadState,
    user_data: Owned,
}

impl CStateful {
    /// The error a callback returned, named after the entry.
    fn callback_error(&self, callback: &str, err: *mut pts_error_t) -> Error {
        // SAFETY: an error a callback returned is ours to free.
        let err = unsafe { Box::from_raw(err) };
        let message = err.message().to_owned();
        let entry = format!("{INTERNALS_KEY}.extra.{}", self.entry);
        match err.code() {
            PTS_ERROR_INVALID_STATE => Error::InvalidState {
                what: format!("{entry}.state"),
                reason: message,
            },
            PTS_ERROR_STATE_MISMATCH => Error::StateMismatch {
                tensor: entry,
                reason: message,
            },
            _ => Error::Callback {
                what: format!(
                    "{callback} of the object tracked as {:?} (class {})",
                    self.entry, self.class
                ),
                message,
            },
        }
    }

    fn read(&self, callback: &str, func: ReadState, state: &ExtraState) -> Result<()> {
        let ptr = (state as *const ExtraState).cast::<pts_state_t>();
        // SAFETY: the caller's callback with its own user data and a state
        // that outlives the call.
        let err = unsafe { func(self.user_data.data, ptr) };
        match err.is_null() {
            true => Ok(()),
            false => Err(self.callback_error(callback, err)),
        }
    }
}

impl Stateful for CStateful {
    fn class_name(&self) -> &str {
        &self.class
    }

    fn state(&self) -> Result<ExtraState> {
        let mut state = ExtraState::new(Value::Null);
        let ptr = (&mut state as *mut ExtraState).cast::<pts_state_t>();
        // SAFETY: as in `read`; the state is exclusively the callback's
        // for the call.
        let err = unsafe { (self.get_state)(self.user_data.data, ptr) };
        match err.is_null() {
            true => Ok(state),
            false => Err(self.callback_error("get_state", err)),
        }
    }

    fn check_state(&self, state: &ExtraState) -> Result<()> {
        self.read("check_state", self.check_state, state)
    }

    fn load_state(&mut self, state: &ExtraState) -> Result<()> {
        self.read("load_state", self.load_state, state)
    }
}

fn missing_callback(name: &str) -> Box<pts_error_t> {
    pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, format!("argument object->{name} is NULL"))
}

/// Tracks the caller's object `object` under `name`: every checkpoint the
/// container saves carries its state (from `get_state`) as the extra-state
/// entry `name`, and every file it loads (`pts_container_load_into`) or
/// restores must have that entry, of the object's class, which is checked
/// (`check_state`) and loaded (`load_state`) into it. `*object` is copied;
/// the library takes ownership of `object->user_data` whatever the outcome
/// (`free_user_data` runs when the object is untracked or the container
/// freed, or before this returns on error). A name already tracked is
/// `PTS_ERROR_DUPLICATE_NAME`, an empty one `PTS_ERROR_USAGE`. The
/// callbacks run on the thread that calls save, load or restore.
#[no_mangle]
pub unsafe extern "C" fn pts_container_track(
    container: *mut pts_container_t,
    name: *const c_char,
    object: *const pts_stateful_t,
) -> *mut pts_error_t {
    // SAFETY: NULL or a live table (header contract); copied at once so
    // that the user data is owned, and freed, whatever happens next.
    let table = unsafe { object.as_ref() }.copied();
    let owned = table.map(|t| Owned {
        data: t.user_data,
        finalizer: t.free_user_data,
    });
    boundary(move || {
        let owned = owned.ok_or_else(|| pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, "argument object is NULL"))?;
        let table = table.expect("owned implies a table");
        let c = unsafe { container_arg(container) }?;
        let name = unsafe { arg_str(name, "name") }?;
        let class = unsafe { arg_str(table.class_name, "object->class_name") }?;
        if class.is_empty() {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                "argument object->class_name is empty (a class name is a non-empty string)",
            ));
        }
        let object = CStateful {
            entry: name.to_owned(),
            class: class.to_owned(),
            get_state: table.get_state.ok_or_else(|| missing_callback("get_state"))?,
            check_state: table.check_state.ok_or_else(|| missing_callback("check_state"))?,
            load_state: table.load_state.ok_or_else(|| missing_callback("load_state"))?,
            user_data: owned,
        };
        c.track_boxed(name, Box::new(object))?;
        Ok(())
    })
}

/// Tracks libtorch's default random number generators under `name`
/// (class `pytorch_saver.RNG`): the CPU generator's state (what
/// `torch::randn`, dropout and weight init draw from), and each CUDA
/// device's when CUDA is present, are saved with every checkpoint and
/// restored by a load or restore, so that training resumes drawing the
/// same numbers.
#[no_mangle]
pub unsafe extern "C" fn pts_container_track_rng(
    container: *mut pts_container_t,
    name: *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { container_arg(container) }?;
        let name = unsafe { arg_str(name, "name") }?;
        c.track(name, Rng::new())?;
        Ok(())
    })
}

/// Tracks named integers (class `pytorch_saver.Counters`: step, epoch)
/// under `name`, starting from `counters_json`, a JSON object of 64-bit
/// signed integers (`{"step": 0, "epoch": 0}`; NULL: none). A load or
/// restore replaces every counter with the file's. Read and change them
/// with `pts_container_counter_get`, `_set` and `_increment`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_track_counters(
    container: *mut pts_container_t,
    name: *const c_char,
    counters_json: *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { container_arg(container) }?;
        let name = unsafe { arg_str(name, "name") }?;
        let mut counters = Counters::new();
        if let Some(text) = unsafe { opt_str(counters_json, "counters_json") }? {
            for (key, value) in json_object_arg(text, "counters_json")? {
                let value = value.as_i64().ok_or_else(|| {
                    pts_error_t::new(
                        PTS_ERROR_INVALID_ARGUMENT,
                        format!("counters_json: counter {key:?} is {value}, not a 64-bit signed integer"),
                    )
                })?;
                counters.set(&key, value);
            }
        }
        c.track(name, counters)?;
        Ok(())
    })
}

/// The counters tracked as `name`.
fn counters<'a>(c: &'a mut crate::ModelContainer, name: &str) -> CResult<&'a mut Counters> {
    Ok(c.tracked_mut::<Counters>(name)?)
}

/// Counter `key` of the counters tracked as `name`. A counter they do not
/// hold is `PTS_ERROR_NOT_FOUND`; a name that tracks no counters
/// `PTS_ERROR_USAGE`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_counter_get(
    container: *mut pts_container_t,
    name: *const c_char,
    key: *const c_char,
    out: *mut i64,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { container_arg(container) }?;
        let name = unsafe { arg_str(name, "name") }?;
        let key = unsafe { arg_str(key, "key") }?;
        let out = Out::new(out, "out")?;
        let counters = counters(c, name)?;
        let value = counters.get(key).ok_or_else(|| {
            let held: Vec<&str> = counters.iter().map(|(k, _)| k).collect();
            pts_error_t::new(
                PTS_ERROR_NOT_FOUND,
                format!("the counters tracked as {name:?} have no counter {key:?}; they have {held:?}"),
            )
        })?;
        out.write(value);
        Ok(())
    })
}

/// Sets counter `key` of the counters tracked as `name` to `value` (a new
/// key is added).
#[no_mangle]
pub unsafe extern "C" fn pts_container_counter_set(
    container: *mut pts_container_t,
    name: *const c_char,
    key: *const c_char,
    value: i64,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { container_arg(container) }?;
        let name = unsafe { arg_str(name, "name") }?;
        let key = unsafe { arg_str(key, "key") }?;
        counters(c, name)?.set(key, value);
        Ok(())
    })
}

/// Adds 1 to counter `key` of the counters tracked as `name` (from 0 when
/// unset) and writes the new value to `*out` (`out` may be NULL).
#[no_mangle]
pub unsafe extern "C" fn pts_container_counter_increment(
    container: *mut pts_container_t,
    name: *const c_char,
    key: *const c_char,
    out: *mut i64,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { container_arg(container) }?;
        let name = unsafe { arg_str(name, "name") }?;
        let key = unsafe { arg_str(key, "key") }?;
        let value = counters(c, name)?.increment(key);
        if !out.is_null() {
            Out::new(out, "out")?.write(value);
        }
        Ok(())
    })
}

/// Stops tracking `name` and drops its object (running a callback
/// object's `free_user_data`). A name not tracked is `PTS_ERROR_USAGE`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_untrack(
    container: *mut pts_container_t,
    name: *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { container_arg(container) }?;
        let name = unsafe { arg_str(name, "name") }?;
        if c.untrack(name).is_none() {
            return Err(pts_error_t::new(
                PTS_ERROR_USAGE,
                format!("no object is tracked as {name:?}; tracked: {:?}", c.tracked_names()),
            ));
        }
        Ok(())
    })
}

/// The names of the tracked objects, in the order they were tracked, as a
/// JSON array of strings. The caller frees `*out` with `pts_string_free`.
#[no_mangle]
pub unsafe extern "C" fn pts_container_tracked_names_json(
    container: *const pts_container_t,
    out: *mut *mut c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_ref(container, "container") }?;
        let out = Out::new(out, "out")?;
        let names = serde_json::to_string(&c.inner.tracked_names()).expect("strings serialize");
        out.write(owned_string(names)?);
        Ok(())
    })
}

/// The state behind a read-only handle.
unsafe fn state_ref<'a>(state: *const pts_state_t) -> CResult<&'a ExtraState> {
    // SAFETY: the handle is the `ExtraState` a callback received, alive
    // for the call.
    unsafe { arg_ref(state.cast::<ExtraState>(), "state") }
}

/// Sets the state's typed value from JSON text (any JSON value; no
/// duplicate key at any depth, `PTS_ERROR_INVALID_JSON` otherwise). A
/// state's value is `null` until set. Each tensor added with
/// `pts_state_add_tensor` must be named by exactly one tag in it.
#[no_mangle]
pub unsafe extern "C" fn pts_state_set_value_json(state: *mut pts_state_t, json: *const c_char) -> *mut pts_error_t {
    boundary(|| {
        // SAFETY: as in state_ref, and writable in get_state.
        let state = unsafe { arg_mut(state.cast::<ExtraState>(), "state") }?;
        let text = unsafe { arg_str(json, "json") }?;
        state.value = crate::format::json::parse_value(text).map_err(|e| {
            pts_error_t::new(
                PTS_ERROR_INVALID_JSON,
                format!("the state's value is not valid JSON: {e}"),
            )
        })?;
        Ok(())
    })
}

/// The state's typed value as JSON text; the caller frees `*out` with
/// `pts_string_free`.
#[no_mangle]
pub unsafe extern "C" fn pts_state_value_json(state: *const pts_state_t, out: *mut *mut c_char) -> *mut pts_error_t {
    boundary(|| {
        let state = unsafe { state_ref(state) }?;
        let out = Out::new(out, "out")?;
        out.write(owned_string(
            serde_json::to_string(&state.value).expect("a JSON value serializes"),
        )?);
        Ok(())
    })
}

/// Adds `tensor` to the state under `name` (shared, no copy: it is written
/// when the checkpoint is); the value names it with the tag
/// `{"__type__": "tensor", "name": "<name>"}`. The container writes it as
/// `<entry>.<name>`. An empty name is `PTS_ERROR_INVALID_ARGUMENT`, a name
/// added twice `PTS_ERROR_DUPLICATE_NAME`. The handle stays the caller's.
#[no_mangle]
pub unsafe extern "C" fn pts_state_add_tensor(
    state: *mut pts_state_t,
    name: *const c_char,
    tensor: *const pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        // SAFETY: as in state_ref, and writable in get_state.
        let state = unsafe { arg_mut(state.cast::<ExtraState>(), "state") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let tensor = unsafe { arg_ref(tensor, "tensor") }?;
        if name.is_empty() {
            return Err(pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                "a state's tensor needs a non-empty name",
            ));
        }
        if state.tensors.contains_key(name) {
            return Err(pts_error_t::new(
                PTS_ERROR_DUPLICATE_NAME,
                format!("tensor {name:?} was added to the state twice"),
            ));
        }
        state.add_tensor(name, tensor.tensor.shallow_clone());
        Ok(())
    })
}

/// The number of tensors the state holds.
#[no_mangle]
pub unsafe extern "C" fn pts_state_tensor_count(state: *const pts_state_t, out: *mut usize) -> *mut pts_error_t {
    boundary(|| {
        let state = unsafe { state_ref(state) }?;
        Out::new(out, "out")?.write(state.tensors.len());
        Ok(())
    })
}

/// The name of tensor `index` (in name order); the caller frees `*out`
/// with `pts_string_free`.
#[no_mangle]
pub unsafe extern "C" fn pts_state_tensor_name(
    state: *const pts_state_t,
    index: usize,
    out: *mut *mut c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let state = unsafe { state_ref(state) }?;
        let out = Out::new(out, "out")?;
        let name = state.tensors.keys().nth(index).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_INVALID_ARGUMENT,
                format!("index {index} is past the state's {} tensors", state.tensors.len()),
            )
        })?;
        out.write(owned_string(name.as_str())?);
        Ok(())
    })
}

/// The tensor named `name`, as a new handle sharing its storage that the
/// caller frees. `PTS_ERROR_NOT_FOUND` when the state holds none.
#[no_mangle]
pub unsafe extern "C" fn pts_state_tensor(
    state: *const pts_state_t,
    name: *const c_char,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let state = unsafe { state_ref(state) }?;
        let name = unsafe { arg_str(name, "name") }?;
        let out = Out::new(out, "out")?;
        let tensor = state.tensors.get(name).ok_or_else(|| {
            pts_error_t::new(
                PTS_ERROR_NOT_FOUND,
                format!(
                    "the state holds no tensor named {name:?}; it holds {:?}",
                    state.tensors.keys().collect::<Vec<_>>()
                ),
            )
        })?;
        out.write(pts_tensor_t::boxed(tensor.shallow_clone()));
        Ok(())
    })
}

/// The value at `path` in the state's value: object keys and list indices
/// separated by dots (`"torch.cpu"`, `"items.0"`; `""` is the value
/// itself).
fn value_at<'a>(state: &'a ExtraState, path: &str) -> Result<&'a Value> {
    if path.is_empty() {
        return Ok(&state.value);
    }
    let mut at = &state.value;
    for (depth, part) in path.split('.').enumerate() {
        let next = match at {
            Value::Object(m) => m.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        at = next.ok_or_else(|| {
            let place = path.split('.').take(depth + 1).collect::<Vec<_>>().join(".");
            state.invalid(&place, "is missing".into())
        })?;
    }
    Ok(at)
}

/// The tensor whose tag is at `path` in the state's value (`"weight"`,
/// `"torch.cpu"`: see `pts_state_i64_at` for paths), as a new handle
/// sharing its storage that the caller frees. Whatever names the file's
/// writer chose, the tag finds the tensor. A path that holds no tag is
/// `PTS_ERROR_INVALID_STATE` naming the entry and path.
#[no_mangle]
pub unsafe extern "C" fn pts_state_tensor_at(
    state: *const pts_state_t,
    path: *const c_char,
    out: *mut *mut pts_tensor_t,
) -> *mut pts_error_t {
    boundary(|| {
        let state = unsafe { state_ref(state) }?;
        let path = unsafe { arg_str(path, "path") }?;
        let out = Out::new(out, "out")?;
        let tensor = state.tensor(value_at(state, path)?, path)?;
        out.write(pts_tensor_t::boxed(tensor.shallow_clone()));
        Ok(())
    })
}

/// The 64-bit signed integer at `path` in the state's value: object keys
/// and list indices separated by dots (`"step"`, `"history.2"`). A
/// missing value or one that is not such an integer is
/// `PTS_ERROR_INVALID_STATE` naming the entry and path
/// (`__pytorch_saver__.extra.<entry>.state.<path>`).
#[no_mangle]
pub unsafe extern "C" fn pts_state_i64_at(
    state: *const pts_state_t,
    path: *const c_char,
    out: *mut i64,
) -> *mut pts_error_t {
    boundary(|| {
        let state = unsafe { state_ref(state) }?;
        let path = unsafe { arg_str(path, "path") }?;
        let out = Out::new(out, "out")?;
        let value = value_at(state, path)?;
        let i = value
            .as_i64()
            .ok_or_else(|| state.invalid(path, format!("{value} is not a 64-bit signed integer")))?;
        out.write(i);
        Ok(())
    })
}

/// The core container behind a handle.
unsafe fn container_arg<'a>(container: *mut pts_container_t) -> CResult<&'a mut crate::ModelContainer> {
    Ok(&mut unsafe { arg_mut(container, "container") }?.inner)
}
