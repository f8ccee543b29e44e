//! A parameter group as `metadata.json` holds it: PyTorch's
//! `optimizer.param_groups[i]`. The optimizer's typed accessors for its
//! hyperparameters are in `optim::group`.

use serde_json::{Map, Value};

/// One parameter group: the indices of its parameters (into the
/// optimizer's parameter list) and its hyperparameters, keyed and ordered
/// as PyTorch's dict (`lr`, `betas`, `momentum`, ..., and what schedulers
/// add: `initial_lr`, `max_lr`, ...).
///
/// Floats are stored as JSON numbers, or in the format's encoding of a
/// non-finite float (`{"__float__": "inf"}`), so that a group serializes
/// as it is. Read them with `f64` (in `optim::group`), which understands
/// both.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// Indices of the group's parameters, in the group's order.
    pub params: Vec<usize>,
    /// Every other key of PyTorch's group dict, in PyTorch's order.
    pub options: Map<String, Value>,
}

impl ParamGroup {
    pub fn new(params: Vec<usize>, options: Map<String, Value>) -> Self {
        ParamGroup { params, options }
    }

    /// PyTorch's dict: the options, then `params` (as `metadata.json`
    /// holds it).
    pub fn to_json(&self) -> Value {
        let mut m = self.options.clone();
        m.insert("params".into(), self.params.iter().map(|&i| Value::from(i)).collect());
        Value::Object(m)
    }
}
