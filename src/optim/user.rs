//! Optimizer classes a user registers (`Registry::register_optimizer`):
//! the public [`OptimizerClass`] trait with its declared hyperparameters
//! and state layout, the checked [`UserClass`] the registry keeps, and
//! [`Class`], the built-in algorithm or the user's, behind which
//! `Optimizer` parses kwargs, checks loaded groups and state, and steps.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde_json::{Map, Value};
use tch::{Device, Tensor};

use super::algorithm::{Algorithm, Hyper};
use super::options::{check_loaded_group, parse_options};
use super::state::{convert_state, ParamState};
use super::ParamGroup;
use crate::error::{panic_message, torch_message, Error, Result};
use crate::format::metadata::decode_float;
use crate::kwargs::Kwargs;

/// The prefix of the built-in optimizers' names, which no user class may take.
pub const BUILTIN_PREFIX: &str = "torch.optim.";

/// The shape of one per-parameter state tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateShape {
    /// The parameter's shape (a momentum buffer).
    LikeParam,
    /// Rank 0, one element (a step counter).
    Rank0,
}

/// One per-parameter state key of a user optimizer class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKey {
    /// The key (`momentum_buffer`), as in PyTorch's `optimizer.state[p]`.
    pub name: String,
    pub shape: StateShape,
    /// Whether a parameter's non-empty state must hold it.
    pub required: bool,
}

impl StateKey {
    /// A required key with the parameter's shape.
    pub fn like_param(name: &str) -> Self {
        StateKey {
            name: name.to_owned(),
            shape: StateShape::LikeParam,
            required: true,
        }
    }

    /// A required rank-0 key.
    pub fn rank0(name: &str) -> Self {
        StateKey {
            name: name.to_owned(),
            shape: StateShape::Rank0,
            required: true,
        }
    }

    /// The same key, optional.
    pub fn optional(self) -> Self {
        StateKey {
            required: false,
            ..self
        }
    }
}

/// An optimizer class of the user's, registered by name with
/// [`Registry::register_optimizer`](crate::Registry::register_optimizer):
/// the library parses its kwargs (unknown kwargs are errors, the
/// `param_groups` kwarg builds several groups), runs its step under
/// `no_grad` on every parameter that has a gradient, lets schedulers
/// change its `lr`, and saves, checks and loads its state in PyTorch's
/// layout, as for a built-in optimizer.
pub trait OptimizerClass: Send + Sync + 'static {
    /// The param_group keys with their defaults, in PyTorch's order: the
    /// class's kwargs. `lr` is required (schedulers change it) and its
    /// default must be a number. A value given for a key must have its
    /// default's JSON type (a number, a boolean, a string, a list or an
    /// object; a null default accepts anything).
    fn hyperparameters(&self) -> Vec<(String, Value)>;

    /// The per-parameter state keys the step may create.
    fn state_layout(&self) -> Vec<StateKey>;

    /// Checks a group's hyperparameters across keys (a range, a
    /// combination), after each has been type-checked; the reason names
    /// what is wrong. Called on kwargs and on loaded groups.
    fn check_group(&self, _group: &ParamGroup) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Updates `param` in place from `grad`, reading the group's
    /// hyperparameters and creating or advancing `state` (keys of
    /// [`state_layout`](Self::state_layout) only). Called per parameter
    /// with a gradient, in group order, under `no_grad`.
    fn step(&self, group: &ParamGroup, param: &mut Tensor, grad: &Tensor, state: &mut ParamState) -> Result<()>;
}

/// A registered class: its name and its declarations, checked once.
pub(crate) struct UserClass {
    name: String,
    hyperparameters: Vec<(String, Value)>,
    layout: Vec<StateKey>,
    class: Box<dyn OptimizerClass>,
}

