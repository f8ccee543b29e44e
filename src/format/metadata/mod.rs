//! `metadata.json` of format versions 1 and 2 (docs/FORMAT.md sections 3,
//! 5, 6 and 11): the
//! one owner of the document. [`Metadata::parse`] validates the bytes the
//! reader found into the typed [`Metadata`]; [`Metadata::to_json`] is the
//! one serialization, which the writer writes. Everything else (the
//! container, the CLI, the C ABI) works on the typed document.
//!
//! - `parse.rs`: the validation (the schema's checks, in the order that
//!   decides which error a file with several defects gets);
//! - `serialize.rs`: the JSON object, with the original package's flat
//!   top-level keys and the format internals under one reserved key;
//! - `float.rs`: the internals' encoding of non-finite floats;
//! - `typed.rs`: the typed values of version 2's kwargs and extra state
//!   (tags), their checks and the conversions from and to version 1.

mod float;
mod param_group;
mod parse;
mod serialize;
pub mod typed;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{FormatError, MemberName};

pub use float::{decode_float, encode_float};
pub use param_group::ParamGroup;
pub(crate) use parse::producer as parse_producer;

/// The format version this library writes.
pub const FORMAT_VERSION: u64 = 2;
/// The versions this library reads.
pub const SUPPORTED_VERSIONS: &[u64] = &[1, 2];
/// The top-level key that holds every format internal.
pub const INTERNALS_KEY: &str = "__pytorch_saver__";
/// Top-level keys that user metadata may not use.
pub const RESERVED_KEYS: &[&str] = &[
    "model_kwargs",
    "optim_kwargs",
    "scheduler_kwargs",
    "timestamp",
    INTERNALS_KEY,
];
/// Largest `metadata.json` a reader accepts.
pub const MAX_METADATA_BYTES: u64 = 16 << 20;

/// Whether a file resumes training or only serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Model, and optionally optimizer and scheduler state.
    Checkpoint,
    /// Model only.
    Inference,
    /// Tensors and user metadata, no class (version 2, FORMAT.md 11.1).
    Weights,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Checkpoint => "checkpoint",
            FileKind::Inference => "inference",
            FileKind::Weights => "weights",
        }
    }
}

/// Who wrote a file (`__pytorch_saver__.producer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    pub library: String,
    pub version: String,
    pub language: String,
    pub torch_version: Option<String>,
}

impl Producer {
    /// This library, as the producer of what it writes.
    pub fn this_library() -> Self {
        Producer {
            library: "pytorch-saver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            language: "rust".into(),
            torch_version: cfg!(feature = "torch").then(|| crate::TORCH_VERSION.into()),
        }
    }
}

/// What builds one object: a registry class name and its constructor
/// kwargs (`torch.optim.Adam` and `{"lr": 0.001}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSpec {
    pub class: String,
    pub kwargs: Map<String, Value>,
}

impl ClassSpec {
    pub fn new(class: impl Into<String>, kwargs: Map<String, Value>) -> Self {
        ClassSpec {
            class: class.into(),
            kwargs,
        }
    }
}

/// The optimizer a file holds (FORMAT.md section 5): its class and kwargs
/// (`optim_kwargs`), and the JSON part of its `state_dict()`. The tensors
/// are the `optimizer.safetensors` member.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerMetadata {
    pub class: String,
    pub kwargs: Map<String, Value>,
    /// PyTorch's `param_groups`, `params` holding parameter indices.
    pub param_groups: Vec<ParamGroup>,
    /// The model state-dict name of each parameter index.
    pub param_names: Vec<String>,
    /// The parameter indices with state, each with its non-tensor state
    /// values (empty for the built-in optimizers).
    pub state: BTreeMap<usize, Map<String, Value>>,
}

impl OptimizerMetadata {
    /// Splits a tensor name `state.<index>.<key>` and checks it against
    /// `state`: the index must have an entry, whose JSON values do not
    /// include `key`.
    pub fn check_tensor_name<'n>(&self, name: &'n str) -> Result<(usize, &'n str), String> {
        let rest = name
            .strip_prefix("state.")
            .ok_or_else(|| "optimizer tensors are named state.<index>.<key>".to_string())?;
        let (index, key) = rest
            .split_once('.')
            .filter(|(i, k)| !k.is_empty() && !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| "optimizer tensors are named state.<index>.<key>".to_string())?;
        let canonical = index.parse::<usize>().ok().filter(|i| i.to_string() == index);
        let index = canonical.ok_or_else(|| format!("{index:?} is not a canonical decimal parameter index"))?;
        match self.state.get(&index) {
            None => Err(format!(
                "parameter {index} has no entry in {INTERNALS_KEY}.optimizer.state"
            )),
            Some(plain) if plain.contains_key(key) => {
                Err(format!("state key {key:?} is both a tensor and a JSON value"))
            }
            Some(_) => Ok((index, key)),
        }
    }
}

/// The LR scheduler a file holds (FORMAT.md section 6): its class and
/// kwargs (`scheduler_kwargs`), and its `state_dict()` as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerMetadata {
    pub class: String,
    pub kwargs: Map<String, Value>,
    pub state: Map<String, Value>,
}

