//! ReduceLROnPlateau: multiplies every `lr` by `factor` once a metric has
//! not improved for more than `patience` steps. Unlike the other
//! schedulers it does not derive from PyTorch's `LRScheduler` logic: its
//! constructor leaves the groups alone (no `initial_lr`, no initial step)
//! and its state has its own keys.

use serde_json::{Map, Value};

use super::base::group_lrs;
use super::kwargs::PerGroup;
use super::pymath::{add_int, Num};
use super::state::{f64_list, num_list, StateReader};
use crate::error::{Error, Result};
use crate::format::metadata::encode_float;
use crate::kwargs::Kwargs;
use crate::optim::ParamGroup;

/// Which way is better: `min` (a loss) or `max` (an accuracy).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Min,
    Max,
}

/// Whether `threshold` is relative to `best` or absolute.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ThresholdMode {
    Rel,
    Abs,
}

/// PyTorch's `_init_is_better`: the modes, checked, and `mode_worse`.
/// An error names the key at fault.
fn parse_modes(mode: &str, threshold_mode: &str) -> Result<(Mode, ThresholdMode), (&'static str, String)> {
    let mode = match mode {
        "min" => Mode::Min,
        "max" => Mode::Max,
        _ => {
            return Err((
                "mode",
                format!("mode {mode:?} is unknown! (expected \"min\" or \"max\")"),
            ))
        }
    };
    let threshold_mode = match threshold_mode {
        "rel" => ThresholdMode::Rel,
        "abs" => ThresholdMode::Abs,
        _ => {
            return Err((
                "threshold_mode",
                format!("threshold mode {threshold_mode:?} is unknown! (expected \"rel\" or \"abs\")"),
            ))
        }
    };
    Ok((mode, threshold_mode))
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Min => "min",
            Mode::Max => "max",
        }
    }

    fn worse(self) -> f64 {
        match self {
            Mode::Min => f64::INFINITY,
            Mode::Max => f64::NEG_INFINITY,
        }
    }
}

impl ThresholdMode {
    fn name(self) -> &'static str {
        match self {
            ThresholdMode::Rel => "rel",
            ThresholdMode::Abs => "abs",
        }
    }
}

/// Every attribute of PyTorch's ReduceLROnPlateau, in its `__dict__` order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plateau {
    factor: Num,
    /// `min_lr` when given as one number (to re-expand `min_lrs` if the
    /// group count changes), `None` when given as a list.
    default_min_lr: Option<Num>,
    min_lrs: Vec<Num>,
    patience: i64,
    cooldown: i64,
    eps: Num,
    last_epoch: i64,
    last_lr: Vec<f64>,
    mode_worse: f64,
    mode: Mode,
    threshold: Num,
    threshold_mode: ThresholdMode,
    best: f64,
    cooldown_counter: i64,
    num_bad_epochs: i64,
}

impl Plateau {
    /// PyTorch's constructor: kwargs, checks, and `_last_lr` from the groups.
    pub(crate) fn new(kw: &Kwargs<'_>, groups: &[ParamGroup]) -> Result<Self> {
        let mode = kw.str_or("mode", "min")?;
        let factor = kw.num_or("factor", Num::Float(0.1))?;
        let patience = kw.i64_or("patience", 10)?;
        let threshold = kw.num_or("threshold", Num::Float(1e-4))?;
        let threshold_mode = kw.str_or("threshold_mode", "rel")?;
        let cooldown = kw.i64_or("cooldown", 0)?;
        let min_lr = kw.per_group_or("min_lr", Some(Num::Int(0)))?;
        let eps = kw.num_or("eps", Num::Float(1e-8))?;
        kw.finish()?;

        if factor.f() >= 1.0 {
            return Err(kw.error(format!("factor: Factor should be < 1.0, got {}", factor.f())));
        }
        let (default_min_lr, min_lrs) = match min_lr {
            PerGroup::List(v) if v.len() != groups.len() => {
                return Err(kw.error(format!("min_lr: expected {} min_lrs, got {}", groups.len(), v.len())))
            }
            PerGroup::List(v) => (None, v),
            PerGroup::One(x) => (Some(x), vec![x; groups.len()]),
        };
        let last_lr = group_lrs(groups)?;
        let (mode, threshold_mode) =
            parse_modes(&mode, &threshold_mode).map_err(|(key, e)| kw.error(format!("{key}: {e}")))?;
        Ok(Plateau {
            factor,
            default_min_lr,
            min_lrs,
            patience,
            cooldown,
            eps,
            last_epoch: 0,
            last_lr,
            mode_worse: mode.worse(),
            mode,
            threshold,
            threshold_mode,
            best: mode.worse(),
            cooldown_counter: 0,
            num_bad_epochs: 0,
        })
    }

    /// `get_last_lr()`.
    pub(crate) fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    fn is_better(&self, a: f64, best: f64) -> bool {
        let threshold = self.threshold.f();
        match (self.mode, self.threshold_mode) {
            (Mode::Min, ThresholdMode::Rel) => a < best * (1.0 - threshold),
            (Mode::Min, ThresholdMode::Abs) => a < best - threshold,
            (Mode::Max, ThresholdMode::Rel) => a > best * (threshold + 1.0),
            (Mode::Max, ThresholdMode::Abs) => a > best + threshold,
        }
    }