impl std::fmt::Debug for UserClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserClass")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UserClass {
    /// Checks what `class` declares: `lr` with a number default, no key
    /// twice, no reserved or empty key, state keys usable as tensor names.
    pub(crate) fn new(name: &str, class: Box<dyn OptimizerClass>) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidKwargs {
            class: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("an optimizer class name cannot be empty".into()));
        }
        if name.starts_with(BUILTIN_PREFIX) {
            return Err(Error::DuplicateName {
                kind: "optimizer",
                name: name.to_owned(),
            });
        }
        let hyperparameters = class.hyperparameters();
        let mut seen = std::collections::HashSet::new();
        for (key, _) in &hyperparameters {
            if key.is_empty() || key == "params" || key == "param_groups" {
                return Err(invalid(format!("{key:?} cannot be a hyperparameter")));
            }
            if !seen.insert(key.as_str()) {
                return Err(invalid(format!("hyperparameter {key:?} is declared twice")));
            }
        }
        match hyperparameters.iter().find(|(k, _)| k == "lr") {
            Some((_, v)) if decode_float(v).is_some() => {}
            Some((_, v)) => return Err(invalid(format!("the default of \"lr\" must be a number, got {v}"))),
            None => return Err(invalid("the hyperparameters must include \"lr\"".into())),
        }
        let layout = class.state_layout();
        let mut seen = std::collections::HashSet::new();
        for key in &layout {
            if key.name.is_empty() || key.name.contains('.') {
                return Err(invalid(format!(
                    "state key {:?} must be non-empty and have no '.' (it becomes the tensor name state.<index>.<key>)",
                    key.name
                )));
            }
            if !seen.insert(key.name.as_str()) {
                return Err(invalid(format!("state key {:?} is declared twice", key.name)));
            }
        }
        Ok(UserClass {
            name: name.to_owned(),
            hyperparameters,
            layout,
            class,
        })
    }

    fn key(&self, name: &str) -> Option<&StateKey> {
        self.layout.iter().find(|k| k.name == name)
    }

    fn check_group(&self, group: &ParamGroup) -> std::result::Result<(), String> {
        for (key, default) in &self.hyperparameters {
            let v = group.get(key).ok_or("missing")?;
            check_like(default, v).map_err(|reason| format!("{key:?} {reason}"))?;
        }
        catch_unwind(AssertUnwindSafe(|| self.class.check_group(group)))
            .map_err(|p| format!("the group check panicked: {}", panic_message(&*p)))?
    }

    /// The group's options from kwargs over `base`, as `parse_options`.
    fn parse_options(&self, kw: &Kwargs<'_>, base: &Map<String, Value>) -> Result<Map<String, Value>> {
        let mut options = Map::new();
        for (key, default) in &self.hyperparameters {
            let value = match kw.take(key) {
                Some(v) => v.clone(),
                None => base.get(key).cloned().unwrap_or_else(|| default.clone()),
            };
            check_like(default, &value).map_err(|reason| kw.error(format!("kwarg {key:?} {reason}")))?;
            options.insert(key.clone(), value);
        }
        self.check_group(&ParamGroup::new(Vec::new(), options.clone()))
            .map_err(|reason| kw.error(reason))?;
        Ok(options)
    }

    fn check_loaded_group(&self, group: &ParamGroup, index: usize) -> Result<()> {
        for (key, default) in &self.hyperparameters {
            let v = group.get(key).ok_or_else(|| Error::InvalidState {
                what: format!("param_groups[{index}].{key}"),
                reason: "missing".into(),
            })?;
            check_like(default, v).map_err(|reason| Error::InvalidState {
                what: format!("param_groups[{index}].{key}"),
                reason,
            })?;
        }
        self.check_group(group).map_err(|reason| Error::InvalidState {
            what: format!("param_groups[{index}]"),
            reason,
        })
    }

    /// A saved state tensor, checked against the declared layout and
    /// converted as PyTorch's `load_state_dict` does: a key named `step`
    /// is kept as saved (on the CPU), every other one is cast to a
    /// floating parameter's dtype and moved to its device.
    fn convert_state(&self, name: &str, param: &Tensor, key: &str, t: Tensor) -> Result<Tensor> {
        let mismatch = |reason: String| Error::StateMismatch {
            tensor: name.to_owned(),
            reason,
        };
        let declared = self
            .key(key)
            .ok_or_else(|| mismatch(format!("{} has no state {key:?}", self.name)))?;
        let t = match declared.shape {
            StateShape::Rank0 if t.numel() != 1 => {
                return Err(mismatch(format!(
                    "optimizer state {key:?} must have one element, has shape {:?}",
                    t.size()
                )))
            }
            StateShape::Rank0 => t.f_reshape(&[] as &[i64])?,
            StateShape::LikeParam if t.size() != param.size() => {
                return Err(mismatch(format!(
                    "optimizer state {key:?} has shape {:?}, expected the parameter's {:?}",
                    t.size(),
                    param.size()
                )))
            }
            StateShape::LikeParam => t,
        };
        if key == "step" {
            return Ok(t.f_to_device(Device::Cpu)?.f_contiguous()?);
        }
        let kind = if param.is_floating_point() {
            param.f_kind()?
        } else {
            t.f_kind()?
        };
        Ok(t.f_to_device(param.device())?.f_to_kind(kind)?.f_contiguous()?)
    }

    /// Runs the class's step, then checks that the state it left matches
    /// the declared layout (so that what is saved can be loaded).
    fn step(&self, group: &ParamGroup, param: &mut Tensor, grad: &Tensor, state: &mut ParamState) -> Result<()> {
        catch_unwind(AssertUnwindSafe(|| self.class.step(group, param, grad, state))).map_err(|p| {
            Error::Callback {
                what: format!("step of {}", self.name),
                message: torch_message(&panic_message(&*p)),
            }
        })??;
        for (key, t) in state.iter() {
            let bad = |reason: String| {
                Error::Usage(format!(
                    "the step of {} left state {key:?} {reason}; its state layout declares {:?}",
                    self.name,
                    self.layout.iter().map(|k| k.name.as_str()).collect::<Vec<_>>()
                ))
            };
            match self.key(key).map(|k| k.shape) {
                None => return Err(bad("undeclared".into())),
                Some(StateShape::Rank0) if t.dim() != 0 => {
                    return Err(bad(format!("with shape {:?}, declared rank-0", t.size())))
                }
                Some(StateShape::LikeParam) if t.size() != param.size() => {
                    return Err(bad(format!(
                        "with shape {:?}, declared the parameter's {:?}",
                        t.size(),
                        param.size()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Whether `v` has the JSON type of `default` (a number also in the
/// format's encoding of a non-finite float).
fn check_like(default: &Value, v: &Value) -> std::result::Result<(), String> {
    let ok = match default {
        Value::Null => true,
        Value::Number(_) => decode_float(v).is_some(),
        Value::Bool(_) => v.is_boolean(),
        Value::String(_) => v.is_string(),
        Value::Array(_) => v.is_array(),
        Value::Object(_) => v.is_object(),
    };
    match ok {
        true => Ok(()),
        false => Err(format!("must be of the type of its default {default}, got {v}")),
    }
}

/// The class of an optimizer: a built-in algorithm or a registered one.
#[derive(Debug, Clone)]
pub(super) enum Class {
    BuiltIn(Algorithm),
    User(Arc<UserClass>),
}

impl PartialEq<Algorithm> for Class {
    fn eq(&self, other: &Algorithm) -> bool {
        matches!(self, Class::BuiltIn(a) if a == other)
    }
}

impl Class {
    /// The class named `name`: a built-in one first, else one of
    /// `registered`. An unknown name lists both.
    pub(super) fn resolve(name: &str, registered: &BTreeMap<String, Arc<UserClass>>) -> Result<Self> {
        match Algorithm::from_name(name) {
            Ok(a) => Ok(Class::BuiltIn(a)),
            Err(Error::UnknownName { kind, name, known }) => match registered.get(&name) {
                Some(user) => Ok(Class::User(user.clone())),
                None => Err(Error::UnknownName {
                    kind,
                    name,
                    known: std::iter::once(known)
                        .chain(registered.keys().cloned())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            },
            Err(e) => Err(e),
        }
    }

    pub(super) fn name(&self) -> &str {
        match self {
            Class::BuiltIn(a) => a.name(),
            Class::User(u) => &u.name,
        }
    }

    pub(super) fn parse_options(&self, kw: &Kwargs<'_>, base: &Map<String, Value>) -> Result<Map<String, Value>> {
        match self {
            Class::BuiltIn(a) => parse_options(*a, kw, base),
            Class::User(u) => u.parse_options(kw, base),
        }
    }

    pub(super) fn check_loaded_group(&self, group: &ParamGroup, index: usize) -> Result<()> {
        match self {
            Class::BuiltIn(a) => check_loaded_group(*a, group, index),
            Class::User(u) => u.check_loaded_group(group, index),
        }
    }

    pub(super) fn check_param(&self, name: &str, param: &Tensor) -> std::result::Result<(), String> {
        match self {
            Class::BuiltIn(a) => a.check_param(name, param),
            Class::User(_) => Ok(()),
        }
    }

    /// The keys a non-empty state of a parameter of `shape` must have.
    pub(super) fn required_state(&self, group: &ParamGroup, shape: &[i64]) -> Result<Vec<&str>> {
        match self {
            Class::BuiltIn(a) => a.required_state(group, shape),
            Class::User(u) => Ok(u
                .layout
                .iter()
                .filter(|k| k.required)
                .map(|k| k.name.as_str())
                .collect()),
        }
    }

    pub(super) fn convert_state(&self, name: &str, param: &Tensor, key: &str, t: Tensor) -> Result<Tensor> {
        match self {
            Class::BuiltIn(a) => convert_state(*a, name, param, key, t),
            Class::User(u) => u.convert_state(name, param, key, t),
        }
    }

    /// What steps the parameters of `group`, read once per group and step.
    pub(super) fn stepper<'a>(&'a self, group: &'a ParamGroup) -> Result<Stepper<'a>> {
        Ok(match self {
            Class::BuiltIn(a) => Stepper::BuiltIn(Hyper::read(*a, group)?),
            Class::User(u) => Stepper::User(u, group),
        })
    }
}

/// A group's step: a built-in algorithm's hyperparameters, or a user
/// class with the group it reads.
pub(super) enum Stepper<'a> {
    BuiltIn(Hyper),
    User(&'a UserClass, &'a ParamGroup),
}

impl Stepper<'_> {
    /// One step on one parameter.
    pub(super) fn step(&self, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
        match self {
            Stepper::BuiltIn(h) => h.step(param, grad, state),
            Stepper::User(u, group) => u.step(group, param, &grad, state),
        }
    }
}
