//! Hugging Face model directories, both ways: `config.json` with
//! `model.safetensors`, or shards listed by `model.safetensors.index.json`.
//!
//! Reading names the model by `transformers`' class of the config's
//! `architectures[0]` (`transformers.models.bert.modeling_bert.BertModel`)
//! with the config as an `hf_config` typed value under the kwarg `config`
//! (class `null`: the config class of its `model_type`). Writing does the
//! reverse, from the model kwargs' `hf_config` value, sharding as
//! `save_pretrained` does.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Map, Value};

use super::publish::{TempDir, TempFile};
use super::safetensors_file::{read_tensors, write_tensors};
use super::{foreign, tensor_bytes, Contents, ConvertOptions, ForeignTensor, RecordedKwargs, SourceKind};
use crate::error::{Error, Result};
use crate::format::{typed, ClassSpec, FormatError};
use crate::progress::Tracker;

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
/// A `config.json` or an index larger than this is no model's.
const MAX_JSON_BYTES: u64 = 64 << 20;
/// Keys of `config.json` that the `hf_config` value does not keep: the
/// architecture is the model class, and the version is the writer's.
const CONFIG_KEYS_NOT_KEPT: &[&str] = &["architectures", "transformers_version"];

fn read_json(dir: &Path, name: &str) -> Result<Map<String, Value>> {
    let path = dir.join(name);
    let len = std::fs::metadata(&path)
        .map_err(|e| foreign(dir, format!("cannot read {name}: {e}")))?
        .len();
    if len > MAX_JSON_BYTES {
        return Err(foreign(
            dir,
            format!("{name} is {len} bytes, more than {MAX_JSON_BYTES}"),
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| foreign(dir, format!("cannot read {name}: {e}")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(foreign(dir, format!("{name} is not a JSON object"))),
        Err(e) => Err(foreign(dir, format!("{name} is not valid JSON: {e}"))),
    }
}

/// Reads a Hugging Face model directory.
pub(crate) fn read_hf_dir(dir: &Path) -> Result<Contents> {
    if !dir.join(CONFIG).is_file() {
        return Err(foreign(
            dir,
            format!("a directory, but no Hugging Face model: it has no {CONFIG}"),
        ));
    }
    let config = read_json(dir, CONFIG)?;
    let model = if dir.join(INDEX).exists() {
        read_shards(dir)?
    } else if dir.join(WEIGHTS).is_file() {
        read_tensors(&dir.join(WEIGHTS))?.0
    } else {
        return Err(foreign(dir, format!("has neither {WEIGHTS} nor {INDEX}")));
    };
    Ok(Contents {
        source: SourceKind::HuggingFace,
        model,
        model_class: model_class(dir, config)?,
        optimizer: None,
        scheduler: None,
        user: Map::new(),
        recorded_kwargs: RecordedKwargs::default(),
        timestamp: None,
    })
}

/// The model class `config.json` names, or `None` when it has no
/// `architectures` or no `model_type` (the weights alone convert).
fn model_class(dir: &Path, mut config: Map<String, Value>) -> Result<Option<ClassSpec>> {
    let arch = config
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let model_type = config.get("model_type").and_then(Value::as_str);
    let (Some(arch), Some(model_type)) = (arch, model_type) else {
        return Ok(None);
    };
    let module = model_type.replace('-', "_");
    let class = format!("transformers.models.{module}.modeling_{module}.{arch}");
    if !typed::is_class_name(&class) || arch.contains('.') {
        return Err(foreign(
            dir,
            format!("{CONFIG}: architecture {arch:?} with model_type {model_type:?} names no Python class"),
        ));
    }
    for key in CONFIG_KEYS_NOT_KEPT {
        config.shift_remove(*key);
    }
    let mut kwargs = Map::new();
    kwargs.insert("config".into(), typed::object("hf_config", None, config));
    Ok(Some(ClassSpec::new(class, kwargs)))
}

/// A shard name of the index: a file directly inside the directory.
fn shard_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && rel.components().count() == 1
        && matches!(rel.components().next(), Some(Component::Normal(_)));
    if !plain {
        return Err(foreign(
            dir,
            format!("{INDEX} names the shard {name:?}, which is not a file name inside the directory"),
        ));
    }
    let path = dir.join(rel);
    // A link may lead anywhere: the shard must be a file of this directory.
    let real_dir = dir
        .canonicalize()
        .map_err(|e| foreign(dir, format!("cannot resolve: {e}")))?;
    let real = path.canonicalize().map_err(|e| {
        foreign(
            dir,
            format!("{INDEX} names the shard {name:?}, which cannot be read: {e}"),
        )
    })?;
    if real.parent() != Some(real_dir.as_path()) || !real.is_file() {
        return Err(foreign(
            dir,
            format!("{INDEX} names the shard {name:?}, which is not a file inside the directory"),
        ));
    }
    Ok(path)
}

/// The tensors of the shards the index lists, which must hold exactly the
/// tensors of its `weight_map`, each in the shard it names; in the order
/// the shards first appear in the map, each shard's by their data.
fn read_shards(dir: &Path) -> Result<Vec<ForeignTensor>> {
    let index = read_json(dir, INDEX)?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| foreign(dir, format!("{INDEX} has no weight_map object")))?;
    let mut shards: Vec<&str> = Vec::new();
    let mut expected: HashMap<&str, &str> = HashMap::with_capacity(map.len());
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| foreign(dir, format!("{INDEX}: the shard of {tensor:?} is not a string")))?;
        if !shards.contains(&shard) {
            shards.push(shard);
        }
        expected.insert(tensor, shard);
    }
    let mut tensors = Vec::with_capacity(map.len());
    let mut seen: HashMap<String, &str> = HashMap::with_capacity(map.len());
    for shard in shards {
        let path = shard_path(dir, shard)?;
        for t in read_tensors(&path)?.0 {
            if let Some(first) = seen.get(&t.name) {
                return Err(foreign(
                    dir,
                    format!("tensor {:?} is in two shards, {first:?} and {shard:?}", t.name),
                ));
            }
            match expected.get(t.name.as_str()) {
                Some(&named) if named == shard => {}
                Some(&named) => {
                    return Err(foreign(
                        dir,
                        format!(
                            "tensor {:?} is in {shard:?}, and {INDEX} says it is in {named:?}",
                            t.name
                        ),
                    ))
                }
                None => {
                    return Err(foreign(
                        dir,
                        format!("tensor {:?} of {shard:?} is not in {INDEX}'s weight_map", t.name),
                    ))
                }
            }
            seen.insert(t.name.clone(), shard);
            tensors.push(t);
        }
    }
    let missing: Vec<&&str> = expected.keys().filter(|name| !seen.contains_key(**name)).collect();
    if let Some(name) = missing.first() {
        return Err(foreign(
            dir,
            format!(
                "{INDEX} lists tensor {name:?} in {:?}, which does not hold it ({} tensors missing)",
                expected[**name],
                missing.len()
            ),
        ));
    }
    Ok(tensors)
}

