//! `torch.optim.ASGD`: its hyperparameter table, state keys and step
//! (averaged SGD: `ax` averages the iterates; the step size `eta` and the
//! averaging weight `mu` are rank-0 state).

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, ANY, NON_NEG};
use super::state::{increment_step, scalar_tensor, state_or, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::{Error, Result};

/// PyTorch 2.13's param_group keys of ASGD, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1e-2),
    hp!("lambd", ANY, 1e-4),
    hp!("alpha", ANY, 0.75),
    hp!("t0", ANY, 1e6),
    hp!("weight_decay", NON_NEG, 0),
    hp!("foreach", Ty::OptBool, null),
    hp!("maximize", Ty::Bool, false),
    hp!("differentiable", Ty::Bool, false),
    hp!("capturable", Ty::Bool, false),
];

/// The per-parameter state keys ASGD holds.
pub(super) const STATE_KEYS: &[&str] = &["step", "eta", "mu", "ax"];

/// The rank-0 state keys besides `step` (float32 on the parameter's
/// device, as PyTorch creates them).
pub(super) const SCALAR_STATE_KEYS: &[&str] = &["eta", "mu"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    STATE_KEYS.to_vec()
}

/// A group's ASGD hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct AsgdHp {
    lr: f64,
    lambd: f64,
    alpha: f64,
    t0: f64,
    weight_decay: f64,
    maximize: bool,
}

impl AsgdHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(AsgdHp {
            lr: g.lr()?,
            lambd: g.f64("lambd")?,
            alpha: g.f64("alpha")?,
            t0: g.f64("t0")?,
            weight_decay: g.f64("weight_decay")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// A rank-0 state tensor that the step reads.
fn scalar_state<'s>(state: &'s mut ParamState, key: &str) -> Result<&'s mut Tensor> {
    state.get_mut(key).ok_or_else(|| Error::InvalidState {
        what: format!("ASGD state {key:?}"),
        reason: "missing".into(),
    })
}

/// torch/optim/asgd.py `_single_tensor_asgd` (capturable=False,
/// differentiable=False), for one parameter.
pub(super) fn step(h: &AsgdHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let AsgdHp {
        lr,
        lambd,
        alpha,
        t0,
        weight_decay,
        maximize,
    } = *h;
    if state.is_empty() {
        let device = param.device();
        state.insert("step".into(), step_tensor(0.0)?.f_to_device(device)?);
        state.insert("eta".into(), scalar_tensor(lr, device)?);
        state.insert("mu".into(), scalar_tensor(1.0, device)?);
        state.insert("ax".into(), param.f_zeros_like()?);
    }
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    let step = increment_step(state)?;
    if weight_decay != 0.0 {
        grad = kernels::add(&grad, param, weight_decay)?;
    }
    let eta_value = scalar_state(state, "eta")?.f_double_value(&[])?;
    let _ = param.f_mul_scalar_(1.0 - lambd * eta_value)?;
    kernels::add_(param, &grad, -eta_value)?;

    let mu = scalar_state(state, "mu")?.shallow_clone();
    let ax = state_or(state, "ax", || param.f_zeros_like().map_err(Into::into))?;
    if mu.f_double_value(&[])? != 1.0 {
        let mut diff = param.f_sub(ax)?;
        let _ = diff.f_mul_(&mu)?;
        let _ = ax.f_add_(&diff)?;
    } else {
        ax.f_copy_(param)?;
    }
    // torch.as_tensor(python float) is float32: the new values are rounded
    // to float32 before they are copied into the state (whatever its dtype).
    let new_eta = lr / (1.0 + lambd * lr * step).powf(alpha);
    let _ = scalar_state(state, "eta")?.f_fill_(f64::from(new_eta as f32))?;
    let new_mu = 1.0 / if step - t0 > 1.0 { step - t0 } else { 1.0 };
    let _ = scalar_state(state, "mu")?.f_fill_(f64::from(new_mu as f32))?;
    Ok(())
}
