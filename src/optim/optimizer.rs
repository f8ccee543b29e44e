//! The optimizers: torch.optim's SGD, Adam, AdamW, RMSprop and Adagrad,
//! step by step the single-tensor ("for-loop") code path of PyTorch 2.13,
//! same ATen ops with the same scalars, so the results are bit-identical
//! to PyTorch's on the same libtorch, and the state is PyTorch's
//! `state_dict()` layout.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use super::kernels;
use super::ParamGroup;
use crate::error::{Error, Result};
use crate::kwargs::Kwargs;

/// `torch.optim.SGD`
pub const SGD: &str = "torch.optim.SGD";
/// `torch.optim.Adam`
pub const ADAM: &str = "torch.optim.Adam";
/// `torch.optim.AdamW`
pub const ADAMW: &str = "torch.optim.AdamW";
/// `torch.optim.RMSprop`
pub const RMSPROP: &str = "torch.optim.RMSprop";
/// `torch.optim.Adagrad`
pub const ADAGRAD: &str = "torch.optim.Adagrad";

/// Every optimizer name this library knows.
pub fn names() -> &'static [&'static str] {
    &[ADAGRAD, ADAM, ADAMW, RMSPROP, SGD]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sgd,
    Adam,
    AdamW,
    RmsProp,
    Adagrad,
}

/// How a hyperparameter is checked.
#[derive(Debug, Clone, Copy)]
enum Ty {
    /// A float in `[min, max)` (`max` None: unbounded).
    Float {
        min: f64,
        max: Option<f64>,
    },
    Bool,
    /// `true`, `false` or `null` (foreach, fused).
    OptBool,
    /// Two floats in `[0, 1)` (betas).
    Betas,
}

const NON_NEG: Ty = Ty::Float { min: 0.0, max: None };

/// One hyperparameter: PyTorch's key, check and default (as PyTorch
/// writes it: `0` for an int default, `0.0` for a float one).
struct Hp {
    key: &'static str,
    ty: Ty,
    default: fn() -> Value,
}

macro_rules! hp {
    ($key:literal, $ty:expr, $default:tt) => {
        Hp {
            key: $key,
            ty: $ty,
            default: || serde_json::json!($default),
        }
    };
}

/// PyTorch 2.13's param_group keys, in its order, with their defaults.
fn hyperparameters(alg: Algorithm) -> &'static [Hp] {
    static SGD_HP: &[Hp] = &[
        hp!("lr", NON_NEG, 1e-3),
        hp!("momentum", NON_NEG, 0),
        hp!(
            "dampening",
            Ty::Float {
                min: f64::NEG_INFINITY,
                max: None
            },
            0
        ),
        hp!("weight_decay", NON_NEG, 0),
        hp!("nesterov", Ty::Bool, false),
        hp!("maximize", Ty::Bool, false),
        hp!("foreach", Ty::OptBool, null),
        hp!("differentiable", Ty::Bool, false),
        hp!("fused", Ty::OptBool, null),
    ];
    static ADAM_HP: &[Hp] = &[
        hp!("lr", NON_NEG, 1e-3),
        hp!("betas", Ty::Betas, [0.9, 0.999]),
        hp!("eps", NON_NEG, 1e-8),
        hp!("weight_decay", NON_NEG, 0),
        hp!("amsgrad", Ty::Bool, false),
        hp!("maximize", Ty::Bool, false),
        hp!("foreach", Ty::OptBool, null),
        hp!("capturable", Ty::Bool, false),
        hp!("differentiable", Ty::Bool, false),
        hp!("fused", Ty::OptBool, null),
        hp!("decoupled_weight_decay", Ty::Bool, false),
    ];
    static RMSPROP_HP: &[Hp] = &[
        hp!("lr", NON_NEG, 1e-2),
        hp!("momentum", NON_NEG, 0),
        hp!("alpha", NON_NEG, 0.99),
        hp!("eps", NON_NEG, 1e-8),
        hp!("centered", Ty::Bool, false),
        hp!("weight_decay", NON_NEG, 0),
        hp!("capturable", Ty::Bool, false),
        hp!("foreach", Ty::OptBool, null),
        hp!("maximize", Ty::Bool, false),
        hp!("differentiable", Ty::Bool, false),
    ];
    static ADAGRAD_HP: &[Hp] = &[
        hp!("lr", NON_NEG, 1e-2),
        hp!("lr_decay", NON_NEG, 0),
        hp!("eps", NON_NEG, 1e-10),
        hp!("weight_decay", NON_NEG, 0),
        hp!("initial_accumulator_value", NON_NEG, 0),
        hp!("foreach", Ty::OptBool, null),
        hp!("maximize", Ty::Bool, false),
        hp!("differentiable", Ty::Bool, false),
        hp!("fused", Ty::OptBool, null),
    ];
    match alg {
        Algorithm::Sgd => SGD_HP,
        // AdamW differs only in two defaults: see `default`.
        Algorithm::Adam | Algorithm::AdamW => ADAM_HP,
        Algorithm::RmsProp => RMSPROP_HP,
        Algorithm::Adagrad => ADAGRAD_HP,
    }
}

