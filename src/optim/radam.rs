//! `torch.optim.RAdam`: its hyperparameter table, state keys and step
//! (Adam with the variance of the adaptive learning rate rectified).

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::Result;

/// PyTorch 2.13's param_group keys of RAdam, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1e-3),
    hp!("betas", Ty::Betas, [0.9, 0.999]),
    hp!("eps", NON_NEG, 1e-8),
    hp!("weight_decay", NON_NEG, 0),
    hp!("maximize", Ty::Bool, false),
    hp!("foreach", Ty::OptBool, null),
    hp!("capturable", Ty::Bool, false),
    hp!("decoupled_weight_decay", Ty::Bool, false),
    hp!("differentiable", Ty::Bool, false),
];

/// The per-parameter state keys RAdam holds.
pub(super) const STATE_KEYS: &[&str] = &["step", "exp_avg", "exp_avg_sq"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    STATE_KEYS.to_vec()
}

/// A group's RAdam hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct RAdamHp {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    maximize: bool,
}

impl RAdamHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(RAdamHp {
            lr: g.lr()?,
            betas: g.f64_pair("betas")?,
            eps: g.f64("eps")?,
            weight_decay: g.f64("weight_decay")?,
            decoupled: g.bool("decoupled_weight_decay")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// torch/optim/radam.py `_single_tensor_radam` (capturable=False,
/// differentiable=False), for one parameter.
pub(super) fn step(h: &RAdamHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let RAdamHp {
        lr,
        betas: (beta1, beta2),
        eps,
        weight_decay,
        decoupled,
        maximize,
    } = *h;
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("exp_avg".into(), param.f_zeros_like()?);
        state.insert("exp_avg_sq".into(), param.f_zeros_like()?);
    }
    let mut grad = if maximize { grad.f_neg()? } else { grad };
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
    let exp_avg = exp_avg.shallow_clone();
    let exp_avg_sq = state_or(state, "exp_avg_sq", || param.f_zeros_like().map_err(Into::into))?;
    let _ = exp_avg_sq.f_mul_scalar_(beta2)?;
    kernels::addcmul_(exp_avg_sq, &grad, &grad, 1.0 - beta2)?;

    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let bias_corrected_exp_avg = exp_avg.f_div_scalar(bias_correction1)?;
    // The maximum length of the approximated SMA, and its length now.
    let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    let rho_t = rho_inf - 2.0 * step * beta2.powf(step) / bias_correction2;
    let update = if rho_t > 5.0 {
        let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).powf(0.5);
        let mut exp_avg_sq_sqrt = exp_avg_sq.f_sqrt()?;
        let _ = exp_avg_sq_sqrt.f_add_scalar_(eps)?;
        // Python's `float / tensor` is `tensor.reciprocal() * float`.
        let adaptive_lr = exp_avg_sq_sqrt
            .f_reciprocal()?
            .f_mul_scalar(bias_correction2.powf(0.5))?;
        bias_corrected_exp_avg
            .f_mul_scalar(lr)?
            .f_mul(&adaptive_lr)?
            .f_mul_scalar(rect)?
    } else {
        bias_corrected_exp_avg.f_mul_scalar(lr)?
    };
    kernels::add_(param, &update, -1.0)
}
