//! `torch.optim.NAdam`: its hyperparameter table, state keys and step
//! (Adam with Nesterov momentum and a momentum-decay schedule, whose
//! running product `mu_product` is rank-0 state).

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, scalar_tensor, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::Result;

/// PyTorch 2.13's param_group keys of NAdam, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 2e-3),
    hp!("betas", Ty::Betas, [0.9, 0.999]),
    hp!("eps", NON_NEG, 1e-8),
    hp!("weight_decay", NON_NEG, 0),
    hp!("momentum_decay", NON_NEG, 4e-3),
    hp!("decoupled_weight_decay", Ty::Bool, false),
    hp!("maximize", Ty::Bool, false),
    hp!("foreach", Ty::OptBool, null),
    hp!("capturable", Ty::Bool, false),
    hp!("differentiable", Ty::Bool, false),
];

/// The per-parameter state keys NAdam holds.
pub(super) const STATE_KEYS: &[&str] = &["step", "mu_product", "exp_avg", "exp_avg_sq"];

/// The rank-0 state keys besides `step` (float32 as PyTorch creates it).
pub(super) const SCALAR_STATE_KEYS: &[&str] = &["mu_product"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    STATE_KEYS.to_vec()
}

/// A group's NAdam hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct NAdamHp {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    momentum_decay: f64,
    decoupled: bool,
    maximize: bool,
}

impl NAdamHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(NAdamHp {
            lr: g.lr()?,
            betas: g.f64_pair("betas")?,
            eps: g.f64("eps")?,
            weight_decay: g.f64("weight_decay")?,
            momentum_decay: g.f64("momentum_decay")?,
            decoupled: g.bool("decoupled_weight_decay")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// torch/optim/nadam.py `_single_tensor_nadam` (capturable=False,
/// differentiable=False), for one parameter.
pub(super) fn step(h: &NAdamHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let NAdamHp {
        lr,
        betas: (beta1, beta2),
        eps,
        weight_decay,
        momentum_decay,
        decoupled,
        maximize,
    } = *h;
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("mu_product".into(), scalar_tensor(1.0, tch::Device::Cpu)?);
        state.insert("exp_avg".into(), param.f_zeros_like()?);
        state.insert("exp_avg_sq".into(), param.f_zeros_like()?);
    }
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    let step = increment_step(state)?;
    let bias_correction2 = 1.0 - beta2.powf(step);
    if weight_decay != 0.0 {
        if decoupled {
            let _ = param.f_mul_scalar_(1.0 - lr * weight_decay)?;
        } else {
            grad = kernels::add(&grad, param, weight_decay)?;
        }
    }
    // The momentum cache mu_t and mu_{t+1}.
    let mu = beta1 * (1.0 - 0.5 * 0.96f64.powf(step * momentum_decay));
    let mu_next = beta1 * (1.0 - 0.5 * 0.96f64.powf((step + 1.0) * momentum_decay));
    let mu_product = state_or(state, "mu_product", || scalar_tensor(1.0, tch::Device::Cpu))?;
    let _ = mu_product.f_mul_scalar_(mu)?;
    let mu_product = mu_product.f_double_value(&[])?;

    let exp_avg = state_or(state, "exp_avg", || param.f_zeros_like().map_err(Into::into))?;
    let _ = exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
    let exp_avg_sq = state_or(state, "exp_avg_sq", || param.f_zeros_like().map_err(Into::into))?;
    let _ = exp_avg_sq.f_mul_scalar_(beta2)?;
    kernels::addcmul_(exp_avg_sq, &grad, &grad, 1.0 - beta2)?;
    let mut denom = exp_avg_sq.f_div_scalar(bias_correction2)?.f_sqrt()?;

    let mu_product_next = mu_product * mu_next;
    let _ = denom.f_add_scalar_(eps)?;
    kernels::addcdiv_(param, &grad, &denom, -lr * (1.0 - mu) / (1.0 - mu_product))?;
    kernels::addcdiv_(
        param,
        &state["exp_avg"],
        &denom,
        (-lr * mu_next) / (1.0 - mu_product_next),
    )
}