impl Algorithm {
    fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            SGD => Algorithm::Sgd,
            ADAM => Algorithm::Adam,
            ADAMW => Algorithm::AdamW,
            RMSPROP => Algorithm::RmsProp,
            ADAGRAD => Algorithm::Adagrad,
            _ => {
                return Err(Error::UnknownName {
                    kind: "optimizer",
                    name: name.into(),
                    known: names().join(", "),
                })
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Sgd => SGD,
            Algorithm::Adam => ADAM,
            Algorithm::AdamW => ADAMW,
            Algorithm::RmsProp => RMSPROP,
            Algorithm::Adagrad => ADAGRAD,
        }
    }

    /// Keys set by the class, not by kwargs.
    fn fixed(self, key: &str) -> bool {
        self == Algorithm::AdamW && key == "decoupled_weight_decay"
    }

    /// The default of `hp` for this class: AdamW is Adam with
    /// `weight_decay=1e-2` and `decoupled_weight_decay=True` (fixed).
    fn default(self, hp: &Hp) -> Value {
        match (self, hp.key) {
            (Algorithm::AdamW, "weight_decay") => serde_json::json!(1e-2),
            (Algorithm::AdamW, "decoupled_weight_decay") => Value::Bool(true),
            _ => (hp.default)(),
        }
    }

    /// The per-parameter state keys this algorithm may hold; `step` is a
    /// rank-0 float32 CPU tensor, every other one has the parameter's shape.
    fn state_keys(self) -> &'static [&'static str] {
        match self {
            Algorithm::Sgd => &["momentum_buffer"],
            Algorithm::Adam | Algorithm::AdamW => &["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
            Algorithm::RmsProp => &["step", "square_avg", "momentum_buffer", "grad_avg"],
            Algorithm::Adagrad => &["step", "sum"],
        }
    }

    /// The state keys a parameter's non-empty state must have under `group`.
    fn required_state(self, group: &ParamGroup) -> Result<Vec<&'static str>> {
        Ok(match self {
            Algorithm::Sgd => vec!["momentum_buffer"],
            Algorithm::Adam | Algorithm::AdamW => {
                let mut k = vec!["step", "exp_avg", "exp_avg_sq"];
                if group.bool("amsgrad")? {
                    k.push("max_exp_avg_sq");
                }
                k
            }
            Algorithm::RmsProp => {
                let mut k = vec!["step", "square_avg"];
                if group.f64("momentum")? > 0.0 {
                    k.push("momentum_buffer");
                }
                if group.bool("centered")? {
                    k.push("grad_avg");
                }
                k
            }
            Algorithm::Adagrad => vec!["step", "sum"],
        })
    }
}

/// Checks one hyperparameter value; the reason names what is wrong.
fn check_value(hp: &Hp, v: &Value) -> std::result::Result<(), String> {
    let in_range = |x: f64, min: f64, max: Option<f64>| {
        if x.is_nan() || x < min || max.is_some_and(|m| x >= m) {
            let upper = max.map_or(String::new(), |m| format!(" and below {m}"));
            Err(format!("must be at least {min}{upper}, got {x}"))
        } else {
            Ok(())
        }
    };
    match (hp.ty, v) {
        (Ty::Float { min, max }, Value::Number(n)) => in_range(n.as_f64().unwrap_or(f64::NAN), min, max),
        (Ty::Float { .. }, _) => Err(format!("must be a number, got {v}")),
        (Ty::Bool, Value::Bool(_)) | (Ty::OptBool, Value::Bool(_) | Value::Null) => Ok(()),
        (Ty::Bool, _) => Err(format!("must be a boolean, got {v}")),
        (Ty::OptBool, _) => Err(format!("must be a boolean or null, got {v}")),
        (Ty::Betas, Value::Array(a)) if a.len() == 2 => {
            for (i, b) in a.iter().enumerate() {
                let x = b
                    .as_f64()
                    .ok_or_else(|| format!("betas[{i}] must be a number, got {b}"))?;
                in_range(x, 0.0, Some(1.0)).map_err(|e| format!("betas[{i}] {e}"))?;
            }
            Ok(())
        }
        (Ty::Betas, _) => Err(format!("must be a list of two numbers, got {v}")),
    }
}

