//! A group's hyperparameters: the table entry each algorithm's file fills
//! (`Hp`, `hp!`), the check of one value, kwargs parsed into a
//! group's options (the `param_groups` kwarg included), and the checks of
//! a group loaded from a file.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::algorithm::Algorithm;
use super::{Class, ParamGroup};
use crate::error::{Error, Result};
use crate::kwargs::Kwargs;

/// How a hyperparameter is checked.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ty {
    /// A float in `[min, max)` (`max` None: unbounded).
    Float {
        min: f64,
        max: Option<f64>,
    },
    Bool,
    /// `true`, `false` or `null` (foreach, fused).
    OptBool,
    /// A float in `[min, max]`, both ends included (Adadelta's `rho`).
    FloatClosed {
        min: f64,
        max: f64,
    },
    /// Two floats in `[0, 1)` (betas).
    Betas,
    /// Two floats `a, b` with `0 < a < 1 < b` (Rprop's `etas`).
    Etas,
    /// Two floats, unchecked (Rprop's `step_sizes`).
    Pair,
    /// A float at most `max`, `max` included (Adafactor's `beta2_decay`).
    FloatAtMost {
        max: f64,
    },
    /// Adafactor's `eps`: `[eps1, eps2]`, eps1 null (the dtype's machine
    /// epsilon) or at least 0, eps2 at least 0.
    AdafactorEps,
    /// Three floats, unchecked (Muon's `ns_coefficients`).
    Triple,
    /// An integer below `below` (Muon's `ns_steps`, which PyTorch refuses
    /// from 100 on when it steps; here at construction).
    IntBelow {
        below: i64,
    },
    /// null or one of these strings (Muon's `adjust_lr_fn`).
    OptChoice(&'static [&'static str]),
}

pub(super) const NON_NEG: Ty = Ty::Float { min: 0.0, max: None };
/// Any float: a hyperparameter PyTorch's constructor does not check.
pub(super) const ANY: Ty = Ty::Float {
    min: f64::NEG_INFINITY,
    max: None,
};

/// One hyperparameter: PyTorch's key, check and default (as PyTorch
/// writes it: `0` for an int default, `0.0` for a float one).
pub(super) struct Hp {
    pub(super) key: &'static str,
    pub(super) ty: Ty,
    pub(super) default: fn() -> Value,
}

/// `hp!("key", ty, json default)`: one entry of a hyperparameter table.
macro_rules! hp {
    ($key:literal, $ty:expr, $default:tt) => {
        $crate::optim::options::Hp {
            key: $key,
            ty: $ty,
            default: || serde_json::json!($default),
        }
    };
}
pub(super) use hp;

/// A list of two numbers (`betas`, `etas`, `step_sizes`).
fn pair(key: &str, v: &Value) -> std::result::Result<(f64, f64), String> {
    match v {
        Value::Array(a) if a.len() == 2 => {
            let number = |i: usize| {
                a[i].as_f64()
                    .ok_or_else(|| format!("{key}[{i}] must be a number, got {}", a[i]))
            };
            Ok((number(0)?, number(1)?))
        }
        _ => Err(format!("must be a list of two numbers, got {v}")),
    }
}

