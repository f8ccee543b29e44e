//! `torch.optim.Rprop`: its hyperparameter table, state keys and step
//! (resilient backpropagation: per-element step sizes grown or shrunk by
//! the sign of successive gradients).

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::Result;

/// PyTorch 2.13's param_group keys of Rprop, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1e-2),
    hp!("etas", Ty::Etas, [0.5, 1.2]),
    hp!("step_sizes", Ty::Pair, [1e-6, 50]),
    hp!("foreach", Ty::OptBool, null),
    hp!("maximize", Ty::Bool, false),
    hp!("differentiable", Ty::Bool, false),
    hp!("capturable", Ty::Bool, false),
];

/// The per-parameter state keys Rprop holds.
pub(super) const STATE_KEYS: &[&str] = &["step", "prev", "step_size"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    STATE_KEYS.to_vec()
}

/// A group's Rprop hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct RpropHp {
    lr: f64,
    etas: (f64, f64),
    step_sizes: (f64, f64),
    maximize: bool,
}

impl RpropHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(RpropHp {
            lr: g.lr()?,
            etas: g.f64_pair("etas")?,
            step_sizes: g.f64_pair("step_sizes")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// torch/optim/rprop.py `_single_tensor_rprop` (capturable=False,
/// differentiable=False, real parameters), for one parameter.
pub(super) fn step(h: &RpropHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let RpropHp {
        lr,
        etas: (etaminus, etaplus),
        step_sizes: (step_size_min, step_size_max),
        maximize,
    } = *h;
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("prev".into(), param.f_zeros_like()?);
        state.insert("step_size".into(), grad.f_full_like(lr)?);
    }
    let grad = if maximize { grad.f_neg()? } else { grad };
    increment_step(state)?;
    let prev = state_or(state, "prev", || param.f_zeros_like().map_err(Into::into))?;
    let mut sign = grad.f_mul(prev)?.f_sign()?;
    let positive = sign.f_gt(0)?;
    let _ = sign.f_masked_fill_(&positive, etaplus)?;
    let negative = sign.f_lt(0)?;
    let _ = sign.f_masked_fill_(&negative, etaminus)?;
    let zero = sign.f_eq(0)?;
    let _ = sign.f_masked_fill_(&zero, 1)?;

    // A copy of the gradient, zero where the step size shrank.
    let shrunk = sign.f_eq(etaminus)?;
    let grad = grad.f_masked_fill(&shrunk, 0)?;
    prev.f_copy_(&grad)?;
    let step_size = state_or(state, "step_size", || grad.f_full_like(lr).map_err(Into::into))?;
    let _ = step_size.f_mul_(&sign)?;
    let _ = step_size.f_clamp_(step_size_min, step_size_max)?;
    kernels::addcmul_(param, &grad.f_sign()?, step_size, -1.0)
}