/// The hyperparameters of a group: `given` overrides `base` (the
/// defaults, or the optimizer-wide values for a group of `param_groups`).
/// Every key is checked; a kwarg nobody asked for is an error.
fn parse_options(alg: Algorithm, kw: &Kwargs<'_>, base: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut options = Map::new();
    for hp in hyperparameters(alg) {
        let value = if alg.fixed(hp.key) {
            alg.default(hp)
        } else {
            match kw.take(hp.key) {
                Some(v) => v.clone(),
                None => base.get(hp.key).cloned().unwrap_or_else(|| alg.default(hp)),
            }
        };
        check_value(hp, &value).map_err(|reason| kw.error(format!("kwarg {:?} {reason}", hp.key)))?;
        options.insert(hp.key.into(), value);
    }
    check_group(alg, &ParamGroup::new(Vec::new(), options.clone())).map_err(|e| kw.error(e.to_string()))?;
    Ok(options)
}

/// Checks across keys, as PyTorch's constructors do.
fn check_group(alg: Algorithm, group: &ParamGroup) -> Result<()> {
    if alg == Algorithm::Sgd
        && group.bool("nesterov")?
        && (group.f64("momentum")? <= 0.0 || group.f64("dampening")? != 0.0)
    {
        return Err(Error::Usage(
            "Nesterov momentum requires a momentum and zero dampening".into(),
        ));
    }
    Ok(())
}

/// A group's hyperparameters from a file or `load_state_dict`: every key
/// this algorithm uses must be present and valid; other keys (a
/// scheduler's `initial_lr`, ...) are kept as they are.
fn check_loaded_group(alg: Algorithm, group: &ParamGroup, index: usize) -> Result<()> {
    for hp in hyperparameters(alg) {
        let v = group.get(hp.key).ok_or_else(|| Error::InvalidState {
            what: format!("param_groups[{index}].{}", hp.key),
            reason: "missing".into(),
        })?;
        check_value(hp, v).map_err(|reason| Error::InvalidState {
            what: format!("param_groups[{index}].{}", hp.key),
            reason,
        })?;
    }
    check_group(alg, group).map_err(|e| Error::InvalidState {
        what: format!("param_groups[{index}]"),
        reason: e.to_string(),
    })
}

/// The per-parameter state: PyTorch's `optimizer.state[p]`.
pub type ParamState = BTreeMap<String, Tensor>;

/// An optimizer's complete state in PyTorch's `state_dict()` layout, plus
/// the name of each parameter: what a checkpoint stores.
#[derive(Debug)]
pub struct OptimizerState {
    /// PyTorch's `param_groups`, `params` holding parameter indices.
    pub param_groups: Vec<ParamGroup>,
    /// The model state-dict name of each parameter index.
    pub param_names: Vec<String>,
    /// Per-parameter state by parameter index.
    pub state: BTreeMap<usize, ParamState>,
}

/// A checked state, ready to replace an optimizer's.
#[derive(Debug)]
pub(crate) struct PreparedState {
    pub(crate) groups: Vec<ParamGroup>,
    state: BTreeMap<usize, ParamState>,
}

/// A parameter the optimizer updates: a tensor sharing storage with the
/// model's, and its state-dict name.
#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
}

/// An optimizer built by name and kwargs, with PyTorch's semantics:
/// `step` updates every parameter that has a gradient, `zero_grad` sets
/// gradients to None, and the state is PyTorch's.
///
/// Kwargs are PyTorch's (`lr`, `betas`, `momentum`, ...) with its
/// defaults. One more kwarg, `param_groups`, builds several groups: a list
/// of objects, each `{"params": [parameter names], <hyperparameter
/// overrides>}`, naming every parameter exactly once.
///
/// `foreach`, `fused`, `capturable` and `differentiable` are accepted and
/// kept (so that PyTorch gets them back) but the step always runs the
/// single-tensor algorithm; they change speed, not the update.
#[derive(Debug)]
pub struct Optimizer {
    algorithm: Algorithm,
    kwargs: Map<String, Value>,
    params: Vec<Param>,
    groups: Vec<ParamGroup>,
    state: BTreeMap<usize, ParamState>,
}

