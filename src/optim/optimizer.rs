//! The optimizer object: torch.optim's optimizers (`algorithm.rs` lists
//! them) behind one type, step by step the single-tensor ("for-loop")
//! code path of PyTorch 2.13, same ATen ops with the same scalars, so the
//! results are bit-identical to PyTorch's on the same libtorch, and the
//! state is PyTorch's `state_dict()` layout. Construction, the step loop
//! over groups, the group checks, `state_dict` and `load_state_dict`
//! live here; each algorithm's math is in its own file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};
use tch::Tensor;

use super::algorithm::Algorithm;
use super::lbfgs::{self, LbfgsHp, LbfgsState};
use super::options::build_groups;
use super::state::{OptimizerState, ParamState, PreparedState};
use super::{adagrad, kernels, Class, ParamGroup, UserClass};
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
    algorithm: Class,
    kwargs: Map<String, Value>,
    params: Vec<Param>,
    groups: Vec<ParamGroup>,
    state: BTreeMap<usize, ParamState>,
    /// LBFGS's global state (PyTorch keeps it under the first parameter).
    lbfgs: LbfgsState,
}

impl Optimizer {
    /// Builds the optimizer named `class` over `params` (name, tensor) in
    /// order: the parameter indices of the state dict follow this order,
    /// which must be `model.parameters()`'s for PyTorch to agree.
    /// Built-in classes only: a registered class is built through
    /// [`Registry::build_optimizer`](crate::Registry::build_optimizer).
    pub fn new(class: &str, kwargs: &Map<String, Value>, params: Vec<(String, Tensor)>) -> Result<Self> {
        Self::build(class, &BTreeMap::new(), kwargs, params)
    }

