//! The one serialization of [`Metadata`]: the `metadata.json` object, in
//! the key order every writer of the format uses (the original package's
//! flat keys, the user's keys, then the internals; inside them PyTorch's
//! names in the order of FORMAT.md).

use serde_json::{Map, Value};

use super::typed;
use super::ParamGroup;
use super::{FileKind, Metadata, OptimizerMetadata, Producer, SchedulerMetadata, INTERNALS_KEY};
use crate::format::FormatError;

impl Metadata {
    /// Refuses, with [`FormatError::InvalidInput`] naming the feature and
    /// where it is, what [`format_version`](Self::format_version) cannot
    /// hold: version 1 has no weights kind, extra state, manager block or
    /// tags in the kwargs other than `dict` tags with string keys
    /// (FORMAT.md 11.8). The writer asks before it creates a file.
    pub fn check_version_features(&self) -> Result<(), FormatError> {
        if self.format_version != 1 {
            return Ok(());
        }
        let refuse = |feature: &str| {
            Err(FormatError::InvalidInput(format!(
                "format version 1 cannot hold {feature}: write format version 2"
            )))
        };
        if self.kind == FileKind::Weights {
            return refuse(&format!("the weights kind ({INTERNALS_KEY}.kind)"));
        }
        if self.extra.is_some() {
            return refuse(&format!("extra training state ({INTERNALS_KEY}.extra)"));
        }
        if self.manager.is_some() {
            return refuse(&format!("a manager block ({INTERNALS_KEY}.manager)"));
        }
        if self.shard.is_some() {
            return refuse(&format!("a shard block ({INTERNALS_KEY}.shard)"));
        }
        for (kwargs, key) in self.kwargs_parts() {
            typed::to_v1(kwargs, key)?;
        }
        Ok(())
    }

    /// Each kwargs object the document has, under its top-level key.
    fn kwargs_parts(&self) -> Vec<(&Map<String, Value>, &'static str)> {
        let mut parts = Vec::new();
        if let Some(model) = &self.model {
            parts.push((&model.kwargs, "model_kwargs"));
        }
        if let Some(o) = &self.optimizer {
            parts.push((&o.kwargs, "optim_kwargs"));
        }
        if let Some(s) = &self.scheduler {
            parts.push((&s.kwargs, "scheduler_kwargs"));
        }
        parts
    }

    /// The whole `metadata.json` object, in the document's format version
    /// (version 1: kwargs as plain JSON, FORMAT.md 11.7).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = self.flat();
        m.insert(INTERNALS_KEY.into(), Value::Object(self.internals()));
        m
    }

    /// The top level without the format internals: what a load returns as
    /// the file's metadata (`model_kwargs`, `optim_kwargs`,
    /// `scheduler_kwargs`, `timestamp` and the user's keys), in the
    /// document's format version.
    pub fn flat(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (kwargs, key) in self.kwargs_parts() {
            let kwargs = match self.format_version {
                1 => typed::to_v1_or_same(kwargs),
                _ => kwargs.clone(),
            };
            m.insert(key.into(), Value::Object(kwargs));
        }
        m.insert("timestamp".into(), self.timestamp.into());
        for (k, v) in &self.user {
            m.insert(k.clone(), v.clone());
        }
        m
    }

    /// `__pytorch_saver__`.
    fn internals(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("format_version".into(), self.format_version.into());
        m.insert("kind".into(), self.kind.as_str().into());
        if let Some(model) = &self.model {
            m.insert("model".into(), class_object(&model.class));
        }
        if let Some(o) = &self.optimizer {
            m.insert("optimizer".into(), Value::Object(o.to_json()));
        }
        if let Some(s) = &self.scheduler {
            m.insert("scheduler".into(), Value::Object(s.to_json()));
        }
        if let Some(extra) = &self.extra {
            let entries: Map<String, Value> = extra
                .iter()
                .map(|e| {
                    let mut o = Map::new();
                    o.insert("class".into(), e.class.clone().into());
                    o.insert("state".into(), e.state.clone());
                    (e.name.clone(), Value::Object(o))
                })
                .collect();
            m.insert("extra".into(), Value::Object(entries));
        }
        if let Some(r) = &self.manager {
            let mut o = Map::new();
            o.insert("id".into(), r.id.clone().into());
            o.insert("step".into(), r.step.into());
            o.insert("metrics".into(), Value::Object(r.metrics.clone()));
            m.insert("manager".into(), Value::Object(o));
        }
        if let Some(b) = &self.shard {
            let mut o = Map::new();
            o.insert("checkpoint_id".into(), b.checkpoint_id.clone().into());
            o.insert("rank".into(), b.rank.into());
            m.insert("shard".into(), Value::Object(o));
        }
        m.insert("producer".into(), Value::Object(self.producer.to_json()));
        m
    }
}

/// `{"class": NAME}`.
fn class_object(class: &str) -> Value {
    let mut m = Map::new();
    m.insert("class".into(), class.into());
    Value::Object(m)
}

impl OptimizerMetadata {
    /// `__pytorch_saver__.optimizer` (the kwargs are `optim_kwargs`).
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("class".into(), self.class.clone().into());
        m.insert(
            "param_groups".into(),
            self.param_groups.iter().map(ParamGroup::to_json).collect(),
        );
        m.insert("param_names".into(), self.param_names.clone().into());
        let state: Map<String, Value> = self
            .state
            .iter()
            .map(|(i, plain)| (i.to_string(), Value::Object(plain.clone())))
            .collect();
        m.insert("state".into(), Value::Object(state));
        m
    }
}

impl SchedulerMetadata {
    /// `__pytorch_saver__.scheduler` (the kwargs are `scheduler_kwargs`).
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("class".into(), self.class.clone().into());
        m.insert("state".into(), Value::Object(self.state.clone()));
        m
    }
}

impl Producer {
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("library".into(), self.library.clone().into());
        m.insert("version".into(), self.version.clone().into());
        m.insert("language".into(), self.language.clone().into());
        if let Some(t) = &self.torch_version {
            m.insert("torch_version".into(), t.clone().into());
        }
        m
    }
}
