//! `torch.optim.RMSprop`: its hyperparameter table, state keys and step
//! (plain, centered, with momentum).

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::Result;

/// PyTorch 2.13's param_group keys of RMSprop, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1e-2),
    hp!("momentum", NON_NEG, 0),
    hp!("alpha", NON_NEG, 0.99),
    hp!("eps", NON_NEG, 1e-8),
    hp!("centered", Ty::Bool, false),
    hp!("weight_decay", NON_NEG, 0),
    hp!("capturable", Ty::Bool, false),
    hp!("foreach", Ty::OptBool, null),
    hp!("maximize", Ty::Bool, false),
    hp!("differentiable", Ty::Bool, false),
];

/// The per-parameter state keys RMSprop may hold.
pub(super) const STATE_KEYS: &[&str] = &["step", "square_avg", "momentum_buffer", "grad_avg"];

/// The state keys a parameter's non-empty state must have under `group`.
pub(super) fn required_state(group: &ParamGroup) -> Result<Vec<&'static str>> {
    let mut k = vec!["step", "square_avg"];
    if group.f64("momentum")? > 0.0 {
        k.push("momentum_buffer");
    }
    if group.bool("centered")? {
        k.push("grad_avg");
    }
    Ok(k)
}

/// A group's RMSprop hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct RmsPropHp {
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
    maximize: bool,
}

impl RmsPropHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(RmsPropHp {
            lr: g.lr()?,
            alpha: g.f64("alpha")?,
            eps: g.f64("eps")?,
            weight_decay: g.f64("weight_decay")?,
            momentum: g.f64("momentum")?,
            centered: g.bool("centered")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// torch/optim/rmsprop.py `_single_tensor_rmsprop`, for one parameter.
pub(super) fn step(h: &RmsPropHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let RmsPropHp {
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        centered,
        maximize,
    } = *h;
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        state.insert("square_avg".into(), param.f_zeros_like()?);
        if momentum > 0.0 {
            state.insert("momentum_buffer".into(), param.f_zeros_like()?);
        }
        if centered {
            state.insert("grad_avg".into(), param.f_zeros_like()?);
        }
    }
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    increment_step(state)?;
    if weight_decay != 0.0 {
        grad = kernels::add(&grad, param, weight_decay)?;
    }
    let square_avg = state_or(state, "square_avg", || param.f_zeros_like().map_err(Into::into))?;
    let _ = square_avg.f_mul_scalar_(alpha)?;
    kernels::addcmul_(square_avg, &grad, &grad, 1.0 - alpha)?;
    let square_avg = square_avg.shallow_clone();
    let mut avg = if centered {
        let grad_avg = state_or(state, "grad_avg", || param.f_zeros_like().map_err(Into::into))?;
        let _ = grad_avg.f_lerp_(&grad, 1.0 - alpha)?;
        let mut avg = kernels::addcmul(&square_avg, grad_avg, grad_avg, -1.0)?;
        let _ = avg.f_sqrt_()?;
        avg
    } else {
        square_avg.f_sqrt()?
    };
    let _ = avg.f_add_scalar_(eps)?;
    if momentum > 0.0 {
        let buf = state_or(state, "momentum_buffer", || param.f_zeros_like().map_err(Into::into))?;
        let _ = buf.f_mul_scalar_(momentum)?;
        kernels::addcdiv_(buf, &grad, &avg, 1.0)?;
        kernels::add_(param, buf, -lr)
    } else {
        kernels::addcdiv_(param, &grad, &avg, -lr)
    }
}
