//! `torch.optim.Adamax`: its hyperparameter table, state keys and step
//! (Adam with the infinity norm in place of the second moment).

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::Result;

/// PyTorch 2.13's param_group keys of Adamax, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 2e-3),
    hp!("betas", Ty::Betas, [0.9, 0.999]),
    hp!("eps", NON_NEG, 1e-8),
    hp!("weight_decay", NON_NEG, 0),
    hp!("foreach", Ty::OptBool, null),
    hp!("maximize", Ty::Bool, false),
    hp!("differentiable", Ty::Bool, false),
    hp!("capturable", Ty::Bool, false),
];

/// The per-parameter state keys Adamax holds.
pub(super) const STATE_KEYS: &[&str] = &["step", "exp_avg", "exp_inf"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    STATE_KEYS.to_vec()
}

/// A group's Adamax hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct AdamaxHp {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    maximize: bool,
}

impl AdamaxHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(AdamaxHp {
            lr: g.lr()?,
            betas: g.f64_pair("betas")?,
            eps: g.f64("eps")?,
            weight_decay: g.f64("weight_decay")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// torch/optim/adamax.py `_single_tensor_adamax` (capturable=False,
/// differentiable=False), for one parameter.
pub(super) fn step(h: &AdamaxHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let AdamaxHp {
        lr,
        betas: (beta1, beta2),
        eps,
        weight_decay,
        maximize,
    } = *h;
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("exp_avg".into(), param.f_zeros_like()?);
        state.insert("exp_inf".into(), param.f_zeros_like()?);
    }
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    let step = increment_step(state)?;
    if weight_decay != 0.0 {
        grad = kernels::add(&grad, param, weight_decay)?;
    }
    let exp_avg = state_or(state, "exp_avg", || param.f_zeros_like().map_err(Into::into))?;
    let _ = exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
    let exp_inf = state_or(state, "exp_inf", || param.f_zeros_like().map_err(Into::into))?;
    let _ = exp_inf.f_mul_scalar_(beta2)?;
    let mut norm = grad.f_abs()?;
    let _ = norm.f_add_scalar_(eps)?;
    let _ = exp_inf.f_maximum_out(exp_inf, &norm)?;
    let bias_correction = 1.0 - beta1.powf(step);
    let clr = lr / bias_correction;
    kernels::addcdiv_(param, &state["exp_avg"], &state["exp_inf"], -clr)
}