/// The `hf_config` value of a model's kwargs (under any name), with the
/// class's short name and module.
fn hf_config(model: &ClassSpec) -> Option<&Map<String, Value>> {
    model.kwargs.values().find_map(|v| match typed::as_object(v) {
        Some(("hf_config", _, fields)) => Some(fields),
        _ => None,
    })
}

/// A typed value as plain JSON for `config.json`: tuples become lists;
/// other tags have no JSON form there.
fn plain_json(v: &Value, path: &str) -> std::result::Result<Value, String> {
    if let Some(items) = typed::as_tuple(v) {
        return items
            .iter()
            .enumerate()
            .map(|(i, v)| plain_json(v, &format!("{path}[{i}]")))
            .collect::<std::result::Result<_, _>>()
            .map(Value::Array);
    }
    match v {
        Value::Object(m) if m.contains_key(typed::TYPE_KEY) => Err(format!(
            "{path} is a {:?} value, which config.json cannot hold",
            typed::tag(v).unwrap_or("?")
        )),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), plain_json(v, &format!("{path}.{k}"))?)))
            .collect::<std::result::Result<Map<_, _>, String>>()
            .map(Value::Object),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| plain_json(v, &format!("{path}[{i}]")))
            .collect::<std::result::Result<_, _>>()
            .map(Value::Array),
        v => Ok(v.clone()),
    }
}

/// `config.json` for a model: the config's fields, its `architectures`
/// (the class's short name) and `model_type` (the fields', else the
/// class's module `transformers.models.<model_type>`).
fn config_json(model: &ClassSpec, output: &Path) -> Result<Map<String, Value>> {
    let fields = hf_config(model).ok_or_else(|| {
        Error::Usage(format!(
            "{}: a Hugging Face directory needs the model's config: the model {} has no hf_config value in \
             its kwargs; give --model and --model-kwargs '{{\"config\": {{\"__type__\": \"object\", \
             \"codec\": \"hf_config\", \"class\": null, \"fields\": {{...config.json...}}}}}}'",
            output.display(),
            model.class
        ))
    })?;
    let mut config = match plain_json(&Value::Object(fields.clone()), "config") {
        Ok(Value::Object(m)) => m,
        Ok(_) => unreachable!("an object stays an object"),
        Err(reason) => return Err(Error::Usage(format!("{}: {reason}", output.display()))),
    };
    let arch = model.class.rsplit('.').next().unwrap_or(&model.class);
    config.insert("architectures".into(), json!([arch]));
    if !config.contains_key("model_type") {
        let module = model
            .class
            .strip_prefix("transformers.models.")
            .and_then(|rest| rest.split('.').next())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: the config has no model_type, and the class {} is not transformers.models.<model_type>.…",
                    output.display(),
                    model.class
                ))
            })?;
        config.insert("model_type".into(), module.into());
    }
    config.sort_keys();
    Ok(config)
}

