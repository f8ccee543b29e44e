//! The checkpoint manager (FORMAT.md section 12) for C: a series of
//! checkpoints in one directory under one prefix, with retention, a lock,
//! background saves and resuming from the newest good checkpoint.

use std::ffi::c_char;

use serde_json::{json, Value};

use super::container::{json_text, pts_container_t, user_metadata};
use super::load_options::options_or_default;
use super::*;
use crate::error::Error;
use crate::manager::{CheckpointInfo, CheckpointManager, Mode, Policy};

/// A checkpoint manager: holds the lock of its directory and prefix until
/// `pts_manager_close` or `pts_manager_free`. Used from one thread at a
/// time (it may move between threads); its background save runs on a
/// thread of its own.
pub struct pts_manager_t {
    inner: CheckpointManager,
}

fn policy_from_json(text: Option<&str>) -> CResult<Policy> {
    let map = match text {
        Some(t) => json_object_arg(t, "policy_json")?,
        None => serde_json::Map::new(),
    };
    let mut policy = Policy::default();
    let invalid = |key: &str, want: &str| {
        pts_error_t::new(
            PTS_ERROR_INVALID_ARGUMENT,
            format!("policy_json: {key:?} must be {want}"),
        )
    };
    let count = |key: &str, v: &Value| match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(key, "an integer >= 1 or null")),
    };
    for (key, value) in &map {
        match key.as_str() {
            "prefix" => policy.prefix = value.as_str().ok_or_else(|| invalid(key, "a string"))?.to_owned(),
            "keep_last" => policy.keep_last = count(key, value)?.map(|n| n as usize),
            "keep_best" => policy.keep_best = count(key, value)?.map(|n| n as usize),
            "keep_every_steps" => policy.keep_every_steps = count(key, value)?,
            "metric" => {
                policy.metric = match value {
                    Value::Null => None,
                    v => Some(v.as_str().ok_or_else(|| invalid(key, "a string or null"))?.to_owned()),
                }
            }
            "mode" => {
                policy.mode = match value.as_str() {
                    Some("min") => Mode::Min,
                    Some("max") => Mode::Max,
                    _ => return Err(invalid(key, "\"min\" or \"max\"")),
                }
            }
            other => {
                return Err(pts_error_t::new(
                    PTS_ERROR_INVALID_ARGUMENT,
                    format!(
                    "policy_json: unknown key {other:?} (prefix, keep_last, keep_best, metric, mode, keep_every_steps)"
                ),
                ))
            }
        }
    }
    Ok(policy)
}

fn info_json(info: &CheckpointInfo) -> Value {
    json!({
        "path": info.path.to_string_lossy(),
        "step": info.step,
        "timestamp": info.timestamp,
        "metrics": info.metrics,
        "kept_by": info.kept_by.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
    })
}

fn value_text(value: &Value) -> CResult<*mut c_char> {
    owned_string(serde_json::to_string(value).expect("JSON values serialize"))
}

fn skipped_value(skipped: &[(std::path::PathBuf, Error)]) -> Value {
    Value::Array(
        skipped
            .iter()
            .map(|(path, e)| json!({"path": path.to_string_lossy(), "kind": e.kind(), "message": e.to_string()}))
            .collect(),
    )
}

/// Opens the series in directory `dir` (created with its parents if
/// missing) under the policy `policy_json` (NULL: prefix "checkpoint",
/// keep everything), a JSON object of `prefix`, `keep_last`, `keep_best`,
/// `metric`, `mode` (`"min"` or `"max"`) and `keep_every_steps`, each
/// optional (null: unset). Takes the lock: another manager of the same
/// directory and prefix, in this process or another, gives
/// `PTS_ERROR_LOCKED`. The caller frees `*out` with `pts_manager_close` or
/// `pts_manager_free`.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_open(
    dir: *const c_char,
    policy_json: *const c_char,
    out: *mut *mut pts_manager_t,
) -> *mut pts_error_t {
    boundary(|| {
        let dir = unsafe { arg_str(dir, "dir") }?;
        let policy = policy_from_json(unsafe { opt_str(policy_json, "policy_json") }?)?;
        let out = Out::new(out, "out")?;
        let inner = CheckpointManager::open(dir, policy)?;
        out.write(Box::into_raw(Box::new(pts_manager_t { inner })));
        Ok(())
    })
}

