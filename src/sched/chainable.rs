//! The "chainable" schedulers, whose `get_lr()` derives each new `lr`
//! from the group's current one: StepLR, MultiStepLR, ExponentialLR,
//! ConstantLR, LinearLR, PolynomialLR, CosineAnnealingLR. Each formula
//! is PyTorch 2.13's, operation by operation, so results are bit-identical.
//! Each also has PyTorch's `_get_closed_form_lr()`, from `base_lrs` at
//! `last_epoch`, which SequentialLR uses when it switches to a child.

use std::f64::consts::PI;

use serde_json::{Map, Value};

use super::base::{group_lrs, scaled_lrs, Base};
use super::pymath::{cos, div, floor_div, floor_mod, mul_int, pow, Num};
use super::state::StateReader;
use crate::error::Result;
use crate::kwargs::Kwargs;
use crate::optim::ParamGroup;

/// StepLR: `lr * gamma` every `step_size` epochs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepLr {
    step_size: i64,
    gamma: Num,
}

impl StepLr {
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>) -> Result<Self> {
        Ok(StepLr {
            step_size: kw.required_i64("step_size")?,
            gamma: kw.num_or("gamma", Num::Float(0.1))?,
        })
    }

    pub(crate) fn get_lr(&self, b: &Base, groups: &[ParamGroup]) -> Result<Vec<f64>> {
        if b.last_epoch == 0 || floor_mod(b.last_epoch, self.step_size)? != 0 {
            return group_lrs(groups);
        }
        scaled_lrs(groups, self.gamma.f())
    }

    /// `base_lr * gamma ** (last_epoch // step_size)`.
    pub(crate) fn closed_form_lr(&self, b: &Base) -> Result<Vec<f64>> {
        let factor = self.gamma.pow_int(floor_div(b.last_epoch, self.step_size)?)?;
        Ok(b.base_lrs.iter().map(|&base| base * factor).collect())
    }

    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("step_size".into(), self.step_size.into());
        m.insert("gamma".into(), self.gamma.to_json());
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        Ok(StepLr {
            step_size: r.i64("step_size")?,
            gamma: r.num("gamma")?,
        })
    }
}

/// MultiStepLR: `lr * gamma ** count` at each milestone (a milestone given
/// `count` times).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MultiStepLr {
    /// PyTorch's `Counter(milestones)`: (milestone, count), in first-seen order.
    milestones: Vec<(i64, i64)>,
    gamma: Num,
}

impl MultiStepLr {
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>) -> Result<Self> {
        let mut milestones: Vec<(i64, i64)> = Vec::new();
        for m in kw.required_i64_list("milestones")? {
            match milestones.iter_mut().find(|(k, _)| *k == m) {
                Some((_, count)) => *count += 1,
                None => milestones.push((m, 1)),
            }
        }
        Ok(MultiStepLr {
            milestones,
            gamma: kw.num_or("gamma", Num::Float(0.1))?,
        })
    }

    pub(crate) fn get_lr(&self, b: &Base, groups: &[ParamGroup]) -> Result<Vec<f64>> {
        match self.milestones.iter().find(|(m, _)| *m == b.last_epoch) {
            None => group_lrs(groups),
            Some(&(_, count)) => scaled_lrs(groups, self.gamma.pow_int(count)?),
        }
    }

    /// `base_lr * gamma ** bisect_right(sorted(milestones.elements()), last_epoch)`:
    /// the number of milestones (with their counts) at or before the epoch.
    pub(crate) fn closed_form_lr(&self, b: &Base) -> Result<Vec<f64>> {
        let passed = self
            .milestones
            .iter()
            .filter(|&&(m, count)| m <= b.last_epoch && count > 0)
            .try_fold(0i64, |n, &(_, count)| super::pymath::add_int(n, count))?;
        let factor = self.gamma.pow_int(passed)?;
        Ok(b.base_lrs.iter().map(|&base| base * factor).collect())
    }

    /// The Counter as JSON: an object from the milestone (a decimal string,
    /// as `json.dumps` writes int keys) to its count.
    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        let counter = self.milestones.iter().map(|(k, c)| (k.to_string(), Value::from(*c)));
        m.insert("milestones".into(), Value::Object(counter.collect()));
        m.insert("gamma".into(), self.gamma.to_json());
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        let raw = r.raw("milestones")?;
        let obj = raw.as_object().ok_or_else(|| {
            r.invalid(
                "milestones",
                format!("must be an object {{milestone: count}}, got {raw}"),
            )
        })?;
        let milestones = obj
            .iter()
            .map(|(k, v)| {
                let m = k.parse::<i64>().ok().filter(|m| m.to_string() == *k);
                match (m, v.as_i64()) {
                    (Some(m), Some(c)) => Ok((m, c)),
                    _ => Err(r.invalid(
                        "milestones",
                        format!("entry {k:?}: {v} is not an integer milestone with an integer count"),
                    )),
                }
            })
            .collect::<Result<_>>()?;
        Ok(MultiStepLr {
            milestones,
            gamma: r.num("gamma")?,
        })
    }
}

