//! `torch.optim.SGD`: its hyperparameter table, state keys and step
//! (momentum, dampening, Nesterov, weight decay).

use tch::Tensor;

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::ParamState;
use super::ParamGroup;
use crate::error::{Error, Result};

/// PyTorch 2.13's param_group keys of SGD, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1e-3),
    hp!("momentum", NON_NEG, 0),
    hp!(
        "dampening",
        Ty::Float {
            min: f64::NEG_INFINITY,
            max: None
        },
        0
    ),
    hp!("weight_decay", NON_NEG, 0),
    hp!("nesterov", Ty::Bool, false),
    hp!("maximize", Ty::Bool, false),
    hp!("foreach", Ty::OptBool, null),
    hp!("differentiable", Ty::Bool, false),
    hp!("fused", Ty::OptBool, null),
];

/// The per-parameter state keys SGD may hold.
pub(super) const STATE_KEYS: &[&str] = &["momentum_buffer"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    vec!["momentum_buffer"]
}

/// Checks across keys, as PyTorch's constructor does.
pub(super) fn check_group(group: &ParamGroup) -> Result<()> {
    if group.bool("nesterov")? && (group.f64("momentum")? <= 0.0 || group.f64("dampening")? != 0.0) {
        return Err(Error::Usage(
            "Nesterov momentum requires a momentum and zero dampening".into(),
        ));
    }
    Ok(())
}

/// A group's SGD hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct SgdHp {
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    maximize: bool,
}

impl SgdHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        Ok(SgdHp {
            lr: g.lr()?,
            momentum: g.f64("momentum")?,
            dampening: g.f64("dampening")?,
            weight_decay: g.f64("weight_decay")?,
            nesterov: g.bool("nesterov")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// `torch.clone`: a new tensor with `t`'s values.
fn clone(t: &Tensor) -> Result<Tensor> {
    let mut out = t.f_empty_like()?;
    out.f_copy_(t)?;
    Ok(out)
}

/// torch/optim/sgd.py `_single_tensor_sgd`, for one parameter.
pub(super) fn step(h: &SgdHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let SgdHp {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
    } = *h;
    let mut grad = if maximize { grad.f_neg()? } else { grad };
    if weight_decay != 0.0 {
        grad = kernels::add(&grad, param, weight_decay)?;
    }
    if momentum != 0.0 {
        let buf = match state.get_mut("momentum_buffer") {
            None => {
                let buf = clone(&grad.f_detach()?)?;
                state.insert("momentum_buffer".into(), buf);
                state.get_mut("momentum_buffer").expect("inserted above")
            }
            Some(buf) => {
                let _ = buf.f_mul_scalar_(momentum)?;
                kernels::add_(buf, &grad, 1.0 - dampening)?;
                buf
            }
        };
        grad = if nesterov {
            kernels::add(&grad, buf, momentum)?
        } else {
            buf.shallow_clone()
        };
    }
    kernels::add_(param, &grad, -lr)
}
