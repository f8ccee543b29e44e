//! The one serialization of [`Metadata`]: the `metadata.json` object, in
//! the key order every writer of the format uses (the original package's
//! flat keys, the user's keys, then the internals; inside them PyTorch's
//! names in the order of FORMAT.md).

use serde_json::{Map, Value};

use super::ParamGroup;
use super::{Metadata, OptimizerMetadata, Producer, SchedulerMetadata, INTERNALS_KEY};

impl Metadata {
    /// The whole `metadata.json` object.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = self.flat();
        m.insert(INTERNALS_KEY.into(), Value::Object(self.internals()));
        m
    }

    /// The top level without the format internals: what a load returns as
    /// the file's metadata (`model_kwargs`, `optim_kwargs`,
    /// `scheduler_kwargs`, `timestamp` and the user's keys).
    pub fn flat(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(model) = &self.model {
            m.insert("model_kwargs".into(), Value::Object(model.kwargs.clone()));
        }
        if let Some(o) = &self.optimizer {
            m.insert("optim_kwargs".into(), Value::Object(o.kwargs.clone()));
        }
        if let Some(s) = &self.scheduler {
            m.insert("scheduler_kwargs".into(), Value::Object(s.kwargs.clone()));
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
