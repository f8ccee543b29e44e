//! Per-parameter optimizer state: the types of PyTorch's `state_dict()`
//! layout, the helpers the steps use to create and advance it, and the
//! check and conversion of a loaded state tensor.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use super::algorithm::Algorithm;
use super::ParamGroup;
use crate::error::{Error, Result};

/// The per-parameter state: PyTorch's `optimizer.state[p]`.
pub type ParamState = BTreeMap<String, Tensor>;

/// An optimizer's complete state in PyTorch's `state_dict()` layout, plus
/// the name of each parameter: what a checkpoint stores.
#[derive(Debug)]
pub struct OptimizerState {
    /// PyTorch's `param_groups`, `params` holding parameter indices.
    pub param_groups: Vec<ParamGroup>,
    /// The model state-dict name of each parameter index.
    pub param_names: Vec<String>,
    /// Per-parameter state by parameter index.
    pub state: BTreeMap<usize, ParamState>,
    /// Non-tensor per-parameter state values by parameter index (the JSON
    /// object of FORMAT.md 5; only LBFGS has any: its counters, `t`,
    /// `H_diag` while a number, `prev_loss`, and null for a None). An
    /// index here has state even when it has no tensor.
    pub values: BTreeMap<usize, serde_json::Map<String, serde_json::Value>>,
}

/// A checked state, ready to replace an optimizer's.
#[derive(Debug)]
pub(crate) struct PreparedState {
    pub(crate) groups: Vec<ParamGroup>,
    pub(super) state: BTreeMap<usize, ParamState>,
    pub(super) lbfgs: Option<super::lbfgs::LbfgsState>,
}

/// A saved state tensor, checked against its parameter and converted as
/// PyTorch's `load_state_dict` does.
pub(super) fn convert_state(alg: Algorithm, name: &str, param: &Tensor, key: &str, t: Tensor) -> Result<Tensor> {
    let mismatch = |reason: String| Error::StateMismatch {
        tensor: name.to_owned(),
        reason,
    };
    if !alg.state_keys().contains(&key) {
        return Err(mismatch(format!("{} has no state {key:?}", alg.name())));
    }
    if key == "step" {
        if t.numel() != 1 {
            return Err(mismatch(format!(
                "state \"step\" must have one element, has shape {:?}",
                t.size()
            )));
        }
        return Ok(t
            .f_reshape(&[] as &[i64])?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?);
    }
    if alg.scalar_state_keys().contains(&key) {
        // PyTorch's load_state_dict casts every state tensor but `step`
        // to a floating parameter's dtype and device, rank-0 ones included.
        if t.numel() != 1 {
            return Err(mismatch(format!(
                "state {key:?} must have one element, has shape {:?}",
                t.size()
            )));
        }
        let t = t.f_reshape(&[] as &[i64])?;
        let kind = if param.is_floating_point() {
            param.f_kind()?
        } else {
            t.f_kind()?
        };
        return Ok(t.f_to_device(param.device())?.f_to_kind(kind)?);
    }
    let expected = alg.state_shape(key, &param.size()).map_err(mismatch)?;
    if t.size() != expected {
        return Err(mismatch(format!(
            "optimizer state {key:?} has shape {:?}, expected {expected:?} (the parameter's is {:?})",
            t.size(),
            param.size()
        )));
    }
    let kind = if param.is_floating_point() {
        param.f_kind()?
    } else {
        t.f_kind()?
    };
    Ok(t.f_to_device(param.device())?.f_to_kind(kind)?.f_contiguous()?)
}

/// A `step` counter: a rank-0 float32 CPU tensor, as PyTorch keeps it.
pub(super) fn step_tensor(value: f64) -> Result<Tensor> {
    scalar_tensor(value, Device::Cpu)
}

/// A rank-0 float32 tensor on `device` (PyTorch's `_get_scalar_dtype()`
/// state: NAdam's `mu_product`, ASGD's `eta` and `mu`).
pub(super) fn scalar_tensor(value: f64, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(&[value as f32])?
        .f_reshape(&[] as &[i64])?
        .f_to_device(device)?)
}

/// The state tensor `key`, created with `init` if absent.
pub(super) fn state_or<'s>(
    state: &'s mut ParamState,
    key: &str,
    init: impl FnOnce() -> Result<Tensor>,
) -> Result<&'s mut Tensor> {
    if !state.contains_key(key) {
        state.insert(key.to_owned(), init()?);
    }
    Ok(state.get_mut(key).expect("inserted above"))
}

/// `step_t += 1`, then its value as Python's `step_t.item()` gives it.
pub(super) fn increment_step(state: &mut ParamState) -> Result<f64> {
    let step = state_or(state, "step", || step_tensor(0.0))?;
    let _ = step.f_add_scalar_(1)?;
    Ok(step.f_double_value(&[])?)
}