/// ExponentialLR: `lr * gamma` every epoch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExponentialLr {
    gamma: Num,
}

impl ExponentialLr {
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>) -> Result<Self> {
        Ok(ExponentialLr {
            gamma: kw.required_num("gamma")?,
        })
    }

    pub(crate) fn get_lr(&self, b: &Base, groups: &[ParamGroup]) -> Result<Vec<f64>> {
        if b.is_initial {
            return group_lrs(groups);
        }
        scaled_lrs(groups, self.gamma.f())
    }

    /// `base_lr * gamma ** last_epoch`.
    pub(crate) fn closed_form_lr(&self, b: &Base) -> Result<Vec<f64>> {
        let factor = self.gamma.pow_int(b.last_epoch)?;
        Ok(b.base_lrs.iter().map(|&base| base * factor).collect())
    }

    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("gamma".into(), self.gamma.to_json());
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        Ok(ExponentialLr { gamma: r.num("gamma")? })
    }
}

/// ConstantLR: `lr * factor` until epoch `total_iters`, then undone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConstantLr {
    factor: Num,
    total_iters: i64,
}

impl ConstantLr {
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>) -> Result<Self> {
        let factor = kw.num_or("factor", Num::Float(1.0 / 3.0))?;
        if factor.f() > 1.0 || factor.f() < 0.0 {
            return Err(kw.error(format!(
                "factor: Constant multiplicative factor expected to be between 0 and 1, got {}",
                factor.f()
            )));
        }
        Ok(ConstantLr {
            factor,
            total_iters: kw.i64_or("total_iters", 5)?,
        })
    }

    pub(crate) fn get_lr(&self, b: &Base, groups: &[ParamGroup]) -> Result<Vec<f64>> {
        if b.last_epoch == 0 {
            return scaled_lrs(groups, self.factor.f());
        }
        if b.last_epoch != self.total_iters {
            return group_lrs(groups);
        }
        scaled_lrs(groups, div(1.0, self.factor.f())?)
    }

    /// `base_lr * (factor + (last_epoch >= total_iters) * (1 - factor))`.
    pub(crate) fn closed_form_lr(&self, b: &Base) -> Result<Vec<f64>> {
        let factor = self.factor.f();
        let done = f64::from(u8::from(b.last_epoch >= self.total_iters));
        let f = factor + done * (1.0 - factor);
        Ok(b.base_lrs.iter().map(|&base| base * f).collect())
    }

    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("factor".into(), self.factor.to_json());
        m.insert("total_iters".into(), self.total_iters.into());
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        Ok(ConstantLr {
            factor: r.num("factor")?,
            total_iters: r.i64("total_iters")?,
        })
    }
}

/// LinearLR: the factor on `lr` moves linearly from `start_factor` to
/// `end_factor` over `total_iters` epochs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LinearLr {
    start_factor: Num,
    end_factor: Num,
    total_iters: i64,
}

impl LinearLr {
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>) -> Result<Self> {
        let start_factor = kw.num_or("start_factor", Num::Float(1.0 / 3.0))?;
        if start_factor.f() > 1.0 || start_factor.f() <= 0.0 {
            return Err(kw.error(format!(
                "start_factor: Starting multiplicative factor expected to be greater than 0 and less or equal to 1, got {}",
                start_factor.f()
            )));
        }
        let end_factor = kw.num_or("end_factor", Num::Float(1.0))?;
        if end_factor.f() > 1.0 || end_factor.f() < 0.0 {
            return Err(kw.error(format!(
                "end_factor: Ending multiplicative factor expected to be between 0 and 1, got {}",
                end_factor.f()
            )));
        }
        Ok(LinearLr {
            start_factor,
            end_factor,
            total_iters: kw.i64_or("total_iters", 5)?,
        })
    }

    pub(crate) fn get_lr(&self, b: &Base, groups: &[ParamGroup]) -> Result<Vec<f64>> {
        let (start, end) = (self.start_factor.f(), self.end_factor.f());
        if b.last_epoch == 0 {
            return scaled_lrs(groups, start);
        }
        if b.is_initial || b.last_epoch > self.total_iters {
            return group_lrs(groups);
        }
        let denominator = self.total_iters as f64 * start + (b.last_epoch - 1) as f64 * (end - start);
        scaled_lrs(groups, 1.0 + div(end - start, denominator)?)
    }

    /// `base_lr * (start_factor + (end_factor - start_factor) *
    /// min(total_iters, last_epoch) / total_iters)`.
    pub(crate) fn closed_form_lr(&self, b: &Base) -> Result<Vec<f64>> {
        let (start, end) = (self.start_factor.f(), self.end_factor.f());
        let done = self.total_iters.min(b.last_epoch) as f64;
        let f = start + div((end - start) * done, self.total_iters as f64)?;
        Ok(b.base_lrs.iter().map(|&base| base * f).collect())
    }

    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("start_factor".into(), self.start_factor.to_json());
        m.insert("end_factor".into(), self.end_factor.to_json());
        m.insert("total_iters".into(), self.total_iters.into());
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        Ok(LinearLr {
            start_factor: r.num("start_factor")?,
            end_factor: r.num("end_factor")?,
            total_iters: r.i64("total_iters")?,
        })
    }
}

