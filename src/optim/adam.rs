//! `torch.optim.Adam` and `torch.optim.AdamW`: their hyperparameter table,
//! state keys and step. AdamW is Adam with decoupled weight decay, run by
//! the same kernel; it differs only in two defaults, one of them fixed.

use serde_json::Value;
use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::Result;

/// PyTorch 2.13's param_group keys of Adam (and AdamW), in its order,
/// with Adam's defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1e-3),
    hp!("betas", Ty::Betas, [0.9, 0.999]),
    hp!("eps", NON_NEG, 1e-8),
    hp!("weight_decay", NON_NEG, 0),
    hp!("amsgrad", Ty::Bool, false),
    hp!("maximize", Ty::Bool, false),
    hp!("foreach", Ty::OptBool, null),
    hp!("capturable", Ty::Bool, false),
    hp!("differentiable", Ty::Bool, false),
    hp!("fused", Ty::OptBool, null),
    hp!("decoupled_weight_decay", Ty::Bool, false),
];

/// The keys AdamW sets itself, refusing them as kwargs' overrides.
pub(super) const ADAMW_FIXED: &[&str] = &["decoupled_weight_decay"];

/// AdamW's default of `key` where it differs from Adam's: AdamW is Adam
/// with `weight_decay=1e-2` and `decoupled_weight_decay=True` (fixed).
pub(super) fn adamw_default(key: &str) -> Option<Value> {
    match key {
        "weight_decay" => Some(serde_json::json!(1e-2)),
        "decoupled_weight_decay" => Some(Value::Bool(true)),
        _ => None,
    }
}

/// The per-parameter state keys Adam may hold.
pub(super) const STATE_KEYS: &[&str] = &["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"];

/// The state keys a parameter's non-empty state must have under `group`.
pub(super) fn required_state(group: &ParamGroup) -> Result<Vec<&'static str>> {
    let mut k = vec!["step", "exp_avg", "exp_avg_sq"];
    if group.bool("amsgrad")? {
        k.push("max_exp_avg_sq");
    }
    Ok(k)
}

/// A group's Adam hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct AdamHp {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
    decoupled: bool,
    maximize: bool,
}

impl AdamHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(AdamHp {
            lr: g.lr()?,
            betas: g.f64_pair("betas")?,
            eps: g.f64("eps")?,
            weight_decay: g.f64("weight_decay")?,
            amsgrad: g.bool("amsgrad")?,
            decoupled: g.bool("decoupled_weight_decay")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// torch/optim/adam.py `_single_tensor_adam` (capturable=False), for one
/// parameter; AdamW is Adam with decoupled_weight_decay.
pub(super) fn step(h: &AdamHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let AdamHp {
        lr,
        betas: (beta1, beta2),
        eps,
        weight_decay,
        amsgrad,
        decoupled,
        maximize,
    } = *h;
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("exp_avg".into(), param.f_zeros_like()?);
        state.insert("exp_avg_sq".into(), param.f_zeros_like()?);
        if amsgrad {
            state.insert("max_exp_avg_sq".into(), param.f_zeros_like()?);
        }
    }
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
    let exp_avg_sq = state_or(state, "exp_avg_sq", || param.f_zeros_like().map_err(Into::into))?;
    let _ = exp_avg_sq.f_mul_scalar_(beta2)?;
    kernels::addcmul_(exp_avg_sq, &grad, &grad, 1.0 - beta2)?;
    let exp_avg_sq = exp_avg_sq.shallow_clone();

    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.powf(0.5);
    let mut denom = if amsgrad {
        let max = state_or(state, "max_exp_avg_sq", || param.f_zeros_like().map_err(Into::into))?;
        let _ = max.f_maximum_out(max, &exp_avg_sq)?;
        max.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?
    } else {
        exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?
    };
    let _ = denom.f_add_scalar_(eps)?;
    kernels::addcdiv_(param, &state["exp_avg"], &denom, -step_size)
}