/// The tensors of each shard: in state-dict order, a new shard whenever
/// the next tensor would take the current one past `max` (a tensor larger
/// than `max` gets a shard of its own), as `save_pretrained` splits.
fn split_shards(model: &[ForeignTensor], max: Option<u64>) -> Vec<Vec<&ForeignTensor>> {
    let mut shards: Vec<Vec<&ForeignTensor>> = vec![Vec::new()];
    let mut size = 0u64;
    for t in model {
        let n = t.data.as_slice().len() as u64;
        let current = shards.last_mut().expect("one shard at least");
        if max.is_some_and(|max| size + n > max) && !current.is_empty() {
            shards.push(vec![t]);
            size = n;
        } else {
            current.push(t);
            size += n;
        }
    }
    shards
}

fn write_json(dir: &Path, name: &str, value: &Value) -> Result<()> {
    let tmp = TempFile::in_dir(dir, name)?;
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| Error::Usage(e.to_string()))?;
    text.push(b'\n');
    (&tmp.file)
        .write_all(&text)
        .map_err(|e| Error::Format(FormatError::io("cannot write", &tmp.path, e)))?;
    tmp.rename_into_place()
}

/// Writes a Hugging Face model directory `output` (which must not exist).
pub(crate) fn write_hf_dir(contents: &Contents, output: &Path, options: &ConvertOptions) -> Result<PathBuf> {
    let model = options
        .model
        .as_ref()
        .or(contents.model_class.as_ref())
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: the input names no model class, and a Hugging Face directory needs one with its config: give \
             --model and --model-kwargs",
                output.display()
            ))
        })?;
    let config = config_json(model, output)?;
    if options.max_shard_size == Some(0) {
        return Err(Error::Usage("--max-shard-size must be at least one byte".into()));
    }
    let shards = split_shards(&contents.model, options.max_shard_size);
    let dir = TempDir::for_output(output)?;
    let tracker = Tracker::maybe(options.progress.as_ref(), tensor_bytes(&contents.model));
    write_json(&dir.path, CONFIG, &Value::Object(config))?;
    if shards.len() == 1 {
        let tmp = TempFile::in_dir(&dir.path, WEIGHTS)?;
        write_tensors(&shards[0], &tmp.file, &tmp.path, &tracker)?;
        tmp.rename_into_place()?;
    } else {
        let mut weight_map = Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
            let tmp = TempFile::in_dir(&dir.path, &name)?;
            write_tensors(shard, &tmp.file, &tmp.path, &tracker)?;
            tmp.rename_into_place()?;
            for t in shard {
                weight_map.insert(t.name.clone(), name.clone().into());
            }
        }
        weight_map.sort_keys();
        let total_parameters: u64 = contents
            .model
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum();
        let index = json!({
            "metadata": {"total_size": tensor_bytes(&contents.model), "total_parameters": total_parameters},
            "weight_map": weight_map,
        });
        write_json(&dir.path, INDEX, &index)?;
    }
    dir.publish()?;
    tracker.finish();
    Ok(output.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tensor(name: &str, bytes: usize) -> ForeignTensor {
        ForeignTensor {
            name: name.into(),
            dtype: crate::format::Dtype::U8,
            shape: vec![bytes],
            data: super::super::TensorBytes::Owned(Arc::new(vec![0; bytes])),
        }
    }

    #[test]
    fn shards_split_where_the_next_tensor_would_pass_the_limit() {
        let model = [tensor("a", 6), tensor("b", 4), tensor("c", 12), tensor("d", 1)];
        let names = |shards: Vec<Vec<&ForeignTensor>>| -> Vec<Vec<String>> {
            shards
                .into_iter()
                .map(|s| s.into_iter().map(|t| t.name.clone()).collect())
                .collect()
        };
        assert_eq!(names(split_shards(&model, None)), [["a", "b", "c", "d"]]);
        assert_eq!(
            names(split_shards(&model, Some(10))),
            [vec!["a", "b"], vec!["c"], vec!["d"]]
        );
    }

    #[test]
    fn shard_names_must_be_plain_file_names() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "../x.safetensors",
            "/etc/passwd",
            "",
            "a/../../b",
            "sub/x.safetensors",
            ".",
        ] {
            let e = shard_path(dir.path(), bad).unwrap_err().to_string();
            assert!(e.contains("not a file name inside the directory"), "{bad}: {e}");
        }
    }
}