/// Saves the container's checkpoint of `step`, with `metadata_json` (NULL:
/// none) as user metadata whose finite numbers become the file's metrics
/// (the policy's metric is required), then deletes what the policy no
/// longer keeps. Returns first the error of a background save nobody
/// collected. The caller frees `*path` with `pts_string_free`.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_save(
    manager: *mut pts_manager_t,
    container: *const pts_container_t,
    step: u64,
    metadata_json: *const c_char,
    path: *mut *mut c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_mut(manager, "manager") }?;
        let c = unsafe { arg_ref(container, "container") }?;
        let meta = unsafe { user_metadata(metadata_json) }?;
        let path_out = Out::new(path, "path")?;
        let saved = m.inner.save(&c.inner, step, &meta)?;
        path_out.write(owned_string(saved.to_string_lossy())?);
        Ok(())
    })
}

/// As `pts_manager_save`, in the background: waits for the save in
/// flight, copies the container's tensors and metadata into the manager's
/// snapshot buffer and returns; the caller may change the container at
/// once. `pts_manager_wait` collects the outcome.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_save_async(
    manager: *mut pts_manager_t,
    container: *const pts_container_t,
    step: u64,
    metadata_json: *const c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_mut(manager, "manager") }?;
        let c = unsafe { arg_ref(container, "container") }?;
        let meta = unsafe { user_metadata(metadata_json) }?;
        Ok(m.inner.save_async(&c.inner, step, &meta)?)
    })
}

/// Waits for the background save in flight and returns its error, or its
/// path in `*path` (NULL when nothing was in flight; free it with
/// `pts_string_free`).
#[no_mangle]
pub unsafe extern "C" fn pts_manager_wait(manager: *mut pts_manager_t, path: *mut *mut c_char) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_mut(manager, "manager") }?;
        let path_out = Out::new(path, "path")?;
        let saved = m.inner.wait()?;
        path_out.write(match saved {
            Some(p) => owned_string(p.to_string_lossy())?,
            None => std::ptr::null_mut(),
        });
        Ok(())
    })
}

/// The series' checkpoints, oldest first, as a JSON array of objects
/// `{"path", "step", "timestamp", "metrics", "kept_by"}` (`kept_by`: the
/// retention rules that keep it, `"latest"`, `"pinned"`, `"last"`,
/// `"best"`, `"every"`, `"all"`). The caller frees `*json`.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_list(manager: *const pts_manager_t, json: *mut *mut c_char) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_ref(manager, "manager") }?;
        let out = Out::new(json, "json")?;
        let list: Vec<Value> = m.inner.list()?.iter().map(info_json).collect();
        out.write(value_text(&Value::Array(list))?);
        Ok(())
    })
}

/// The newest checkpoint as a JSON object (as `pts_manager_list` gives
/// them), or `null`. The caller frees `*json`.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_latest(manager: *const pts_manager_t, json: *mut *mut c_char) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_ref(manager, "manager") }?;
        let out = Out::new(json, "json")?;
        let latest = m.inner.latest()?;
        out.write(value_text(&latest.as_ref().map_or(Value::Null, info_json))?);
        Ok(())
    })
}

/// Pins (`pin` true) or unpins a checkpoint of the series, by path or
/// file name: retention keeps a pinned one.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_pin(
    manager: *mut pts_manager_t,
    path: *const c_char,
    pin: bool,
) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_mut(manager, "manager") }?;
        let path = unsafe { arg_str(path, "path") }?;
        match pin {
            true => m.inner.pin(path)?,
            false => m.inner.unpin(path)?,
        }
        Ok(())
    })
}