impl Optimizer {
    /// Builds the optimizer named `class` over `params` (name, tensor) in
    /// order: the parameter indices of the state dict follow this order,
    /// which must be `model.parameters()`'s for PyTorch to agree.
    pub fn new(class: &str, kwargs: &Map<String, Value>, params: Vec<(String, Tensor)>) -> Result<Self> {
        let algorithm = Algorithm::from_name(class)?;
        let kw = Kwargs::new(class, kwargs, false);
        let base = parse_options(algorithm, &kw, &Map::new())?;
        let index: HashMap<&str, usize> = params.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
        if index.len() != params.len() {
            return Err(kw.error("two parameters have the same name"));
        }
        let groups = match kw.take("param_groups") {
            None => vec![ParamGroup::new((0..params.len()).collect(), base)],
            Some(spec) => build_groups(algorithm, class, spec, &base, &index, &kw)?,
        };
        kw.finish()?;
        let mut opt = Optimizer {
            algorithm,
            kwargs: kwargs.clone(),
            params: params
                .into_iter()
                .map(|(name, tensor)| Param { name, tensor })
                .collect(),
            groups,
            state: BTreeMap::new(),
        };
        if algorithm == Algorithm::Adagrad {
            opt.init_adagrad()?;
        }
        Ok(opt)
    }

    /// Adagrad creates its state in the constructor, for every parameter.
    fn init_adagrad(&mut self) -> Result<()> {
        for group in &self.groups {
            let init = group.f64("initial_accumulator_value")?;
            for &i in &group.params {
                let p = &self.params[i].tensor;
                let mut s = ParamState::new();
                s.insert("step".into(), step_tensor(0.0)?);
                s.insert("sum".into(), p.f_full_like(init)?);
                self.state.insert(i, s);
            }
        }
        Ok(())
    }