/// PolynomialLR: `lr` decays as `(1 - epoch / total_iters) ** power`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PolynomialLr {
    total_iters: i64,
    power: Num,
}

impl PolynomialLr {
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>) -> Result<Self> {
        Ok(PolynomialLr {
            total_iters: kw.i64_or("total_iters", 5)?,
            power: kw.num_or("power", Num::Float(1.0))?,
        })
    }

    pub(crate) fn get_lr(&self, b: &Base, groups: &[ParamGroup]) -> Result<Vec<f64>> {
        if b.is_initial || b.last_epoch > self.total_iters {
            return group_lrs(groups);
        }
        let total = self.total_iters as f64;
        let decay_factor = pow(
            div(
                1.0 - div(b.last_epoch as f64, total)?,
                1.0 - div((b.last_epoch - 1) as f64, total)?,
            )?,
            self.power.f(),
        )?;
        scaled_lrs(groups, decay_factor)
    }

    /// `base_lr * (1.0 - min(total_iters, last_epoch) / total_iters) ** power`.
    pub(crate) fn closed_form_lr(&self, b: &Base) -> Result<Vec<f64>> {
        let done = self.total_iters.min(b.last_epoch) as f64;
        let f = pow(1.0 - div(done, self.total_iters as f64)?, self.power.f())?;
        Ok(b.base_lrs.iter().map(|&base| base * f).collect())
    }

    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("total_iters".into(), self.total_iters.into());
        m.insert("power".into(), self.power.to_json());
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        Ok(PolynomialLr {
            total_iters: r.i64("total_iters")?,
            power: r.num("power")?,
        })
    }
}

/// CosineAnnealingLR: the recursive form of
/// `eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CosineAnnealingLr {
    t_max: i64,
    eta_min: Num,
}

impl CosineAnnealingLr {
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>) -> Result<Self> {
        Ok(CosineAnnealingLr {
            t_max: kw.required_i64("T_max")?,
            eta_min: kw.num_or("eta_min", Num::Float(0.0))?,
        })
    }

    pub(crate) fn get_lr(&self, b: &Base, groups: &[ParamGroup]) -> Result<Vec<f64>> {
        let eta_min = self.eta_min.f();
        let t_max = self.t_max as f64;
        let e = b.last_epoch;
        if b.is_initial {
            return group_lrs(groups);
        }
        if b.step_count == 1 && e > 0 {
            let c = 1.0 + cos(div(e as f64 * PI, t_max)?)?;
            return Ok(b
                .base_lrs
                .iter()
                .map(|&base| eta_min + (base - eta_min) * c / 2.0)
                .collect());
        }
        if floor_mod(e - 1 - self.t_max, mul_int(2, self.t_max)?)? == 0 {
            let c = 1.0 - cos(div(PI, t_max)?)?;
            return groups
                .iter()
                .zip(&b.base_lrs)
                .map(|(g, &base)| Ok(g.lr()? + (base - eta_min) * c / 2.0))
                .collect();
        }
        let ratio = div(
            1.0 + cos(div(PI * e as f64, t_max)?)?,
            1.0 + cos(div(PI * (e - 1) as f64, t_max)?)?,
        )?;
        groups
            .iter()
            .map(|g| Ok(ratio * (g.lr()? - eta_min) + eta_min))
            .collect()
    }

    /// `eta_min + (base_lr - eta_min) * (1 + cos(pi * last_epoch / T_max)) / 2`.
    pub(crate) fn closed_form_lr(&self, b: &Base) -> Result<Vec<f64>> {
        let eta_min = self.eta_min.f();
        let c = 1.0 + cos(div(PI * b.last_epoch as f64, self.t_max as f64)?)?;
        Ok(b.base_lrs
            .iter()
            .map(|&base| eta_min + (base - eta_min) * c / 2.0)
            .collect())
    }

    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("T_max".into(), self.t_max.into());
        m.insert("eta_min".into(), self.eta_min.to_json());
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        Ok(CosineAnnealingLr {
            t_max: r.i64("T_max")?,
            eta_min: r.num("eta_min")?,
        })
    }
}
