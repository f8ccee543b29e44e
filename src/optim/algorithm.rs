//! Which optimizers exist: their names, and the dispatch from an
//! algorithm to its own file (hyperparameter table, state keys, step).

use serde_json::Value;
use tch::Tensor;

use super::options::Hp;
use super::state::ParamState;
use super::{
    adadelta, adafactor, adagrad, adam, adamax, asgd, lbfgs, muon, nadam, radam, rmsprop, rprop, sgd, ParamGroup,
};
use crate::error::{Error, Result};

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
/// `torch.optim.Adamax`
pub const ADAMAX: &str = "torch.optim.Adamax";
/// `torch.optim.NAdam`
pub const NADAM: &str = "torch.optim.NAdam";
/// `torch.optim.RAdam`
pub const RADAM: &str = "torch.optim.RAdam";
/// `torch.optim.Adadelta`
pub const ADADELTA: &str = "torch.optim.Adadelta";
/// `torch.optim.Rprop`
pub const RPROP: &str = "torch.optim.Rprop";
/// `torch.optim.ASGD`
pub const ASGD: &str = "torch.optim.ASGD";
/// `torch.optim.Adafactor`
pub const ADAFACTOR: &str = "torch.optim.Adafactor";
/// `torch.optim.Muon` (2-D parameters only)
pub const MUON: &str = "torch.optim.Muon";
/// `torch.optim.LBFGS` (one parameter group; its step takes a closure:
/// [`Optimizer::step_with_closure`](super::Optimizer::step_with_closure))
pub const LBFGS: &str = "torch.optim.LBFGS";
/// `torch.optim.SparseAdam`: known, and refused (see [`Algorithm::from_name`]).
pub const SPARSE_ADAM: &str = "torch.optim.SparseAdam";