    /// The class name (`torch.optim.Adam`).
    pub fn class(&self) -> &'static str {
        self.algorithm.name()
    }

    /// The constructor kwargs.
    pub fn kwargs(&self) -> &Map<String, Value> {
        &self.kwargs
    }

    pub fn param_groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The groups, for a scheduler (or the caller) to change their
    /// hyperparameters. Groups must keep their parameters: `step` and
    /// `state_dict` refuse groups whose `params` no longer hold every
    /// parameter exactly once.
    pub fn param_groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }

    /// The parameters' names, by index.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The state of parameter `index`, if it has any.
    pub fn state(&self, index: usize) -> Option<&ParamState> {
        self.state.get(&index)
    }

    /// Each group's learning rate.
    pub fn lrs(&self) -> Result<Vec<f64>> {
        self.groups.iter().map(ParamGroup::lr).collect()
    }

    /// PyTorch's `zero_grad()` (set_to_none=True): every parameter's
    /// gradient becomes undefined, so a parameter that gets no gradient
    /// in the next backward pass is skipped by the next step, as in PyTorch.
    pub fn zero_grad(&mut self) -> Result<()> {
        for p in &mut self.params {
            kernels::clear_grad(&mut p.tensor)?;
        }
        Ok(())
    }

    /// Checks that the groups still hold every parameter exactly once.
    fn check_groups(&self) -> Result<()> {
        let mut seen = vec![false; self.params.len()];
        for (g, group) in self.groups.iter().enumerate() {
            for &i in &group.params {
                if i >= seen.len() || std::mem::replace(&mut seen[i], true) {
                    return Err(Error::Usage(format!(
                        "param_groups[{g}] holds parameter index {i}, which is out of range or in another group"
                    )));
                }
            }
        }
        match seen.iter().position(|s| !s) {
            Some(i) => Err(Error::Usage(format!(
                "parameter {:?} is in no param group",
                self.params[i].name
            ))),
            None => Ok(()),
        }
    }

    /// One optimization step over every parameter that has a gradient.
    pub fn step(&mut self) -> Result<()> {
        self.check_groups()?;
        let _guard = tch::no_grad_guard();
        for g in 0..self.groups.len() {
            let group = &self.groups[g];
            let mut with_grad = Vec::new();
            for &i in &group.params {
                let grad = self.params[i].tensor.f_grad()?;
                if grad.defined() {
                    with_grad.push((i, grad));
                }
            }
            let hyper = Hyper::read(self.algorithm, group)?;
            for (i, grad) in with_grad {
                let mut param = self.params[i].tensor.shallow_clone();
                let state = self.state.entry(i).or_default();
                let name = &self.params[i].name;
                let result = match &hyper {
                    Hyper::Sgd(h) => sgd(h, &mut param, grad, state),
                    Hyper::Adam(h) => adam(h, &mut param, grad, state),
                    Hyper::RmsProp(h) => rmsprop(h, &mut param, grad, state),
                    Hyper::Adagrad(h) => adagrad(h, &mut param, grad, state),
                };
                result.map_err(|e| match e {
                    Error::Torch(m) => Error::Torch(format!("{} step on {name:?}: {m}", self.algorithm.name())),
                    e => e,
                })?;
                if state.is_empty() {
                    self.state.remove(&i);
                }
            }
        }
        Ok(())
    }

    /// The state in PyTorch's layout (tensors are shallow clones). As in
    /// PyTorch, parameter indices count through the groups in order, so
    /// with several groups they can differ from the constructor's order.
    pub fn state_dict(&self) -> Result<OptimizerState> {
        self.check_groups()?;
        let mut packed = HashMap::new();
        let mut param_names = Vec::with_capacity(self.params.len());
        for &i in self.groups.iter().flat_map(|g| &g.params) {
            packed.insert(i, param_names.len());
            param_names.push(self.params[i].name.clone());
        }
        Ok(OptimizerState {
            param_groups: self
                .groups
                .iter()
                .map(|g| ParamGroup::new(g.params.iter().map(|i| packed[i]).collect(), g.options.clone()))
                .collect(),
            param_names,
            state: self
                .state
                .iter()
                .map(|(i, s)| {
                    (
                        packed[i],
                        s.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect(),
                    )
                })
                .collect(),
        })
    }

    /// Loads a state, matching parameters by name (PyTorch matches by
    /// position, which silently mixes state up when parameters are
    /// reordered). The groups must correspond one to one, each holding the
    /// same parameters; every state tensor must have its parameter's shape
    /// (a `step`, one element). Floating state is cast to the parameter's
    /// dtype and device, as PyTorch does. Everything is checked before
    /// anything changes: on error the optimizer is untouched.
    pub fn load_state_dict(&mut self, saved: OptimizerState) -> Result<()> {
        let prepared = self.prepare_load(saved)?;
        self.commit_load(prepared);
        Ok(())
    }

    /// The checks and conversions of [`load_state_dict`](Self::load_state_dict),
    /// without changing anything: a container prepares every part of a
    /// checkpoint before it commits any.
    pub(crate) fn prepare_load(&self, saved: OptimizerState) -> Result<PreparedState> {
        let alg = self.algorithm;
        if saved.param_groups.len() != self.groups.len() {
            return Err(Error::InvalidState {
                what: "param_groups".into(),
                reason: format!(
                    "the state has {} groups, the optimizer {}",
                    saved.param_groups.len(),
                    self.groups.len()
                ),
            });
        }
        let by_name: HashMap<&str, usize> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        // saved index -> our index, group by group.
        let mut map: HashMap<usize, usize> = HashMap::new();
        let mut groups = Vec::with_capacity(self.groups.len());
        for (g, (saved_group, ours)) in saved.param_groups.iter().zip(&self.groups).enumerate() {
            if saved_group.params.len() != ours.params.len() {
                return Err(Error::InvalidState {
                    what: format!("param_groups[{g}]"),
                    reason: format!(
                        "holds {} parameters, the optimizer's group {}",
                        saved_group.params.len(),
                        ours.params.len()
                    ),
                });
            }
            for &s in &saved_group.params {
                let name = saved.param_names.get(s).ok_or_else(|| Error::InvalidState {
                    what: "param_names".into(),
                    reason: format!("no name for parameter index {s}"),
                })?;
                let &j = by_name.get(name.as_str()).ok_or_else(|| Error::StateMismatch {
                    tensor: name.clone(),
                    reason: "the optimizer state names a parameter the model does not have".into(),
                })?;
                if !ours.params.contains(&j) {
                    return Err(Error::StateMismatch {
                        tensor: name.clone(),
                        reason: format!("saved in param_groups[{g}], but the optimizer has it in another group"),
                    });
                }
                if map.insert(s, j).is_some() {
                    return Err(Error::InvalidState {
                        what: "param_groups".into(),
                        reason: format!("parameter index {s} appears twice"),
                    });
                }
            }
            // PyTorch keeps the saved hyperparameters and the current params;
            // keys the saved group lacks keep their current values.
            let mut options = saved_group.options.clone();
            for (k, v) in &ours.options {
                options.entry(k.clone()).or_insert_with(|| v.clone());
            }
            let group = ParamGroup::new(ours.params.clone(), options);
            check_loaded_group(alg, &group, g)?;
            groups.push(group);
        }
        let group_of: HashMap<usize, &ParamGroup> = groups
            .iter()
            .flat_map(|g| g.params.iter().map(move |&i| (i, g)))
            .collect();
        let mut state = BTreeMap::new();
        for (s, saved_state) in saved.state {
            let &j = map.get(&s).ok_or_else(|| Error::InvalidState {
                what: format!("state.{s}"),
                reason: "state for a parameter index that no group holds".into(),
            })?;
            let param = &self.params[j];
            let mut converted = ParamState::new();
            if !saved_state.is_empty() {
                for key in alg.required_state(group_of[&j])? {
                    if !saved_state.contains_key(key) {
                        return Err(Error::StateMismatch {
                            tensor: param.name.clone(),
                            reason: format!("{} state lacks {key:?}", alg.name()),
                        });
                    }
                }
            }
            for (key, t) in saved_state {
                converted.insert(key.clone(), convert_state(alg, &param.name, &param.tensor, &key, t)?);
            }
            state.insert(j, converted);
        }
        Ok(PreparedState { groups, state })
    }

    pub(crate) fn commit_load(&mut self, prepared: PreparedState) {
        self.groups = prepared.groups;
        self.state = prepared.state;
    }
}

