//! `torch.optim.Adadelta`: its hyperparameter table, state keys and step.

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::Result;

/// PyTorch 2.13's param_group keys of Adadelta, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1.0),
    hp!("rho", Ty::FloatClosed { min: 0.0, max: 1.0 }, 0.9),
    hp!("eps", NON_NEG, 1e-6),
    hp!("weight_decay", NON_NEG, 0),
    hp!("maximize", Ty::Bool, false),
    hp!("capturable", Ty::Bool, false),
    hp!("foreach", Ty::OptBool, null),
    hp!("differentiable", Ty::Bool, false),
];

/// The per-parameter state keys Adadelta holds.
pub(super) const STATE_KEYS: &[&str] = &["step", "square_avg", "acc_delta"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    STATE_KEYS.to_vec()
}

/// A group's Adadelta hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct AdadeltaHp {
    lr: f64,
    rho: f64,
    eps: f64,
    weight_decay: f64,
    maximize: bool,
}

impl AdadeltaHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(AdadeltaHp {
            lr: g.lr()?,
            rho: g.f64("rho")?,
            eps: g.f64("eps")?,
            weight_decay: g.f64("weight_decay")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// torch/optim/adadelta.py `_single_tensor_adadelta` (capturable=False,
/// differentiable=False), for one parameter.
pub(super) fn step(h: &AdadeltaHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let AdadeltaHp {
        lr,
        rho,
        eps,
        weight_decay,
        maximize,
    } = *h;
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("square_avg".into(), param.f_zeros_like()?);
        state.insert("acc_delta".into(), param.f_zeros_like()?);
    }
    increment_step(state)?;
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    if weight_decay != 0.0 {
        grad = kernels::add(&grad, param, weight_decay)?;
    }
    let square_avg = state_or(state, "square_avg", || param.f_zeros_like().map_err(Into::into))?;
    let _ = square_avg.f_mul_scalar_(rho)?;
    kernels::addcmul_(square_avg, &grad, &grad, 1.0 - rho)?;
    let mut std = square_avg.f_add_scalar(eps)?;
    let _ = std.f_sqrt_()?;
    let acc_delta = state_or(state, "acc_delta", || param.f_zeros_like().map_err(Into::into))?;
    let mut delta = acc_delta.f_add_scalar(eps)?;
    let _ = delta.f_sqrt_()?;
    let _ = delta.f_div_(&std)?;
    let _ = delta.f_mul_(&grad)?;
    let _ = acc_delta.f_mul_scalar_(rho)?;
    kernels::addcmul_(acc_delta, &delta, &delta, 1.0 - rho)?;
    kernels::add_(param, &delta, -lr)
}