/// Every optimizer name this library knows.
pub fn names() -> &'static [&'static str] {
    &[
        ADADELTA, ADAFACTOR, ADAGRAD, ADAM, ADAMAX, ADAMW, ASGD, LBFGS, MUON, NADAM, RADAM, RMSPROP, RPROP, SGD,
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    Sgd,
    Adam,
    AdamW,
    RmsProp,
    Adagrad,
    Adamax,
    NAdam,
    RAdam,
    Adadelta,
    Rprop,
    Asgd,
    Adafactor,
    Muon,
    Lbfgs,
}

impl Algorithm {
    pub(super) fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            SGD => Algorithm::Sgd,
            ADAM => Algorithm::Adam,
            ADAMW => Algorithm::AdamW,
            RMSPROP => Algorithm::RmsProp,
            ADAGRAD => Algorithm::Adagrad,
            ADAMAX => Algorithm::Adamax,
            NADAM => Algorithm::NAdam,
            RADAM => Algorithm::RAdam,
            ADADELTA => Algorithm::Adadelta,
            RPROP => Algorithm::Rprop,
            ASGD => Algorithm::Asgd,
            ADAFACTOR => Algorithm::Adafactor,
            MUON => Algorithm::Muon,
            LBFGS => Algorithm::Lbfgs,
            // Known, but its step needs sparse gradients (COO tensors from
            // nn.Embedding(sparse=True)); tch hands the step dense ones.
            SPARSE_ADAM => {
                return Err(Error::UnsupportedClass {
                    kind: "optimizer",
                    name: SPARSE_ADAM.into(),
                    reason: format!(
                        "it needs sparse gradients, and tch gives the optimizer dense ones only; use {ADAM} or \
                         {ADAMW} instead"
                    ),
                })
            }
            _ => {
                return Err(Error::UnknownName {
                    kind: "optimizer",
                    name: name.into(),
                    known: names().join(", "),
                })
            }
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Algorithm::Sgd => SGD,
            Algorithm::Adam => ADAM,
            Algorithm::AdamW => ADAMW,
            Algorithm::RmsProp => RMSPROP,
            Algorithm::Adagrad => ADAGRAD,
            Algorithm::Adamax => ADAMAX,
            Algorithm::NAdam => NADAM,
            Algorithm::RAdam => RADAM,
            Algorithm::Adadelta => ADADELTA,
            Algorithm::Rprop => RPROP,
            Algorithm::Asgd => ASGD,
            Algorithm::Adafactor => ADAFACTOR,
            Algorithm::Muon => MUON,
            Algorithm::Lbfgs => LBFGS,
        }
    }

    /// PyTorch 2.13's param_group keys, in its order, with their defaults.
    pub(super) fn hyperparameters(self) -> &'static [Hp] {
        match self {
            Algorithm::Sgd => sgd::HYPERPARAMETERS,
            // AdamW differs only in two defaults: see `default`.
            Algorithm::Adam | Algorithm::AdamW => adam::HYPERPARAMETERS,
            Algorithm::RmsProp => rmsprop::HYPERPARAMETERS,
            Algorithm::Adagrad => adagrad::HYPERPARAMETERS,
            Algorithm::Adamax => adamax::HYPERPARAMETERS,
            Algorithm::NAdam => nadam::HYPERPARAMETERS,
            Algorithm::RAdam => radam::HYPERPARAMETERS,
            Algorithm::Adadelta => adadelta::HYPERPARAMETERS,
            Algorithm::Rprop => rprop::HYPERPARAMETERS,
            Algorithm::Asgd => asgd::HYPERPARAMETERS,
            Algorithm::Adafactor => adafactor::HYPERPARAMETERS,
            Algorithm::Muon => muon::HYPERPARAMETERS,
            Algorithm::Lbfgs => lbfgs::HYPERPARAMETERS,
        }
    }

    /// Keys set by the class, not by kwargs.
    pub(super) fn fixed(self, key: &str) -> bool {
        self == Algorithm::AdamW && adam::ADAMW_FIXED.contains(&key)
    }

    /// The default of `hp` for this class (AdamW's differ from Adam's).
    pub(super) fn default(self, hp: &Hp) -> Value {
        match self {
            Algorithm::AdamW => adam::adamw_default(hp.key).unwrap_or_else(hp.default),
            _ => (hp.default)(),
        }
    }

    /// The per-parameter state keys this algorithm may hold; `step` is a
    /// rank-0 float32 CPU tensor, the [`scalar_state_keys`](Self::scalar_state_keys)
    /// are rank-0 too, every other one has the [`state_shape`](Self::state_shape).
    pub(super) fn state_keys(self) -> &'static [&'static str] {
        match self {
            Algorithm::Sgd => sgd::STATE_KEYS,
            Algorithm::Adam | Algorithm::AdamW => adam::STATE_KEYS,
            Algorithm::RmsProp => rmsprop::STATE_KEYS,
            Algorithm::Adagrad => adagrad::STATE_KEYS,
            Algorithm::Adamax => adamax::STATE_KEYS,
            Algorithm::NAdam => nadam::STATE_KEYS,
            Algorithm::RAdam => radam::STATE_KEYS,
            Algorithm::Adadelta => adadelta::STATE_KEYS,
            Algorithm::Rprop => rprop::STATE_KEYS,
            Algorithm::Asgd => asgd::STATE_KEYS,
            Algorithm::Adafactor => adafactor::STATE_KEYS,
            Algorithm::Muon => muon::STATE_KEYS,
            Algorithm::Lbfgs => lbfgs::STATE_KEYS,
        }
    }

    /// The state keys besides `step` that hold a rank-0 tensor (NAdam's
    /// `mu_product`, ASGD's `eta` and `mu`).
    pub(super) fn scalar_state_keys(self) -> &'static [&'static str] {
        match self {
            Algorithm::NAdam => nadam::SCALAR_STATE_KEYS,
            Algorithm::Asgd => asgd::SCALAR_STATE_KEYS,
            _ => &[],
        }
    }

    /// The shape of state `key` (neither `step` nor a scalar key) for a
    /// parameter of `shape`, or why such a parameter has no such state:
    /// the parameter's own shape, but for Adafactor's factored
    /// `row_var` (last dimension 1) and `col_var` (second-to-last 1).
    pub(super) fn state_shape(self, key: &str, shape: &[i64]) -> std::result::Result<Vec<i64>, String> {
        match self {
            Algorithm::Adafactor => adafactor::state_shape(key, shape),
            _ => Ok(shape.to_vec()),
        }
    }

    /// PyTorch's constructor checks of one parameter (Muon: 2-D only).
    pub(super) fn check_param(self, name: &str, param: &Tensor) -> std::result::Result<(), String> {
        match self {
            Algorithm::Muon => muon::check_param(name, param),
            Algorithm::Lbfgs => lbfgs::check_param(name, param),
            _ => Ok(()),
        }
    }

    /// The state keys a non-empty state of a parameter of `shape` must have
    /// under `group`.
    pub(super) fn required_state(self, group: &ParamGroup, shape: &[i64]) -> Result<Vec<&'static str>> {
        match self {
            Algorithm::Sgd => Ok(sgd::required_state()),
            Algorithm::Adam | Algorithm::AdamW => adam::required_state(group),
            Algorithm::RmsProp => rmsprop::required_state(group),
            Algorithm::Adagrad => Ok(adagrad::required_state()),
            Algorithm::Adamax => Ok(adamax::required_state()),
            Algorithm::NAdam => Ok(nadam::required_state()),
            Algorithm::RAdam => Ok(radam::required_state()),
            Algorithm::Adadelta => Ok(adadelta::required_state()),
            Algorithm::Rprop => Ok(rprop::required_state()),
            Algorithm::Asgd => Ok(asgd::required_state()),
            Algorithm::Adafactor => Ok(adafactor::required_state(shape)),
            Algorithm::Muon => Ok(muon::required_state()),
            // Its state is global (lbfgs.rs checks it), not per parameter.
            Algorithm::Lbfgs => Ok(Vec::new()),
        }
    }

    /// Checks across keys, as PyTorch's constructors do.
    pub(super) fn check_group(self, group: &ParamGroup) -> Result<()> {
        match self {
            Algorithm::Sgd => sgd::check_group(group),
            _ => Ok(()),
        }
    }
}

