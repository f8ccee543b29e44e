//! Files of the original package (0.1.x): read without running any of
//! their pickle.
//!
//! Such a file is a deflated ZIP of `metadata.json` (the constructor
//! kwargs, a timestamp and the user's values; no class names) and
//! `state_dicts.pkl`, the `pickle.dumps` of `{"model_state_dict": ...,
//! "optim_state_dict": ..., "scheduler_state_dict": ...}`. A tensor there
//! pickles as `torch._utils._rebuild_tensor_v2(storage, ...)` whose storage
//! pickles as `torch.storage._load_from_bytes(b)`, `b` being torch's legacy
//! format of that one storage: parsed here by the same restricted reader.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value as Json};

use super::pickle::{self, Arena, Context, ObjId, Profile, Value};
use super::torch_file::{self, Tensors};
use super::training_dict::{self, as_dict, string_keys};
use super::{foreign, Contents, RecordedKwargs, SourceKind};
use crate::error::Result;
use crate::format::FormatError;

const METADATA_MEMBER: &str = "metadata.json";
const PICKLE_MEMBER: &str = "state_dicts.pkl";
const STATE_DICT_KEYS: &[&str] = &["model_state_dict", "optim_state_dict", "scheduler_state_dict"];
/// Keys of `metadata.json` that are not user values (FORMAT.md 3.1; the
/// original package wrote the first four).
const RESERVED_KEYS: &[&str] = &[
    "model_kwargs",
    "optim_kwargs",
    "scheduler_kwargs",
    "timestamp",
    "__pytorch_saver__",
];
/// The largest `metadata.json` read (FORMAT.md 3).
const MAX_METADATA_BYTES: u64 = 16 << 20;
/// The largest `state_dicts.pkl` inflated into memory.
const MAX_PICKLE_BYTES: u64 = 1 << 36;
/// What the original package's `json.dumps` wrote for non-finite floats,
/// read as strings that say so (and refused where they are used).
const NON_FINITE_MARK: &str = "\u{0}non-finite:";

/// Whether `path` is a file of the original package: a ZIP with
/// `state_dicts.pkl` and a `metadata.json` object without
/// `__pytorch_saver__` (by its members, never its name).
pub(crate) fn is_legacy_zip(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    let Ok(mut archive) = zip::ZipArchive::new(file) else {
        return false;
    };
    if archive.by_name(PICKLE_MEMBER).is_err() {
        return false;
    }
    matches!(read_metadata(path, &mut archive), Ok(m) if !m.contains_key("__pytorch_saver__"))
}

/// Reads a file of the original package.
pub(crate) fn read_legacy_file(path: &Path) -> Result<Contents> {
    let file = File::open(path).map_err(|e| FormatError::io("open", path, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| foreign(path, format!("not a valid ZIP archive: {e}")))?;
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    for name in &names {
        if name != METADATA_MEMBER && name != PICKLE_MEMBER {
            return Err(foreign(
                path,
                format!("unexpected member {name:?} in a pytorch-saver 0.1 file"),
            ));
        }
    }
    if archive.len() != 2 || names.len() != 2 {
        return Err(foreign(
            path,
            format!("a pytorch-saver 0.1 file holds {METADATA_MEMBER} and {PICKLE_MEMBER} once each"),
        ));
    }
    let metadata = read_metadata(path, &mut archive)?;
    let data = read_pickle(path, &mut archive)?;

    let mut arena = Arena::default();
    let what = PICKLE_MEMBER;
    let (root, end) = load_package_pickle(path, what, &mut arena, &data)?;
    if end != data.len() {
        return Err(foreign(
            path,
            format!("{what}: {} bytes after the pickle", data.len() - end),
        ));
    }
    let bad = |reason: String| foreign(path, format!("{what}: {reason}"));
    let dict = as_dict(&arena, root).ok_or_else(|| bad("holds no dict of state dicts".into()))?;
    let entries = string_keys(path, dict, what)?;
    for (key, _) in &entries {
        if !STATE_DICT_KEYS.contains(key) {
            return Err(bad(format!(
                "unexpected key {key:?} (a pytorch-saver 0.1 file holds {})",
                STATE_DICT_KEYS.join(", ")
            )));
        }
    }
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, v)| *k == key && !matches!(v, Value::None))
            .map(|(_, v)| *v)
    };
    let model = get("model_state_dict").ok_or_else(|| bad("no model_state_dict".into()))?;
    let tensors = Tensors::new(path, &arena, HashMap::new(), None, data.len() as u64);
    let recorded = |key: &str| match metadata.get(key) {
        Some(serde_json::Value::Object(m)) => Some(m.clone()),
        _ => None,
    };
    let recorded_kwargs = RecordedKwargs {
        model: recorded("model_kwargs"),
        optimizer: recorded("optim_kwargs"),
        scheduler: recorded("scheduler_kwargs"),
    };
    let timestamp = metadata.get("timestamp").and_then(serde_json::Value::as_u64);
    let mut user = Map::new();
    for (key, value) in metadata {
        if RESERVED_KEYS.contains(&key.as_str()) {
            continue;
        }
        if let Some(text) = non_finite_in(&value) {
            return Err(foreign(
                path,
                format!(
                    "{METADATA_MEMBER}: {key:?} holds {text}, which metadata cannot hold (FORMAT.md 3): set it \
                     to a finite value or remove it"
                ),
            ));
        }
        user.insert(key, value);
    }
    Ok(Contents {
        source: SourceKind::Legacy,
        model: training_dict::state_dict(path, &arena, model, &tensors, "model_state_dict")?,
        model_class: None,
        optimizer: get("optim_state_dict")
            .map(|v| training_dict::optimizer_state(path, &arena, v, &tensors, "optim_state_dict"))
            .transpose()?,
        scheduler: get("scheduler_state_dict")
            .map(|v| training_dict::scheduler_state(path, &arena, v, "scheduler_state_dict"))
            .transpose()?,
        user,
        recorded_kwargs,
        timestamp,
    })
}