/// One entry of `__pytorch_saver__.extra` (FORMAT.md 11.3): the state of
/// a stateful object saved with a checkpoint, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraEntry {
    /// The entry's name (`rng`, `scaler`).
    pub name: String,
    /// The kind of object whose state this is (`pytorch_saver.RNG`).
    pub class: String,
    /// The object's state: a typed value (FORMAT.md 11.2) whose `tensor`
    /// tags name tensors of `extra.safetensors`.
    pub state: Value,
}

/// `__pytorch_saver__.manager` (FORMAT.md 11.4).
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerRecord {
    pub id: String,
    pub step: u64,
    /// Names to finite numbers.
    pub metrics: Map<String, Value>,
}

/// `__pytorch_saver__.shard` (FORMAT.md 13.2): the block that makes a
/// weights file one shard of a sharded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardBlock {
    /// The sharded checkpoint's id: 32 lowercase hexadecimal digits
    /// ([`is_checkpoint_id`]), the same as its `index.json`'s.
    pub checkpoint_id: String,
    /// The rank that wrote the shard.
    pub rank: u64,
}

/// Whether `id` has the form of a sharded checkpoint's id (FORMAT.md
/// 13.1): 32 lowercase hexadecimal digits.
pub fn is_checkpoint_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The whole `metadata.json` of a file, typed: the reserved top-level
/// keys, the format internals and the user's keys.
///
/// A parsed value satisfies the schema (a scheduler only with an
/// optimizer, none of either in an inference file, unique parameter
/// names, ...). One built by hand is checked by the writer, which parses
/// what it is about to write with [`parse`](Self::parse).
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// `__pytorch_saver__.format_version`.
    pub format_version: u64,
    /// `__pytorch_saver__.kind`.
    pub kind: FileKind,
    /// `__pytorch_saver__.model.class` and `model_kwargs`; `None` in a
    /// weights file (FORMAT.md 11.1) only.
    pub model: Option<ClassSpec>,
    /// `__pytorch_saver__.optimizer` and `optim_kwargs`.
    pub optimizer: Option<OptimizerMetadata>,
    /// `__pytorch_saver__.scheduler` and `scheduler_kwargs`.
    pub scheduler: Option<SchedulerMetadata>,
    /// `__pytorch_saver__.extra`, in file order; `None` when the file has
    /// none (a present but empty object is `Some` of nothing).
    pub extra: Option<Vec<ExtraEntry>>,
    /// `__pytorch_saver__.manager`.
    pub manager: Option<ManagerRecord>,
    /// `__pytorch_saver__.shard` (version 2, weights files only).
    pub shard: Option<ShardBlock>,
    /// `__pytorch_saver__.producer`.
    pub producer: Producer,
    /// Save time, Unix seconds (UTC).
    pub timestamp: u64,
    /// Every other top-level key (`loss`, `epoch`, ...), in file order.
    pub user: Map<String, Value>,
}

impl Metadata {
    /// A file of this library's version and production holding a model
    /// alone, with no user metadata; add the rest through the fields.
    /// A weights file's metadata (FORMAT.md 11.1): no class, the user
    /// metadata `user`.
    pub fn weights(timestamp: u64, user: Map<String, Value>) -> Self {
        Metadata {
            format_version: FORMAT_VERSION,
            kind: FileKind::Weights,
            model: None,
            optimizer: None,
            scheduler: None,
            extra: None,
            manager: None,
            shard: None,
            producer: Producer::this_library(),
            timestamp,
            user,
        }
    }

    pub fn new(kind: FileKind, model: ClassSpec, timestamp: u64) -> Self {
        Metadata {
            format_version: FORMAT_VERSION,
            kind,
            model: Some(model),
            optimizer: None,
            scheduler: None,
            extra: None,
            manager: None,
            shard: None,
            producer: Producer::this_library(),
            timestamp,
            user: Map::new(),
        }
    }

    /// The model's class and kwargs; an error naming what is missing for
    /// a weights file, which names no class.
    pub fn model_spec(&self) -> Result<&ClassSpec, FormatError> {
        self.model.as_ref().ok_or_else(|| FormatError::Schema {
            field: format!("{INTERNALS_KEY}.model"),
            reason: "a weights file names no model class: give the class to build, or read its tensors".into(),
        })
    }

    /// The `tensor` tags of the extra state (FORMAT.md 11.3), in the order
    /// of step 16.14: each entry's `state` in file order, depth first.
    pub fn extra_tensor_refs(&self) -> Vec<typed::TensorRef> {
        let mut refs = Vec::new();
        for e in self.extra.iter().flatten() {
            typed::tensor_refs(&e.state, &format!("{INTERNALS_KEY}.extra.{}.state", e.name), &mut refs);
        }
        refs
    }