/// Builds the groups of the `param_groups` kwarg.
fn build_groups(
    alg: Algorithm,
    class: &str,
    spec: &Value,
    base: &Map<String, Value>,
    index: &HashMap<&str, usize>,
    kw: &Kwargs<'_>,
) -> Result<Vec<ParamGroup>> {
    let list = spec
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| kw.error("kwarg \"param_groups\" must be a non-empty list of objects"))?;
    let mut seen = vec![false; index.len()];
    let mut groups = Vec::new();
    for (g, item) in list.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| kw.error(format!("param_groups[{g}] must be an object")))?;
        let mut overrides = obj.clone();
        let names = overrides
            .remove("params")
            .ok_or_else(|| kw.error(format!("param_groups[{g}] lacks \"params\"")))?;
        let names = names
            .as_array()
            .ok_or_else(|| kw.error(format!("param_groups[{g}].params must be a list of parameter names")))?;
        let mut params = Vec::new();
        for n in names {
            let n = n
                .as_str()
                .ok_or_else(|| kw.error(format!("param_groups[{g}].params: {n} is not a parameter name")))?;
            let &i = index
                .get(n)
                .ok_or_else(|| kw.error(format!("param_groups[{g}] names {n:?}, which is not a parameter")))?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(kw.error(format!("parameter {n:?} is in more than one group")));
            }
            params.push(i);
        }
        let label = format!("{class} param_groups[{g}]");
        let group_kw = Kwargs::new(&label, &overrides, false);
        let options = parse_options(alg, &group_kw, base)?;
        group_kw.finish()?;
        groups.push(ParamGroup::new(params, options));
    }
    if let Some(missing) = index.iter().find(|(_, &i)| !seen[i]).map(|(n, _)| *n) {
        return Err(kw.error(format!("parameter {missing:?} is in no group of param_groups")));
    }
    Ok(groups)
}

/// A saved state tensor, checked against its parameter and converted as
/// PyTorch's `load_state_dict` does.
fn convert_state(alg: Algorithm, name: &str, param: &Tensor, key: &str, t: Tensor) -> Result<Tensor> {
    let mismatch = |reason: String| Error::StateMismatch {
        tensor: name.to_owned(),
        reason,
    };
    if !alg.state_keys().contains(&key) {
        return Err(mismatch(format!("{} has no state {key:?}", alg.name())));
    }
    if key == "step" {
        if t.numel() != 1 {
            return Err(mismatch(format!(
                "state \"step\" must have one element, has shape {:?}",
                t.size()
            )));
        }
        return Ok(t
            .f_reshape(&[] as &[i64])?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?);
    }
    if t.size() != param.size() {
        return Err(mismatch(format!(
            "optimizer state {key:?} has shape {:?}, the parameter {:?}",
            t.size(),
            param.size()
        )));
    }
    let kind = if param.is_floating_point() {
        param.f_kind()?
    } else {
        t.f_kind()?
    };
    Ok(t.f_to_device(param.device())?.f_to_kind(kind)?.f_contiguous()?)
}

