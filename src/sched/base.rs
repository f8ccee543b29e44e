//! What PyTorch's `LRScheduler` base class holds and does for every
//! scheduler but ReduceLROnPlateau: `initial_lr`/`base_lrs`, the epoch and
//! step counters, the initial step made by the constructor, and
//! `step()` = `get_lr()` then write each group's `lr`.

use serde_json::{Map, Value};

use super::one_cycle::set_beta1_f64;
use super::pymath::add_int;
use super::state::{f64_list, StateReader};
use crate::error::{Error, Result};
use crate::kwargs::Kwargs;
use crate::optim::ParamGroup;

/// The base class's attributes, as its `state_dict()` lists them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Base {
    /// `base_lrs`: each group's `initial_lr` at construction.
    pub base_lrs: Vec<f64>,
    /// `last_epoch`: steps taken, -1 before the initial step.
    pub last_epoch: i64,
    /// `_step_count`: calls of the base `step()`, the initial one included.
    pub step_count: i64,
    /// `_is_initial`: true only within the constructor's initial step.
    pub is_initial: bool,
    /// `_get_lr_called_within_step`: true only within `step()`.
    pub get_lr_called_within_step: bool,
    /// `_last_lr`: each group's `lr` after the last step.
    pub last_lr: Vec<f64>,
}

/// What one `get_lr()` computed: every group's new `lr` and, for
/// OneCycleLR, its new momentum (`momentum`, or `betas[0]`).
pub(crate) struct Update {
    pub lrs: Vec<f64>,
    pub momentum: Option<Momentum>,
}

/// New momentum values and where they go.
pub(crate) struct Momentum {
    pub beta1: bool,
    pub values: Vec<f64>,
}

impl Update {
    /// New learning rates only.
    pub(crate) fn lrs(lrs: Vec<f64>) -> Self {
        Update { lrs, momentum: None }
    }

    /// Writes the values into the groups. Infallible: whatever could fail
    /// (a group without `betas`) was found while computing them.
    pub(crate) fn apply(&self, groups: &mut [ParamGroup]) {
        for (g, &lr) in groups.iter_mut().zip(&self.lrs) {
            g.set_lr(lr);
        }
        if let Some(m) = &self.momentum {
            for (g, &v) in groups.iter_mut().zip(&m.values) {
                if m.beta1 {
                    set_beta1_f64(g, v);
                } else {
                    g.set_f64("momentum", v);
                }
            }
        }
    }
}

/// Every group's current `lr` (`_param_groups_val_list(optimizer, "lr")`).
pub(crate) fn group_lrs(groups: &[ParamGroup]) -> Result<Vec<f64>> {
    groups.iter().map(ParamGroup::lr).collect()
}

/// `lr * factor` for every group.
pub(crate) fn scaled_lrs(groups: &[ParamGroup], factor: f64) -> Result<Vec<f64>> {
    groups.iter().map(|g| Ok(g.lr()? * factor)).collect()
}

impl Base {
    /// `LRScheduler.__init__` up to the initial step: sets each group's
    /// `initial_lr` to its `lr` unless present (`last_epoch == -1`), or
    /// requires it (any other `last_epoch`, i.e. resuming).
    pub(crate) fn init(kw: &Kwargs<'_>, groups: &mut [ParamGroup], last_epoch: i64) -> Result<Base> {
        if last_epoch == -1 {
            // PyTorch reads `lr` even where `initial_lr` is already set
            // (by OneCycleLR): `group.setdefault("initial_lr", group["lr"])`.
            for g in groups.iter() {
                g.lr()?;
            }
            for g in groups.iter_mut() {
                if !g.options.contains_key("initial_lr") {
                    let lr = g.options["lr"].clone();
                    g.options.insert("initial_lr".into(), lr);
                }
            }
        } else if let Some(i) = groups.iter().position(|g| !g.options.contains_key("initial_lr")) {
            return Err(kw.error(format!(
                "param 'initial_lr' is not specified in param_groups[{i}] when resuming with \
                 last_epoch={last_epoch} (any last_epoch other than -1 needs it in every group)"
            )));
        }
        Ok(Base {
            base_lrs: groups.iter().map(|g| g.f64("initial_lr")).collect::<Result<_>>()?,
            last_epoch,
            step_count: 0,
            is_initial: false,
            get_lr_called_within_step: false,
            last_lr: Vec::new(),
        })
    }

    /// The state after the counters of `step()` advanced, as `get_lr()`
    /// sees it.
    pub(crate) fn advanced(&self) -> Result<Base> {
        let mut next = self.clone();
        next.step_count = add_int(self.step_count, 1)?;
        next.last_epoch = add_int(self.last_epoch, 1)?;
        next.get_lr_called_within_step = true;
        Ok(next)
    }

    /// Python's `zip(..., strict=True)` of groups and `base_lrs`.
    pub(crate) fn check_groups(&self, class: &str, groups: &[ParamGroup]) -> Result<()> {
        if groups.len() != self.base_lrs.len() {
            return Err(Error::Usage(format!(
                "{class} was built for {} param groups, the optimizer has {}",
                self.base_lrs.len(),
                groups.len()
            )));
        }
        Ok(())
    }

    /// Appends the base class's keys, in PyTorch's order.
    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("base_lrs".into(), f64_list(&self.base_lrs));
        m.insert("last_epoch".into(), self.last_epoch.into());
        m.insert("_step_count".into(), self.step_count.into());
        m.insert("_is_initial".into(), self.is_initial.into());
        m.insert(
            "_get_lr_called_within_step".into(),
            self.get_lr_called_within_step.into(),
        );
        m.insert("_last_lr".into(), f64_list(&self.last_lr));
    }

    /// Reads the base class's keys.
    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Base> {
        Ok(Base {
            base_lrs: r.f64_per_group("base_lrs")?,
            last_epoch: r.i64("last_epoch")?,
            step_count: r.i64("_step_count")?,
            is_initial: r.bool_or_false("_is_initial")?,
            get_lr_called_within_step: r.bool_or_false("_get_lr_called_within_step")?,
            last_lr: r.f64_per_group("_last_lr")?,
        })
    }
}