    /// [`new`](Self::new) for a built-in class or one of `registered`.
    pub(crate) fn build(
        class: &str,
        registered: &BTreeMap<String, Arc<UserClass>>,
        kwargs: &Map<String, Value>,
        params: Vec<(String, Tensor)>,
    ) -> Result<Self> {
        let algorithm = Class::resolve(class, registered)?;
        // LBFGS's max_eval defaults to max_iter * 5 // 4.
        let completed = (algorithm == Algorithm::Lbfgs).then(|| lbfgs::complete_kwargs(kwargs));
        let kw = Kwargs::new(class, completed.as_ref().unwrap_or(kwargs), false);
        let base = algorithm.parse_options(&kw, &Map::new())?;
        let index: HashMap<&str, usize> = params.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
        if index.len() != params.len() {
            return Err(kw.error("two parameters have the same name"));
        }
        let groups = match kw.take("param_groups") {
            None => vec![ParamGroup::new((0..params.len()).collect(), base)],
            Some(spec) => build_groups(&algorithm, class, spec, &base, &index, &kw)?,
        };
        kw.finish()?;
        if algorithm == Algorithm::Lbfgs {
            lbfgs::check_group_count(groups.len()).map_err(|reason| kw.error(reason))?;
        }
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
            lbfgs: LbfgsState::default(),
        };
        if opt.algorithm == Algorithm::Adagrad {
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
    pub fn class(&self) -> &str {
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
    /// LBFGS needs [`step_with_closure`](Self::step_with_closure).
    pub fn step(&mut self) -> Result<()> {
        if self.algorithm == Algorithm::Lbfgs {
            return Err(lbfgs::needs_closure());
        }
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
            let hyper = self.algorithm.stepper(group)?;
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

    /// PyTorch's `step(closure)`: `closure` zeroes the gradients, computes
    /// the loss, runs backward and returns the loss; it runs with grad mode
    /// enabled. LBFGS calls it as often as its iterations and line search
    /// need; any other optimizer calls it once, then steps. Returns the
    /// loss of the first call (PyTorch's `orig_loss`). An error of the
    /// closure ends the step and is returned as it is.
    pub fn step_with_closure(&mut self, closure: &mut dyn FnMut() -> Result<f64>) -> Result<f64> {
        if self.algorithm != Algorithm::Lbfgs {
            let loss = tch::with_grad(&mut *closure)?;
            self.step()?;
            return Ok(loss);
        }
        self.check_groups()?;
        lbfgs::check_group_count(self.groups.len()).map_err(Error::Usage)?;
        let group = &self.groups[0];
        let hp = LbfgsHp::read(group)?;
        let params: Vec<Tensor> = group
            .params
            .iter()
            .map(|&i| self.params[i].tensor.shallow_clone())
            .collect();
        if params.is_empty() {
            return Err(Error::Usage("LBFGS has no parameters to optimize".into()));
        }
        let _guard = tch::no_grad_guard();
        self.lbfgs.step(&hp, &params, closure)
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
        let lbfgs_state = self.lbfgs_layout()?;
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
                .chain(lbfgs_state.1)
                .collect(),
            values: lbfgs_state.0.into_iter().collect(),
        })
    }

    /// LBFGS's state in the file layout under index 0 (the first
    /// parameter's), as (values, tensors); empty for other optimizers.
    #[allow(clippy::type_complexity)]
    fn lbfgs_layout(&self) -> Result<(Option<(usize, Map<String, Value>)>, Option<(usize, ParamState)>)> {
        let first = self.groups.first().and_then(|g| g.params.first());
        match first {
            Some(&i) if !self.lbfgs.is_empty() => {
                let (values, tensors) = self.lbfgs.to_layout(&self.params[i].tensor)?;
                Ok((Some((0, values)), Some((0, tensors.into_iter().collect()))))
            }
            _ => Ok((None, None)),
        }
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
        let alg = &self.algorithm;
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
            alg.check_loaded_group(&group, g)?;
            groups.push(group);
        }
        if *alg == Algorithm::Lbfgs {
            let lbfgs = self.prepare_lbfgs(saved, &map, &groups)?;
            return Ok(PreparedState {
                groups,
                state: BTreeMap::new(),
                lbfgs: Some(lbfgs),
            });
        }
        if let Some((s, key)) = saved.values.iter().find_map(|(s, v)| v.keys().next().map(|k| (s, k))) {
            return Err(Error::InvalidState {
                what: format!("state.{s}.{key}"),
                reason: format!("{} has no non-tensor state values", alg.name()),
            });
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
                converted.insert(key.clone(), alg.convert_state(&param.name, &param.tensor, &key, t)?);
            }
            state.insert(j, converted);
        }
        Ok(PreparedState {
            groups,
            state,
            lbfgs: None,
        })
    }

    /// LBFGS's saved state, checked: the parameters in the saved order
    /// (its vectors are flat over them), state only under the first one.
    fn prepare_lbfgs(
        &self,
        saved: OptimizerState,
        map: &HashMap<usize, usize>,
        groups: &[ParamGroup],
    ) -> Result<LbfgsState> {
        let group = &groups[0];
        for (k, s) in saved.param_groups[0].params.iter().enumerate() {
            if map.get(s) != group.params.get(k) {
                return Err(Error::StateMismatch {
                    tensor: saved.param_names.get(*s).cloned().unwrap_or_default(),
                    reason: "LBFGS's state is flat over the parameters in order, and the file has them \
                             in another order"
                        .into(),
                });
            }
        }
        let mut indices: Vec<usize> = saved.state.keys().chain(saved.values.keys()).copied().collect();
        indices.sort_unstable();
        indices.dedup();
        let first = saved.param_groups[0].params.first().copied();
        if let Some(&s) = indices.iter().find(|&&s| Some(s) != first) {
            return Err(Error::InvalidState {
                what: format!("state.{s}"),
                reason: "LBFGS keeps its state under the first parameter only".into(),
            });
        }
        let (values, tensors) = match first {
            Some(s) => (
                saved.values.get(&s).cloned().unwrap_or_default(),
                saved
                    .state
                    .get(&s)
                    .map(|t| t.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect()),
            ),
            None => (Map::new(), None),
        };
        let tensors: ParamState = tensors.unwrap_or_default();
        let like = &self.params[group.params[0]].tensor;
        let numel = group.params.iter().map(|&i| self.params[i].tensor.numel() as i64).sum();
        let history_size = group.get("history_size").and_then(Value::as_i64).unwrap_or(0);
        LbfgsState::from_layout(&values, &tensors, like, numel, history_size)
    }

    pub(crate) fn commit_load(&mut self, prepared: PreparedState) {
        self.groups = prepared.groups;
        self.state = prepared.state;
        if let Some(lbfgs) = prepared.lbfgs {
            self.lbfgs = lbfgs;
        }
    }
}
