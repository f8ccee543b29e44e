//! CosineAnnealingWarmRestarts: cosine annealing from `base_lr` to
//! `eta_min` over `T_i` epochs, restarting with `T_i *= T_mult`. PyTorch
//! overrides `step()` for it, which never advances `_step_count` (it
//! stays 0 in its state_dict) and computes each `lr` in closed form.

use std::f64::consts::PI;

use serde_json::{Map, Value};

use super::base::Base;
use super::pymath::{add_int, cos, div, floor_mod, mul_int, Num};
use super::state::StateReader;
use crate::error::{Error, Result};
use crate::kwargs::Kwargs;
use crate::optim::ParamGroup;

/// The scheduler's own attributes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WarmRestarts {
    t_0: i64,
    t_i: i64,
    t_mult: i64,
    eta_min: Num,
    t_cur: i64,
}

impl WarmRestarts {
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>, last_epoch: i64) -> Result<Self> {
        let t_0 = kw.required_i64("T_0")?;
        if t_0 <= 0 {
            return Err(kw.error(format!("T_0: Expected positive integer T_0, but got {t_0}")));
        }
        let t_mult = kw.i64_or("T_mult", 1)?;
        if t_mult < 1 {
            return Err(kw.error(format!("T_mult: Expected integer T_mult >= 1, but got {t_mult}")));
        }
        Ok(WarmRestarts {
            t_0,
            t_i: t_0,
            t_mult,
            eta_min: kw.num_or("eta_min", Num::Float(0.0))?,
            t_cur: last_epoch,
        })
    }

    /// PyTorch's `step()` (without the deprecated `epoch` argument).
    pub(crate) fn step(&mut self, class: &str, b: &mut Base, groups: &mut [ParamGroup]) -> Result<()> {
        b.check_groups(class, groups)?;
        let (epoch, t_cur, t_i) = if b.last_epoch < 0 {
            // PyTorch takes its explicit-epoch path with epoch 0 here; with
            // T_0 > 0 (which the constructor enforces) that path resets.
            if self.t_0 <= 0 {
                return Err(Error::Usage(format!(
                    "{class}: T_0 must be positive to start the schedule, got {}",
                    self.t_0
                )));
            }
            (0, 0, self.t_0)
        } else {
            let mut t_cur = add_int(self.t_cur, 1)?;
            let mut t_i = self.t_i;
            if t_cur >= t_i {
                t_cur = floor_mod(t_cur, t_i)?;
                t_i = mul_int(t_i, self.t_mult)?;
            }
            (add_int(b.last_epoch, 1)?, t_cur, t_i)
        };
        let lrs = self.lrs(&b.base_lrs, t_cur, t_i)?;

        self.t_cur = t_cur;
        self.t_i = t_i;
        b.last_epoch = epoch;
        b.get_lr_called_within_step = false;
        for (g, &lr) in groups.iter_mut().zip(&lrs) {
            g.set_lr(lr);
        }
        b.last_lr = lrs;
        Ok(())
    }

    /// `get_lr()`: `eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2`
    /// (SequentialLR's `_update_lr(0)` calls it with `T_cur` as it is).
    pub(crate) fn get_lr(&self, b: &Base) -> Result<Vec<f64>> {
        self.lrs(&b.base_lrs, self.t_cur, self.t_i)
    }

    fn lrs(&self, base_lrs: &[f64], t_cur: i64, t_i: i64) -> Result<Vec<f64>> {
        let eta_min = self.eta_min.f();
        let c = 1.0 + cos(div(PI * t_cur as f64, t_i as f64)?)?;
        Ok(base_lrs
            .iter()
            .map(|&base| eta_min + (base - eta_min) * c / 2.0)
            .collect())
    }

    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("T_0".into(), self.t_0.into());
        m.insert("T_i".into(), self.t_i.into());
        m.insert("T_mult".into(), self.t_mult.into());
        m.insert("eta_min".into(), self.eta_min.to_json());
        m.insert("T_cur".into(), self.t_cur.into());
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        Ok(WarmRestarts {
            t_0: r.i64("T_0")?,
            t_i: r.i64("T_i")?,
            t_mult: r.i64("T_mult")?,
            eta_min: r.num("eta_min")?,
            t_cur: r.i64("T_cur")?,
        })
    }
}
