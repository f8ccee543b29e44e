//! Which optimizers exist: their names, and the dispatch from an
//! algorithm to its own file (hyperparameter table, state keys, step).

use serde_json::Value;
use tch::Tensor;

use super::options::Hp;
use super::state::ParamState;
use super::{adagrad, adam, rmsprop, sgd, ParamGroup};
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

/// Every optimizer name this library knows.
pub fn names() -> &'static [&'static str] {
    &[ADAGRAD, ADAM, ADAMW, RMSPROP, SGD]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    Sgd,
    Adam,
    AdamW,
    RmsProp,
    Adagrad,
}

impl Algorithm {
    pub(super) fn from_name(name: &str) -> Result<Self> {
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

    pub(super) fn name(self) -> &'static str {
        match self {
            Algorithm::Sgd => SGD,
            Algorithm::Adam => ADAM,
            Algorithm::AdamW => ADAMW,
            Algorithm::RmsProp => RMSPROP,
            Algorithm::Adagrad => ADAGRAD,
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
    /// rank-0 float32 CPU tensor, every other one has the parameter's shape.
    pub(super) fn state_keys(self) -> &'static [&'static str] {
        match self {
            Algorithm::Sgd => sgd::STATE_KEYS,
            Algorithm::Adam | Algorithm::AdamW => adam::STATE_KEYS,
            Algorithm::RmsProp => rmsprop::STATE_KEYS,
            Algorithm::Adagrad => adagrad::STATE_KEYS,
        }
    }

    /// The state keys a parameter's non-empty state must have under `group`.
    pub(super) fn required_state(self, group: &ParamGroup) -> Result<Vec<&'static str>> {
        match self {
            Algorithm::Sgd => Ok(sgd::required_state()),
            Algorithm::Adam | Algorithm::AdamW => adam::required_state(group),
            Algorithm::RmsProp => rmsprop::required_state(group),
            Algorithm::Adagrad => Ok(adagrad::required_state()),
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
}

impl Hyper {
    pub(super) fn read(alg: Algorithm, g: &ParamGroup) -> Result<Self> {
        Ok(match alg {
            Algorithm::Sgd => Hyper::Sgd(sgd::SgdHp::read(g)?),
            Algorithm::Adam | Algorithm::AdamW => Hyper::Adam(adam::AdamHp::read(g)?),
            Algorithm::RmsProp => Hyper::RmsProp(rmsprop::RmsPropHp::read(g)?),
            Algorithm::Adagrad => Hyper::Adagrad(adagrad::AdagradHp::read(g)?),
        })
    }

    /// One step of the algorithm on one parameter.
    pub(super) fn step(&self, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
        match self {
            Hyper::Sgd(h) => sgd::step(h, param, grad, state),
            Hyper::Adam(h) => adam::step(h, param, grad, state),
            Hyper::RmsProp(h) => rmsprop::step(h, param, grad, state),
            Hyper::Adagrad(h) => adagrad::step(h, param, grad, state),
        }
    }
}
