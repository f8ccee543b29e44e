//! `torch.optim.Muon`: its hyperparameter table, state keys, parameter
//! check and step (momentum, then the update orthogonalized by a
//! Newton-Schulz iteration in bfloat16). Muon takes 2-D parameters only.

use serde_json::Value;
use tch::{Kind, Tensor};

use super::kernels;
use super::options::{hp, Hp, Ty, ANY, NON_NEG};
use super::state::{state_or, ParamState};
use super::ParamGroup;
use crate::error::{Error, Result};

/// PyTorch 2.13's param_group keys of Muon, in its order, with their defaults.
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1e-3),
    hp!("weight_decay", NON_NEG, 0.1),
    hp!("momentum", NON_NEG, 0.95),
    hp!("nesterov", Ty::Bool, true),
    hp!("ns_coefficients", Ty::Triple, [3.4445, (-4.775), 2.0315]),
    hp!("eps", ANY, 1e-7),
    hp!("ns_steps", Ty::IntBelow { below: 100 }, 5),
    hp!("adjust_lr_fn", Ty::OptChoice(&["original", "match_rms_adamw"]), null),
];

/// The per-parameter state keys Muon holds (it keeps no `step`).
pub(super) const STATE_KEYS: &[&str] = &["momentum_buffer"];

/// The state keys a parameter's non-empty state must have.
pub(super) fn required_state() -> Vec<&'static str> {
    STATE_KEYS.to_vec()
}

/// PyTorch's constructor check: every parameter must be 2-D; the reason
/// is PyTorch's, with the parameter's name.
pub(super) fn check_param(name: &str, param: &Tensor) -> std::result::Result<(), String> {
    if param.dim() == 2 {
        Ok(())
    } else {
        Err(format!(
            "Muon only supports 2D parameters whereas we found a parameter with size: {:?} ({name:?}); \
             optimize the others with another optimizer, such as AdamW",
            param.size()
        ))
    }
}

/// How the learning rate is scaled by the parameter's shape (`adjust_lr_fn`).
#[derive(Clone, Copy)]
enum AdjustLr {
    /// null or "original": `sqrt(max(1, A / B))`.
    Original,
    /// "match_rms_adamw": `0.2 * sqrt(max(A, B))`.
    MatchRmsAdamW,
}

/// A group's Muon hyperparameters, read once per group and step.
#[derive(Clone, Copy)]
pub(super) struct MuonHp {
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    nesterov: bool,
    ns_coefficients: (f64, f64, f64),
    eps: f64,
    ns_steps: i64,
    adjust_lr: AdjustLr,
}

impl MuonHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        let bad = |key: &str, reason: String| Error::InvalidState {
            what: format!("param_groups key {key:?}"),
            reason,
        };
        let ns_coefficients = match g.get("ns_coefficients") {
            Some(Value::Array(a)) if a.len() == 3 => {
                let c = |i: usize| {
                    a[i].as_f64()
                        .ok_or_else(|| bad("ns_coefficients", format!("item {i} must be a number, got {}", a[i])))
                };
                (c(0)?, c(1)?, c(2)?)
            }
            v => {
                return Err(bad(
                    "ns_coefficients",
                    format!("must be a list of three numbers, got {v:?}"),
                ))
            }
        };
        let ns_steps = match g.get("ns_steps").and_then(Value::as_i64) {
            Some(n) if n < 100 => n,
            _ => {
                return Err(bad(
                    "ns_steps",
                    "must be an integer below 100 (PyTorch: \"Number of steps must be less than 100\")".into(),
                ))
            }
        };
        let adjust_lr = match g.get("adjust_lr_fn") {
            None | Some(Value::Null) => AdjustLr::Original,
            Some(Value::String(s)) if s == "original" => AdjustLr::Original,
            Some(Value::String(s)) if s == "match_rms_adamw" => AdjustLr::MatchRmsAdamW,
            Some(v) => {
                return Err(bad(
                    "adjust_lr_fn",
                    format!("must be null, \"original\" or \"match_rms_adamw\", got {v}"),
                ))
            }
        };
        Ok(MuonHp {
            lr: g.lr()?,
            weight_decay: g.f64("weight_decay")?,
            momentum: g.f64("momentum")?,
            nesterov: g.bool("nesterov")?,
            ns_coefficients,
            eps: g.f64("eps")?,
            ns_steps,
            adjust_lr,
        })
    }
}

/// torch/optim/_muon.py `_zeropower_via_newtonschulz`.
fn zeropower_via_newtonschulz(grad: &Tensor, (a, b, c): (f64, f64, f64), ns_steps: i64, eps: f64) -> Result<Tensor> {
    let size = grad.size();
    let tall = size[0] > size[1];
    let mut ortho = grad.f_to_kind(Kind::BFloat16)?;
    if tall {
        ortho = ortho.f_numpy_t()?;
    }
    // Ensure spectral norm is at most 1.
    let norm = kernels::clamp_min(&kernels::vector_norm(&ortho, None, false)?, eps)?;
    let _ = ortho.f_div_(&norm)?;
    for _ in 0..ns_steps {
        let gram = ortho.f_matmul(&ortho.f_numpy_t()?)?;
        let gram_update = kernels::addmm(&gram, &gram, &gram, b, c)?;
        ortho = kernels::addmm(&ortho, &gram_update, &ortho, a, 1.0)?;
    }
    if tall {
        ortho = ortho.f_numpy_t()?;
    }
    Ok(ortho)
}

/// torch/optim/_muon.py `_adjust_lr`.
fn adjust_lr(lr: f64, adjust: AdjustLr, shape: &[i64]) -> f64 {
    let (a, b) = (shape[0] as f64, shape[1] as f64);
    let ratio = match adjust {
        AdjustLr::Original => (a / b).max(1.0).sqrt(),
        AdjustLr::MatchRmsAdamW => 0.2 * a.max(b).sqrt(),
    };
    lr * ratio
}

/// torch/optim/_muon.py `_single_tensor_muon`, for one parameter.
pub(super) fn step(h: &MuonHp, param: &mut Tensor, grad: Tensor, state: &mut ParamState) -> Result<()> {
    if grad.dim() != 2 {
        return Err(Error::Torch(format!(
            "Param gradient must be a 2D matrix, got shape {:?}",
            grad.size()
        )));
    }
    let buf = state_or(state, "momentum_buffer", || grad.f_zeros_like().map_err(Into::into))?;
    let _ = buf.f_lerp_(&grad, 1.0 - h.momentum)?;
    let update = if h.nesterov {
        grad.f_lerp(buf, h.momentum)?
    } else {
        buf.shallow_clone()
    };
    let update = zeropower_via_newtonschulz(&update, h.ns_coefficients, h.ns_steps, h.eps)?;
    let adjusted_lr = adjust_lr(h.lr, h.adjust_lr, &param.size());
    let _ = param.f_mul_scalar_(1.0 - h.lr * h.weight_decay)?;
    kernels::add_(param, &update, -adjusted_lr)
}
