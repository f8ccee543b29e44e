//! `torch.optim.Adafactor`: its hyperparameter table, state keys and step
//! (a factored second moment: a parameter of two or more dimensions keeps
//! `row_var` and `col_var`, reduced along its last and second-to-last
//! dimension; a vector or scalar keeps a full `variance`).

use std::cell::Cell;

use serde_json::Value;
use tch::{Kind, Tensor};

use super::kernels;
use super::options::{hp, Hp, Ty, NON_NEG};
use super::state::{increment_step, step_tensor, ParamState};
use super::ParamGroup;
use crate::error::{Error, Result};

/// PyTorch 2.13's param_group keys of Adafactor, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1e-2),
    hp!("beta2_decay", Ty::FloatAtMost { max: 0.0 }, (-0.8)),
    hp!("eps", Ty::AdafactorEps, [null, 1e-3]),
    hp!("d", Ty::Float { min: 1.0, max: None }, 1.0),
    hp!("weight_decay", NON_NEG, 0.0),
    hp!("foreach", Ty::OptBool, null),
    hp!("maximize", Ty::Bool, false),
];

/// The per-parameter state keys Adafactor may hold.
pub(super) const STATE_KEYS: &[&str] = &["step", "row_var", "col_var", "variance"];

/// Whether a parameter of this shape keeps the factored state
/// (`row_var`, `col_var`) rather than `variance`.
fn factored(shape: &[i64]) -> bool {
    shape.len() > 1
}

/// The state keys a non-empty state of a parameter of this shape must have.
pub(super) fn required_state(shape: &[i64]) -> Vec<&'static str> {
    if factored(shape) {
        vec!["step", "row_var", "col_var"]
    } else {
        vec!["step", "variance"]
    }
}

/// The shape of state `key` (not `step`) for a parameter of `shape`, or
/// why the parameter cannot have that state.
pub(super) fn state_shape(key: &str, shape: &[i64]) -> std::result::Result<Vec<i64>, String> {
    let n = shape.len();
    match key {
        "row_var" | "col_var" if !factored(shape) => Err(format!(
            "Adafactor keeps {key:?} only for parameters of two or more dimensions, this one has shape {shape:?}"
        )),
        "row_var" => Ok([&shape[..n - 1], &[1]].concat()),
        "col_var" => Ok([&shape[..n - 2], &[1], &shape[n - 1..]].concat()),
        "variance" if factored(shape) => Err(format!(
            "Adafactor keeps \"variance\" only for parameters of at most one dimension, this one has shape {shape:?}"
        )),
        _ => Ok(shape.to_vec()),
    }
}

/// A group's Adafactor hyperparameters, read once per group and step.
pub(super) struct AdafactorHp {
    lr: f64,
    beta2_decay: f64,
    /// `eps[0]`; when null, PyTorch sets it to the machine epsilon of the
    /// first parameter's dtype and keeps that for the rest of the group's
    /// step (its loop reassigns the variable): so does this cell.
    eps1: Cell<Option<f64>>,
    eps2: f64,
    d: f64,
    weight_decay: f64,
    maximize: bool,
}

impl AdafactorHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        let bad = |reason: String| Error::InvalidState {
            what: "param_groups key \"eps\"".into(),
            reason,
        };
        let (eps1, eps2) = match g.get("eps") {
            Some(Value::Array(a)) if a.len() == 2 => {
                let eps1 = match &a[0] {
                    Value::Null => None,
                    v => Some(
                        v.as_f64()
                            .ok_or_else(|| bad(format!("eps[0] must be null or a number, got {v}")))?,
                    ),
                };
                let eps2 = a[1]
                    .as_f64()
                    .ok_or_else(|| bad(format!("eps[1] must be a number, got {}", a[1])))?;
                (eps1, eps2)
            }
            v => return Err(bad(format!("must be a list [eps1 or null, eps2], got {v:?}"))),
        };
        Ok(AdafactorHp {
            lr: g.lr()?,
            beta2_decay: g.f64("beta2_decay")?,
            eps1: Cell::new(eps1),
            eps2,
            d: g.f64("d")?,
            weight_decay: g.f64("weight_decay")?,
            maximize: g.bool("maximize")?,
        })
    }
}