    /// PyTorch's `step(metrics)`.
    pub(crate) fn step(&mut self, class: &str, groups: &mut [ParamGroup], current: f64) -> Result<()> {
        let epoch = add_int(self.last_epoch, 1)?;
        let (mut best, mut num_bad_epochs) = (self.best, self.num_bad_epochs);
        if self.is_better(current, best) {
            best = current;
            num_bad_epochs = 0;
        } else {
            num_bad_epochs = add_int(num_bad_epochs, 1)?;
        }
        let mut cooldown_counter = self.cooldown_counter;
        if cooldown_counter > 0 {
            cooldown_counter -= 1;
            num_bad_epochs = 0; // bad epochs in cooldown do not count
        }
        let mut lrs = group_lrs(groups)?;
        let mut min_lrs = None;
        let mut reduced: Vec<(usize, Num)> = Vec::new();
        if num_bad_epochs > self.patience {
            // _reduce_lr
            let floors = if groups.len() == self.min_lrs.len() {
                &self.min_lrs
            } else {
                let d = self.default_min_lr.ok_or_else(|| {
                    Error::Usage(format!(
                        "{class}: the optimizer has {} param groups, the scheduler was built for {} \
                         with a min_lr per group; a param group was probably added to the optimizer",
                        groups.len(),
                        self.min_lrs.len()
                    ))
                })?;
                &*min_lrs.insert(vec![d; groups.len()])
            };
            for (i, (lr, floor)) in lrs.iter_mut().zip(floors).enumerate() {
                let old_lr = *lr;
                let scaled = old_lr * self.factor.f();
                // Python's max(scaled, floor) keeps `floor`'s type when it wins.
                let new_lr = if floor.f() > scaled { *floor } else { Num::Float(scaled) };
                if old_lr - new_lr.f() > self.eps.f() {
                    *lr = new_lr.f();
                    reduced.push((i, new_lr));
                }
            }
            cooldown_counter = self.cooldown;
            num_bad_epochs = 0;
        }

        for (i, new_lr) in reduced {
            groups[i].options.insert("lr".into(), new_lr.to_json());
        }
        if let Some(m) = min_lrs {
            self.min_lrs = m;
        }
        self.last_epoch = epoch;
        self.best = best;
        self.num_bad_epochs = num_bad_epochs;
        self.cooldown_counter = cooldown_counter;
        self.last_lr = lrs;
        Ok(())
    }

    pub(crate) fn write(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("factor".into(), self.factor.to_json());
        m.insert(
            "default_min_lr".into(),
            self.default_min_lr.map_or(Value::Null, Num::to_json),
        );
        m.insert("min_lrs".into(), num_list(&self.min_lrs));
        m.insert("patience".into(), self.patience.into());
        m.insert("cooldown".into(), self.cooldown.into());
        m.insert("eps".into(), self.eps.to_json());
        m.insert("last_epoch".into(), self.last_epoch.into());
        m.insert("_last_lr".into(), f64_list(&self.last_lr));
        m.insert("mode_worse".into(), encode_float(self.mode_worse));
        m.insert("mode".into(), self.mode.name().into());
        m.insert("threshold".into(), self.threshold.to_json());
        m.insert("threshold_mode".into(), self.threshold_mode.name().into());
        m.insert("best".into(), encode_float(self.best));
        m.insert("cooldown_counter".into(), self.cooldown_counter.into());
        m.insert("num_bad_epochs".into(), self.num_bad_epochs.into());
        m
    }

    /// PyTorch's `load_state_dict`: the keys, then `_init_is_better` on the
    /// loaded modes (which checks them and recomputes `mode_worse`).
    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        let factor = r.num("factor")?;
        let default_min_lr = r.num_or_null("default_min_lr")?;
        let min_lrs = r.num_per_group("min_lrs")?;
        let patience = r.i64("patience")?;
        let cooldown = r.i64("cooldown")?;
        let eps = r.num("eps")?;
        let last_epoch = r.i64("last_epoch")?;
        let last_lr = r.f64_per_group("_last_lr")?;
        r.f64("mode_worse")?;
        let mode = r.str("mode")?;
        let threshold = r.num("threshold")?;
        let threshold_mode = r.str("threshold_mode")?;
        let (mode, threshold_mode) = parse_modes(mode, threshold_mode).map_err(|(key, e)| r.invalid(key, e))?;
        Ok(Plateau {
            factor,
            default_min_lr,
            min_lrs,
            patience,
            cooldown,
            eps,
            last_epoch,
            last_lr,
            mode_worse: mode.worse(),
            mode,
            threshold,
            threshold_mode,
            best: r.f64("best")?,
            cooldown_counter: r.i64("cooldown_counter")?,
            num_bad_epochs: r.i64("num_bad_epochs")?,
        })
    }
}