fn load_package_pickle<'a>(
    path: &Path,
    what: &str,
    arena: &mut Arena<'a>,
    data: &'a [u8],
) -> Result<(Value<'a>, usize)> {
    let parse = |bytes: &'a [u8], arena: &mut Arena<'a>| storage_from_bytes(path, bytes, arena);
    let cx = Context {
        file: path,
        what,
        profile: Profile::Package01,
        load_from_bytes: Some(&parse),
    };
    pickle::load(arena, data, 0, &cx)
}

/// `torch.storage._load_from_bytes(bytes)`: the storage that `bytes`
/// (torch's legacy format) holds. The same bytes are parsed once.
fn storage_from_bytes<'a>(path: &Path, bytes: &'a [u8], arena: &mut Arena<'a>) -> Result<ObjId> {
    let at = (bytes.as_ptr() as usize, bytes.len());
    if let Some(&id) = arena.loaded.get(&at) {
        return Ok(id);
    }
    let what = format!("{PICKLE_MEMBER}: storage bytes");
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(foreign(
            path,
            format!("{what}: a torch.save zip archive; storages pickle in torch's legacy format, which is all this reader parses"),
        ));
    }
    let (root, end) = torch_file::load_legacy_format(path, &what, arena, bytes, Profile::LegacyStorage)?;
    if end != bytes.len() {
        return Err(foreign(
            path,
            format!("{what}: {} bytes after the last storage", bytes.len() - end),
        ));
    }
    let id = match root {
        Value::Obj(id) if arena.storage(id).is_some() => id,
        _ => return Err(foreign(path, format!("{what}: holds something that is not a storage"))),
    };
    arena.loaded.insert(at, id);
    Ok(id)
}

fn read_pickle(path: &Path, archive: &mut zip::ZipArchive<File>) -> Result<Vec<u8>> {
    let mut member = archive
        .by_name(PICKLE_MEMBER)
        .map_err(|e| foreign(path, format!("{PICKLE_MEMBER}: {e}")))?;
    let declared = member.size();
    if declared > MAX_PICKLE_BYTES {
        return Err(foreign(
            path,
            format!("{PICKLE_MEMBER} is {declared} bytes, above the limit of {MAX_PICKLE_BYTES}"),
        ));
    }
    // Memory grows as inflated bytes arrive, never by the declared size.
    let mut out = Vec::new();
    (&mut member)
        .take(declared + 1)
        .read_to_end(&mut out)
        .map_err(|e| foreign(path, format!("{PICKLE_MEMBER}: {e}")))?;
    if out.len() as u64 != declared {
        return Err(foreign(
            path,
            format!("{PICKLE_MEMBER} holds {} bytes, its header says {declared}", out.len()),
        ));
    }
    Ok(out)
}

/// `metadata.json`, an object. The original package wrote Python's
/// `json.dumps` defaults, so `NaN` and `Infinity` may appear: they are read
/// as marked strings, refused if they reach the output.
fn read_metadata(path: &Path, archive: &mut zip::ZipArchive<File>) -> Result<Map<String, Json>> {
    let mut member = archive
        .by_name(METADATA_MEMBER)
        .map_err(|e| foreign(path, format!("{METADATA_MEMBER}: {e}")))?;
    if member.size() > MAX_METADATA_BYTES {
        return Err(foreign(
            path,
            format!("{METADATA_MEMBER} is larger than {MAX_METADATA_BYTES} bytes"),
        ));
    }
    let mut raw = Vec::new();
    (&mut member)
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| foreign(path, format!("{METADATA_MEMBER}: {e}")))?;
    if raw.len() as u64 > MAX_METADATA_BYTES {
        return Err(foreign(
            path,
            format!("{METADATA_MEMBER} is larger than {MAX_METADATA_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(&raw).map_err(|_| foreign(path, format!("{METADATA_MEMBER} is not UTF-8")))?;
    let text = mark_non_finite(text);
    let value: Json =
        serde_json::from_str(&text).map_err(|e| foreign(path, format!("{METADATA_MEMBER}: not JSON: {e}")))?;
    match value {
        Json::Object(map) => Ok(map),
        _ => Err(foreign(
            path,
            format!("{METADATA_MEMBER}: top level is not a JSON object"),
        )),
    }
}

/// Replaces Python's `NaN`, `Infinity` and `-Infinity` outside strings with
/// strings that carry [`NON_FINITE_MARK`].
fn mark_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        if let Some(token) = token {
            out.push_str(&format!("\"\\u0000non-finite:{token}\""));
            rest = &rest[token.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The first non-finite float [`mark_non_finite`] marked in `value`.
fn non_finite_in(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => s.strip_prefix(NON_FINITE_MARK).map(str::to_owned),
        Json::Array(items) => items.iter().find_map(non_finite_in),
        Json::Object(map) => map.values().find_map(non_finite_in),
        _ => None,
    }
}
