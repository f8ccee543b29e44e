//! The optimizer object: torch.optim's optimizers (`algorithm.rs` lists
//! them) behind one type, step by step the single-tensor ("for-loop")
//! code path of PyTorch 2.13, same ATen ops with the same scalars, so the
//! results are bit-identical to PyTorch's on the same libtorch, and the
//! state is PyTorch's `state_dict()` layout. Construction, the step loop
//! over groups, the group checks, `state_dict` and `load_state_dict`
//! live here; each algorithm's math is in its own file.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use tch::Tensor;

use super::algorithm::{Algorithm, Hyper};
use super::options::{build_groups, check_loaded_group, parse_options};
use super::state::{convert_state, OptimizerState, ParamState, PreparedState};
use super::{adagrad, kernels, ParamGroup};
use crate::error::{Error, Result};
use crate::kwargs::Kwargs;

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
        for (name, tensor) in &params {
            algorithm.check_param(name, tensor).map_err(|reason| kw.error(reason))?;
        }
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
                self.state
                    .insert(i, adagrad::initial_state(init, &self.params[i].tensor)?);
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
                hyper.step(&mut param, grad, state).map_err(|e| match e {
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
                for key in alg.required_state(group_of[&j], &param.tensor.size())? {
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