/// Loads the newest checkpoint that loads (every CRC-32 checked) into a
/// new container over `registry` (NULL: the built-in classes), trying
/// older ones when it fails. `*out` is the new container, or NULL when the
/// series has no checkpoint (`*metadata_json` is then NULL too);
/// `*skipped_json` is a JSON array of `{"path", "kind", "message"}` for
/// the files skipped. When every checkpoint fails, the newest one's error
/// is returned. The caller frees what it receives.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_load_latest(
    manager: *const pts_manager_t,
    registry: *const pts_registry_t,
    options: *const pts_load_options_t,
    out: *mut *mut pts_container_t,
    metadata_json: *mut *mut c_char,
    skipped_json: *mut *mut c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_ref(manager, "manager") }?;
        let (out, meta_out) = (Out::new(out, "out")?, Out::new(metadata_json, "metadata_json")?);
        let skipped_out = Out::new(skipped_json, "skipped_json")?;
        // SAFETY: NULL or a live registry (header contract).
        let mut c = pts_container_t::new(unsafe { registry.as_ref() });
        let template = std::mem::take(&mut c.inner);
        match m.inner.load_latest_into(template, &options_or_default(options))? {
            Some(loaded) => {
                let (meta, skipped) = (
                    json_text(&loaded.metadata)?,
                    value_text(&skipped_value(&loaded.skipped))?,
                );
                c.inner = loaded.container;
                c.refresh();
                out.write(Box::into_raw(Box::new(c)));
                meta_out.write(meta);
                skipped_out.write(skipped);
            }
            None => {
                out.write(std::ptr::null_mut());
                meta_out.write(std::ptr::null_mut());
                skipped_out.write(value_text(&json!([]))?);
            }
        }
        Ok(())
    })
}

/// Restores the newest checkpoint that restores into the objects
/// `container` holds (as `pts_container_restore`, tracked objects
/// included), trying older ones when it fails; a failed one leaves the
/// container as it was. `*metadata_json` is NULL when the series has no
/// checkpoint; `*skipped_json` as for `pts_manager_load_latest`.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_restore_latest(
    manager: *const pts_manager_t,
    container: *mut pts_container_t,
    options: *const pts_load_options_t,
    metadata_json: *mut *mut c_char,
    skipped_json: *mut *mut c_char,
) -> *mut pts_error_t {
    boundary(|| {
        let m = unsafe { arg_ref(manager, "manager") }?;
        let c = unsafe { arg_mut(container, "container") }?;
        let meta_out = Out::new(metadata_json, "metadata_json")?;
        let skipped_out = Out::new(skipped_json, "skipped_json")?;
        match m.inner.restore_latest(&mut c.inner, &options_or_default(options))? {
            Some(restored) => {
                c.refresh();
                meta_out.write(json_text(&restored.metadata)?);
                skipped_out.write(value_text(&skipped_value(&restored.skipped))?);
            }
            None => {
                meta_out.write(std::ptr::null_mut());
                skipped_out.write(value_text(&json!([]))?);
            }
        }
        Ok(())
    })
}

/// Waits for the background save, releases the lock and frees the
/// manager (always, even when it returns an error): the error is that of
/// a background save nobody collected. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_close(manager: *mut pts_manager_t) -> *mut pts_error_t {
    boundary(|| {
        if manager.is_null() {
            return Ok(());
        }
        // SAFETY: a manager this library allocated, freed once.
        let m = unsafe { Box::from_raw(manager) };
        Ok(m.inner.close()?)
    })
}

/// Frees a manager (waiting for its background save, whose outcome is
/// dropped) and releases its lock. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pts_manager_free(manager: *mut pts_manager_t) {
    boundary_or((), || {
        if !manager.is_null() {
            // SAFETY: a manager this library allocated, freed once.
            drop(unsafe { Box::from_raw(manager) });
        }
    })
}