    /// The members a file with this metadata has, in their required order.
    pub fn members(&self) -> Vec<MemberName> {
        let mut m = vec![MemberName::Metadata, MemberName::Model];
        if self.optimizer.is_some() {
            m.push(MemberName::Optimizer);
        }
        if self.extra.is_some() {
            m.push(MemberName::Extra);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part, with keys in the order the writers of every language
    /// use, and the value forms they write (an int and a float `end_step`,
    /// a non-finite float, a user key before and after others).
    const CHECKPOINT: &str = r#"{
  "model_kwargs": {
    "in_dim": 4,
    "hidden_dim": 8
  },
  "optim_kwargs": {
    "lr": 0.01
  },
  "scheduler_kwargs": {
    "patience": 1
  },
  "timestamp": 1795895397,
  "step": 10,
  "notes": {
    "z": [1, 2.5, null, true],
    "a": "ünïcode"
  },
  "__pytorch_saver__": {
    "format_version": 1,
    "kind": "checkpoint",
    "model": {
      "class": "pytorch_saver.models.MLP"
    },
    "optimizer": {
      "class": "torch.optim.SGD",
      "param_groups": [
        {
          "lr": 0.05,
          "momentum": 0.9,
          "foreach": null,
          "params": [1, 0]
        },
        {
          "lr": 1e-8,
          "params": [2]
        }
      ],
      "param_names": ["fc1.weight", "fc1.bias", "fc2.weight"],
      "state": {
        "0": {},
        "2": {"note": 1}
      }
    },
    "scheduler": {
      "class": "torch.optim.lr_scheduler.ReduceLROnPlateau",
      "state": {
        "best": {"__float__": "inf"},
        "end_step": 11.0,
        "last_epoch": 0
      }
    },
    "producer": {
      "library": "pytorch-saver",
      "version": "0.1.0",
      "language": "python",
      "torch_version": "2.13.0+cu130"
    }
  }
}"#;

    fn pretty(v: &Map<String, Value>) -> String {
        serde_json::to_string_pretty(v).unwrap()
    }

    #[test]
    fn a_document_serializes_back_to_what_was_parsed_key_order_included() {
        let parsed = Metadata::parse(CHECKPOINT.as_bytes()).unwrap();
        let original: Map<String, Value> = serde_json::from_str(CHECKPOINT).unwrap();
        assert_eq!(pretty(&parsed.to_json()), pretty(&original));
        assert_eq!(Metadata::from_json(parsed.to_json()).unwrap(), parsed);

        let opt = parsed.optimizer.as_ref().unwrap();
        assert_eq!(opt.param_groups[0].params, [1, 0]);
        assert_eq!(opt.param_groups[1].options["lr"], 1e-8);
        assert_eq!(opt.kwargs["lr"], 0.01);
        assert_eq!(opt.state.keys().copied().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(
            opt.check_tensor_name("state.0.momentum_buffer"),
            Ok((0, "momentum_buffer"))
        );
        assert!(opt.check_tensor_name("state.1.momentum_buffer").is_err());
        assert!(opt.check_tensor_name("state.2.note").is_err());
        let sched = parsed.scheduler.as_ref().unwrap();
        assert_eq!(decode_float(&sched.state["best"]), Some(f64::INFINITY));
        assert_eq!(parsed.user.keys().collect::<Vec<_>>(), ["step", "notes"]);
        assert_eq!(parsed.members().len(), 3);

        let mut flat = original;
        flat.shift_remove(INTERNALS_KEY);
        assert_eq!(pretty(&parsed.flat()), pretty(&flat));
    }

    #[test]
    fn keys_the_format_does_not_define_inside_the_internals_are_ignored() {
        let mut meta: Map<String, Value> = serde_json::from_str(CHECKPOINT).unwrap();
        let internals = meta[INTERNALS_KEY].as_object_mut().unwrap();
        internals.insert("future".into(), Value::Bool(true));
        internals["model"]["hash"] = "abc".into();
        internals["producer"]["host"] = "x".into();
        let parsed = Metadata::from_json(meta).unwrap();
        assert_eq!(parsed, Metadata::parse(CHECKPOINT.as_bytes()).unwrap());
    }

    #[test]
    fn a_new_document_is_this_library_s_and_holds_a_model_alone() {
        let kwargs: Map<String, Value> = serde_json::from_str(r#"{"in_features": 2}"#).unwrap();
        let meta = Metadata::new(FileKind::Inference, ClassSpec::new("torch.nn.Linear", kwargs), 7);
        let json = meta.to_json();
        let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&json), ["model_kwargs", "timestamp", INTERNALS_KEY]);
        let internals = json[INTERNALS_KEY].as_object().unwrap();
        assert_eq!(keys(internals), ["format_version", "kind", "model", "producer"]);
        assert_eq!(internals["format_version"], FORMAT_VERSION);
        assert_eq!(internals["kind"], "inference");
        assert_eq!(internals["producer"]["library"], "pytorch-saver");
        assert_eq!(internals["producer"]["language"], "rust");
        let text = serde_json::to_vec_pretty(&json).unwrap();
        assert_eq!(Metadata::parse(&text).unwrap(), meta);
    }
}