/// A `step` counter: a rank-0 float32 CPU tensor, as PyTorch keeps it.
fn step_tensor(value: f64) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(&[value as f32])?.f_reshape(&[] as &[i64])?)
}

fn clone(t: &Tensor) -> Result<Tensor> {
    let mut out = t.f_empty_like()?;
    out.f_copy_(t)?;
    Ok(out)
}

/// The state tensor `key`, created with `init` if absent.
fn state_or<'s>(state: &'s mut ParamState, key: &str, init: impl FnOnce() -> Result<Tensor>) -> Result<&'s mut Tensor> {
    if !state.contains_key(key) {
        state.insert(key.to_owned(), init()?);
    }
    Ok(state.get_mut(key).expect("inserted above"))
}

/// `step_t += 1`, then its value as Python's `step_t.item()` gives it.
fn increment_step(state: &mut ParamState) -> Result<f64> {
    let step = state_or(state, "step", || step_tensor(0.0))?;
    let _ = step.f_add_scalar_(1)?;
    Ok(step.f_double_value(&[])?)
}

/// A group's hyperparameters, read once per group and step.
enum Hyper {
    Sgd(SgdHp),
    Adam(AdamHp),
    RmsProp(RmsPropHp),
    Adagrad(AdagradHp),
}

#[derive(Clone, Copy)]
struct SgdHp {
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    maximize: bool,
}

#[derive(Clone, Copy)]
struct AdamHp {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
    decoupled: bool,
    maximize: bool,
}

#[derive(Clone, Copy)]
struct RmsPropHp {
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
    maximize: bool,
}

#[derive(Clone, Copy)]
struct AdagradHp {
    lr: f64,
    lr_decay: f64,
    eps: f64,
    weight_decay: f64,
    initial_accumulator_value: f64,
    maximize: bool,
}

impl Hyper {
    fn read(alg: Algorithm, g: &ParamGroup) -> Result<Self> {
        Ok(match alg {
            Algorithm::Sgd => Hyper::Sgd(SgdHp {
                lr: g.lr()?,
                momentum: g.f64("momentum")?,
                dampening: g.f64("dampening")?,
                weight_decay: g.f64("weight_decay")?,
                nesterov: g.bool("nesterov")?,
                maximize: g.bool("maximize")?,
            }),
            Algorithm::Adam | Algorithm::AdamW => Hyper::Adam(AdamHp {
                lr: g.lr()?,
                betas: g.f64_pair("betas")?,
                eps: g.f64("eps")?,
                weight_decay: g.f64("weight_decay")?,
                amsgrad: g.bool("amsgrad")?,
                decoupled: g.bool("decoupled_weight_decay")?,
                maximize: g.bool("maximize")?,
            }),
            Algorithm::RmsProp => Hyper::RmsProp(RmsPropHp {
                lr: g.lr()?,
                alpha: g.f64("alpha")?,
                eps: g.f64("eps")?,
                weight_decay: g.f64("weight_decay")?,
                momentum: g.f64("momentum")?,
                centered: g.bool("centered")?,
                maximize: g.bool("maximize")?,
            }),
            Algorithm::Adagrad => Hyper::Adagrad(AdagradHp {
                lr: g.lr()?,
                lr_decay: g.f64("lr_decay")?,
                eps: g.f64("eps")?,
                weight_decay: g.f64("weight_decay")?,
                initial_accumulator_value: g.f64("initial_accumulator_value")?,
                maximize: g.bool("maximize")?,
            }),
        })
    }
}

/// torch/optim/sgd.py `_single_tensor_sgd`, for one parameter.
fn sgd(h: &SgdHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let SgdHp {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
    } = *h;
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    if weight_decay != 0.0 {
        grad = kernels::add(&grad, param, weight_decay)?;
    }
    if momentum != 0.0 {
        let buf = match state.get_mut("momentum_buffer") {
            None => {
                let buf = clone(&grad.f_detach()?)?;
                state.insert("momentum_buffer".into(), buf);
                state.get_mut("momentum_buffer").expect("inserted above")
            }
            Some(buf) => {
                let _ = buf.f_mul_scalar_(momentum)?;
                kernels::add_(buf, &grad, 1.0 - dampening)?;
                buf
            }
        };
        grad = if nesterov {
            kernels::add(&grad, buf, momentum)?
        } else {
            buf.shallow_clone()
        };
    }
    kernels::add_(param, &grad, -lr)
}