/// A group's hyperparameters, read once per group and step.
pub(super) enum Hyper {
    Sgd(sgd::SgdHp),
    Adam(adam::AdamHp),
    RmsProp(rmsprop::RmsPropHp),
    Adagrad(adagrad::AdagradHp),
    Adamax(adamax::AdamaxHp),
    NAdam(nadam::NAdamHp),
    RAdam(radam::RAdamHp),
    Adadelta(adadelta::AdadeltaHp),
    Rprop(rprop::RpropHp),
    Asgd(asgd::AsgdHp),
    Adafactor(adafactor::AdafactorHp),
    Muon(muon::MuonHp),
}

impl Hyper {
    pub(super) fn read(alg: Algorithm, g: &ParamGroup) -> Result<Self> {
        Ok(match alg {
            Algorithm::Sgd => Hyper::Sgd(sgd::SgdHp::read(g)?),
            Algorithm::Adam | Algorithm::AdamW => Hyper::Adam(adam::AdamHp::read(g)?),
            Algorithm::RmsProp => Hyper::RmsProp(rmsprop::RmsPropHp::read(g)?),
            Algorithm::Adagrad => Hyper::Adagrad(adagrad::AdagradHp::read(g)?),
            Algorithm::Adamax => Hyper::Adamax(adamax::AdamaxHp::read(g)?),
            Algorithm::NAdam => Hyper::NAdam(nadam::NAdamHp::read(g)?),
            Algorithm::RAdam => Hyper::RAdam(radam::RAdamHp::read(g)?),
            Algorithm::Adadelta => Hyper::Adadelta(adadelta::AdadeltaHp::read(g)?),
            Algorithm::Rprop => Hyper::Rprop(rprop::RpropHp::read(g)?),
            Algorithm::Asgd => Hyper::Asgd(asgd::AsgdHp::read(g)?),
            Algorithm::Adafactor => Hyper::Adafactor(adafactor::AdafactorHp::read(g)?),
            Algorithm::Muon => Hyper::Muon(muon::MuonHp::read(g)?),
            Algorithm::Lbfgs => return Err(lbfgs::needs_closure()),
        })
    }

    /// One step of the algorithm on one parameter.
    pub(super) fn step(&self, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
        match self {
            Hyper::Sgd(h) => sgd::step(h, param, grad, state),
            Hyper::Adam(h) => adam::step(h, param, grad, state),
            Hyper::RmsProp(h) => rmsprop::step(h, param, grad, state),
            Hyper::Adagrad(h) => adagrad::step(h, param, grad, state),
            Hyper::Adamax(h) => adamax::step(h, param, grad, state),
            Hyper::NAdam(h) => nadam::step(h, param, grad, state),
            Hyper::RAdam(h) => radam::step(h, param, grad, state),
            Hyper::Adadelta(h) => adadelta::step(h, param, grad, state),
            Hyper::Rprop(h) => rprop::step(h, param, grad, state),
            Hyper::Asgd(h) => asgd::step(h, param, grad, state),
            Hyper::Adafactor(h) => adafactor::step(h, param, grad, state),
            Hyper::Muon(h) => muon::step(h, param, grad, state),
        }
    }
}