/// Checks one hyperparameter value; the reason names what is wrong.
fn check_value(hp: &Hp, v: &Value) -> std::result::Result<(), String> {
    let in_range = |x: f64, min: f64, max: Option<f64>| {
        if x.is_nan() || x < min || max.is_some_and(|m| x >= m) {
            let upper = max.map_or(String::new(), |m| format!(" and below {m}"));
            Err(format!("must be at least {min}{upper}, got {x}"))
        } else {
            Ok(())
        }
    };
    match (hp.ty, v) {
        (Ty::Float { min, max }, Value::Number(n)) => in_range(n.as_f64().unwrap_or(f64::NAN), min, max),
        (Ty::Float { .. }, _) => Err(format!("must be a number, got {v}")),
        (Ty::Bool, Value::Bool(_)) | (Ty::OptBool, Value::Bool(_) | Value::Null) => Ok(()),
        (Ty::Bool, _) => Err(format!("must be a boolean, got {v}")),
        (Ty::OptBool, _) => Err(format!("must be a boolean or null, got {v}")),
        (Ty::FloatClosed { min, max }, Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if (min..=max).contains(&x) {
                Ok(())
            } else {
                Err(format!("must be between {min} and {max}, got {x}"))
            }
        }
        (Ty::FloatClosed { .. }, _) => Err(format!("must be a number, got {v}")),
        (Ty::Betas, _) => {
            let (b0, b1) = pair("betas", v)?;
            in_range(b0, 0.0, Some(1.0)).map_err(|e| format!("betas[0] {e}"))?;
            in_range(b1, 0.0, Some(1.0)).map_err(|e| format!("betas[1] {e}"))
        }
        (Ty::Etas, _) => match pair("etas", v)? {
            (minus, plus) if 0.0 < minus && minus < 1.0 && 1.0 < plus => Ok(()),
            (minus, plus) => Err(format!(
                "must be two numbers a, b with 0 < a < 1 < b, got {minus}, {plus}"
            )),
        },
        (Ty::Pair, _) => pair(hp.key, v).map(|_| ()),
        (Ty::FloatAtMost { max }, Value::Number(n)) => match n.as_f64() {
            Some(x) if x <= max => Ok(()),
            _ => Err(format!("must be at most {max}, got {n}")),
        },
        (Ty::FloatAtMost { .. }, _) => Err(format!("must be a number, got {v}")),
        (Ty::AdafactorEps, Value::Array(a)) if a.len() == 2 => {
            if !a[0].is_null() {
                let eps1 = a[0]
                    .as_f64()
                    .ok_or_else(|| format!("eps[0] must be null or a number, got {}", a[0]))?;
                in_range(eps1, 0.0, None).map_err(|e| format!("eps[0] (epsilon1) {e}"))?;
            }
            let eps2 = a[1]
                .as_f64()
                .ok_or_else(|| format!("eps[1] must be a number, got {}", a[1]))?;
            in_range(eps2, 0.0, None).map_err(|e| format!("eps[1] (epsilon2) {e}"))
        }
        (Ty::AdafactorEps, _) => Err(format!("must be a list [eps1 or null, eps2], got {v}")),
        (Ty::Triple, Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => Ok(()),
        (Ty::Triple, _) => Err(format!("must be a list of three numbers, got {v}")),
        (Ty::IntBelow { below }, Value::Number(n)) if n.as_i64().is_some_and(|i| i < below) => Ok(()),
        (Ty::IntBelow { below }, _) => Err(format!("must be an integer below {below}, got {v}")),
        (Ty::OptChoice(_), Value::Null) => Ok(()),
        (Ty::OptChoice(choices), Value::String(c)) if choices.contains(&c.as_str()) => Ok(()),
        (Ty::OptChoice(choices), _) => Err(format!("must be null or one of {choices:?}, got {v}")),
    }
}

/// The hyperparameters of a group: `given` overrides `base` (the
/// defaults, or the optimizer-wide values for a group of `param_groups`).
/// Every key is checked; a kwarg nobody asked for is an error.
pub(super) fn parse_options(alg: Algorithm, kw: &Kwargs<'_>, base: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut options = Map::new();
    for hp in alg.hyperparameters() {
        let value = if alg.fixed(hp.key) {
            alg.default(hp)
        } else {
            match kw.take(hp.key) {
                Some(v) => v.clone(),
                None => base.get(hp.key).cloned().unwrap_or_else(|| alg.default(hp)),
            }
        };
        check_value(hp, &value).map_err(|reason| kw.error(format!("kwarg {:?} {reason}", hp.key)))?;
        options.insert(hp.key.into(), value);
    }
    alg.check_group(&ParamGroup::new(Vec::new(), options.clone()))
        .map_err(|e| kw.error(e.to_string()))?;
    Ok(options)
}

/// A group's hyperparameters from a file or `load_state_dict`: every key
/// this algorithm uses must be present and valid; other keys (a
/// scheduler's `initial_lr`, ...) are kept as they are.
pub(super) fn check_loaded_group(alg: Algorithm, group: &ParamGroup, index: usize) -> Result<()> {
    for hp in alg.hyperparameters() {
        let v = group.get(hp.key).ok_or_else(|| Error::InvalidState {
            what: format!("param_groups[{index}].{}", hp.key),
            reason: "missing".into(),
        })?;
        check_value(hp, v).map_err(|reason| Error::InvalidState {
            what: format!("param_groups[{index}].{}", hp.key),
            reason,
        })?;
    }
    alg.check_group(group).map_err(|e| Error::InvalidState {
        what: format!("param_groups[{index}]"),
        reason: e.to_string(),
    })
}

/// Builds the groups of the `param_groups` kwarg.
pub(super) fn build_groups(
    alg: &Class,
    class: &str,
    spec: &Value,
    base: &Map<String, Value>,
    index: &HashMap<&str, usize>,
    kw: &Kwargs<'_>,
) -> Result<Vec<ParamGroup>> {
    let list = spec
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| kw.error("kwarg \"param_groups\" must be a non-empty list of objects"))?;
    let mut seen = vec![false; index.len()];
    let mut groups = Vec::new();
    for (g, item) in list.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| kw.error(format!("param_groups[{g}] must be an object")))?;
        let mut overrides = obj.clone();
        let names = overrides
            .remove("params")
            .ok_or_else(|| kw.error(format!("param_groups[{g}] lacks \"params\"")))?;
        let names = names
            .as_array()
            .ok_or_else(|| kw.error(format!("param_groups[{g}].params must be a list of parameter names")))?;
        let mut params = Vec::new();
        for n in names {
            let n = n
                .as_str()
                .ok_or_else(|| kw.error(format!("param_groups[{g}].params: {n} is not a parameter name")))?;
            let &i = index
                .get(n)
                .ok_or_else(|| kw.error(format!("param_groups[{g}] names {n:?}, which is not a parameter")))?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(kw.error(format!("parameter {n:?} is in more than one group")));
            }
            params.push(i);
        }
        let label = format!("{class} param_groups[{g}]");
        let group_kw = Kwargs::new(&label, &overrides, false);
        let options = alg.parse_options(&group_kw, base)?;
        group_kw.finish()?;
        groups.push(ParamGroup::new(params, options));
    }
    if let Some(missing) = index.iter().find(|(_, &i)| !seen[i]).map(|(n, _)| *n) {
        return Err(kw.error(format!("parameter {missing:?} is in no group of param_groups")));
    }
    Ok(groups)
}