/// `torch.finfo(kind).eps`.
fn machine_epsilon(kind: Kind) -> Result<f64> {
    Ok(match kind {
        Kind::Double => f64::EPSILON,
        Kind::Float => f32::EPSILON as f64,
        Kind::Half => 0.0009765625,
        Kind::BFloat16 => 0.0078125,
        k => {
            return Err(Error::Torch(format!(
                "Adafactor needs a floating-point parameter, not {k:?}"
            )))
        }
    })
}

/// Python's `min(a, b)` and `max(a, b)` (the first on ties).
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// A state tensor the step needs; a loaded state may lack it.
fn take<'s>(state: &'s mut ParamState, key: &str) -> Result<&'s mut Tensor> {
    state
        .get_mut(key)
        .ok_or_else(|| Error::Torch(format!("Adafactor state lacks {key:?}")))
}

/// torch/optim/_adafactor.py `_single_tensor_adafactor`, for one parameter.
pub(super) fn step(h: &AdafactorHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    let multidim = grad.dim() > 1;
    if state.is_empty() {
        state.insert("step".into(), step_tensor(0.0)?);
        let shape = grad.size();
        if multidim {
            for key in ["row_var", "col_var"] {
                let s = state_shape(key, &shape).map_err(Error::Torch)?;
                state.insert(
                    key.into(),
                    grad.f_new_zeros(s.as_slice(), (grad.f_kind()?, grad.device()))?,
                );
            }
        } else {
            state.insert("variance".into(), grad.f_zeros_like()?);
        }
    }
    let grad = if h.maximize { grad.f_neg()? } else { grad };
    let eps1 = match h.eps1.get() {
        Some(e) => e,
        None => {
            let e = machine_epsilon(param.f_kind()?)?;
            h.eps1.set(Some(e));
            e
        }
    };

    let step = increment_step(state)?;
    let one_minus_beta2_t = step.powf(h.beta2_decay);
    let rho_t = py_min(h.lr, 1.0 / step.powf(0.5));
    let numel_sqrt = (param.numel() as f64).powf(0.5);
    let param_norm = kernels::vector_norm(param, None, false)?.f_double_value(&[])?;
    let alpha = py_max(h.eps2, param_norm / numel_sqrt) * rho_t;

    if h.weight_decay != 0.0 {
        let _ = param.f_mul_scalar_(1.0 - h.lr * h.weight_decay)?;
    }

    let mut var_estimate = if multidim {
        let size = grad.size();
        let n = size.len();
        let mut row_mean = kernels::vector_norm(&grad, Some(&[-1]), true)?;
        let _ = row_mean.f_square_()?.f_div_scalar_(size[n - 1])?;
        let _ = take(state, "row_var")?.f_lerp_(&row_mean, one_minus_beta2_t)?;
        let mut col_mean = kernels::vector_norm(&grad, Some(&[-2]), true)?;
        let _ = col_mean.f_square_()?.f_div_scalar_(size[n - 2])?;
        let _ = take(state, "col_var")?.f_lerp_(&col_mean, one_minus_beta2_t)?;
        let row_var = &state["row_var"];
        let mut var_estimate = row_var.f_matmul(&state["col_var"])?;
        let mut row_var_mean = row_var.f_mean_dim(&[-2i64][..], true, None)?;
        kernels::clamp_min_(&mut row_var_mean, eps1)?;
        let _ = var_estimate.f_div_(&row_var_mean)?;
        var_estimate
    } else {
        let grad_squared = grad.f_mul(&grad)?;
        let variance = take(state, "variance")?;
        let _ = variance.f_lerp_(&grad_squared, one_minus_beta2_t)?;
        // variance.clone(): the same values in a tensor of its own.
        let mut var_estimate = variance.f_zeros_like()?;
        var_estimate.f_copy_(variance)?;
        var_estimate
    };

    kernels::clamp_min_(&mut var_estimate, eps1 * eps1)?;
    let mut update = var_estimate.f_rsqrt_()?;
    let _ = update.f_mul_(&grad)?;
    let update_norm = kernels::vector_norm(&update, None, false)?.f_double_value(&[])?;
    let denom = py_max(1.0, update_norm / ((update.numel() as f64).powf(0.5) * h.d));
    kernels::add_(param, &update, -alpha / denom)
}