/// torch/optim/adam.py `_single_tensor_adam` (capturable=False), for one
/// parameter; AdamW is Adam with decoupled_weight_decay.
fn adam(h: &AdamHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let AdamHp {
        lr,
        betas: (beta1, beta2),
        eps,
        weight_decay,
        amsgrad,
        decoupled,
        maximize,
    } = *h;
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("exp_avg".into(), param.f_zeros_like()?);
        state.insert("exp_avg_sq".into(), param.f_zeros_like()?);
        if amsgrad {
            state.insert("max_exp_avg_sq".into(), param.f_zeros_like()?);
        }
    }
    let step = increment_step(state)?;
    if weight_decay != 0.0 {
        if decoupled {
            let _ = param.f_mul_scalar_(1.0 - lr * weight_decay)?;
        } else {
            grad = kernels::add(&grad, param, weight_decay)?;
        }
    }
    let exp_avg = state_or(state, "exp_avg", || param.f_zeros_like().map_err(Into::into))?;
    let _ = exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
    let exp_avg_sq = state_or(state, "exp_avg_sq", || param.f_zeros_like().map_err(Into::into))?;
    let _ = exp_avg_sq.f_mul_scalar_(beta2)?;
    kernels::addcmul_(exp_avg_sq, &grad, &grad, 1.0 - beta2)?;
    let exp_avg_sq = exp_avg_sq.shallow_clone();

    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.powf(0.5);
    let mut denom = if amsgrad {
        let max = state_or(state, "max_exp_avg_sq", || param.f_zeros_like().map_err(Into::into))?;
        let _ = max.f_maximum_out(max, &exp_avg_sq)?;
        max.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?
    } else {
        exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?
    };
    let _ = denom.f_add_scalar_(eps)?;
    kernels::addcdiv_(param, &state["exp_avg"], &denom, -step_size)
}

/// torch/optim/rmsprop.py `_single_tensor_rmsprop`, for one parameter.
fn rmsprop(h: &RmsPropHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let RmsPropHp {
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        centered,
        maximize,
    } = *h;
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("square_avg".into(), param.f_zeros_like()?);
        if momentum > 0.0 {
            state.insert("momentum_buffer".into(), param.f_zeros_like()?);
        }
        if centered {
            state.insert("grad_avg".into(), param.f_zeros_like()?);
        }
    }
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    increment_step(state)?;
    if weight_decay != 0.0 {
        grad = kernels::add(&grad, param, weight_decay)?;
    }
    let square_avg = state_or(state, "square_avg", || param.f_zeros_like().map_err(Into::into))?;
    let _ = square_avg.f_mul_scalar_(alpha)?;
    kernels::addcmul_(square_avg, &grad, &grad, 1.0 - alpha)?;
    let square_avg = square_avg.shallow_clone();
    let mut avg = if centered {
        let grad_avg = state_or(state, "grad_avg", || param.f_zeros_like().map_err(Into::into))?;
        let _ = grad_avg.f_lerp_(&grad, 1.0 - alpha)?;
        let mut avg = kernels::addcmul(&square_avg, grad_avg, grad_avg, -1.0)?;
        let _ = avg.f_sqrt_()?;
        avg
    } else {
        square_avg.f_sqrt()?
    };
    let _ = avg.f_add_scalar_(eps)?;
    if momentum > 0.0 {
        let buf = state_or(state, "momentum_buffer", || param.f_zeros_like().map_err(Into::into))?;
        let _ = buf.f_mul_scalar_(momentum)?;
        kernels::addcdiv_(buf, &grad, &avg, 1.0)?;
        kernels::add_(param, buf, -lr)
    } else {
        kernels::addcdiv_(param, &grad, &avg, -lr)
    }
}

/// torch/optim/adagrad.py `_single_tensor_adagrad` (dense), for one parameter.
fn adagrad(h: &AdagradHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let AdagradHp {
        lr,
        lr_decay,
        eps,
        weight_decay,
        initial_accumulator_value: init,
        maximize,
    } = *h;
    let step = increment_step(state)?;
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    if weight_decay != 0.0 {
        grad = kernels::add(&grad, param, weight_decay)?;
    }
    let clr = lr / (1.0 + (step - 1.0) * lr_decay);
    let sum = state_or(state, "sum", || param.f_full_like(init).map_err(Into::into))?;
    kernels::addcmul_(sum, &grad, &grad, 1.0)?;
    let mut std = sum.f_sqrt()?;
    let _ = std.f_add_scalar_(eps)?;
    kernels::addcdiv_(param, &grad, &std, -clr)
}
