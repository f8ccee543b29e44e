//! `torch.optim.Adagrad` (dense gradients): its hyperparameter table,
//! state keys, the state its constructor creates, and its step.

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::Result;

/// PyTorch 2.13's param_group keys of Adagrad, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
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

/// The per-parameter state keys Adagrad may hold.
pub(super) const STATE_KEYS: &[&str] = &["step", "sum"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    vec!["step", "sum"]
}

/// The state Adagrad's constructor creates for each parameter (every
/// parameter has state from the start): `init` is the group's
/// `initial_accumulator_value`.
pub(super) fn initial_state(init: f64, param: &Tensor) -> Result<ParamState> {
    let mut s = ParamState::new();
    s.insert("step".into(), step_tensor(0.0)?);
    s.insert("sum".into(), param.f_full_like(init)?);
    Ok(s)
}

/// A group's Adagrad hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct AdagradHp {
    lr: f64,
    lr_decay: f64,
    eps: f64,
    weight_decay: f64,
    initial_accumulator_value: f64,
    maximize: bool,
}

impl AdagradHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(AdagradHp {
            lr: g.lr()?,
            lr_decay: g.f64("lr_decay")?,
            eps: g.f64("eps")?,
            weight_decay: g.f64("weight_decay")?,
            initial_accumulator_value: g.f64("initial_accumulator_value")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// torch/optim/adagrad.py `_single_tensor_adagrad` (dense), for one parameter.
pub(super) fn step(h: &AdagradHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
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
