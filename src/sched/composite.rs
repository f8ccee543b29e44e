//! The composite schedulers, SequentialLR and ChainedScheduler: child
//! schedulers (given as `spec` tags, FORMAT.md 11.2) built in order on the
//! same param groups, as the Python
//! `SequentialLR(opt, [LinearLR(opt, ...), CosineAnnealingLR(opt, ...)], milestones=[5])`
//! builds them, then driven as PyTorch 2.13 drives them:
//!
//! - SequentialLR's constructor resets every `lr` to `initial_lr`, undoes
//!   the initial step of every (leaf) child (`last_epoch -= 1`), and runs
//!   the initial step of the child due at epoch 0 again; at a milestone it
//!   switches to the next child with `_update_lr(0)`, the closed form where
//!   the child has one;
//! - ChainedScheduler steps every child in turn.
//!
//! Their `state_dict()` is PyTorch's: the composite's own attributes, then
//! `_schedulers`, each child's `state_dict()` in PyTorch's layout.

use serde_json::{Map, Value};

use super::base::group_lrs;
use super::pymath::add_int;
use super::state::{f64_list, StateReader};
use super::{Scheduler, CHAINED_SCHEDULER, REDUCE_LR_ON_PLATEAU};
use crate::error::{Error, Result};
use crate::kwargs::Kwargs;
use crate::optim::ParamGroup;

/// SequentialLR's or ChainedScheduler's state.
#[derive(Debug, Clone)]
pub(crate) struct Composite {
    kind: Kind,
    children: Vec<Scheduler>,
    /// `_last_lr`.
    last_lr: Vec<f64>,
    /// `_step_count` and `_is_initial`, which PyTorch's `_initial_step`
    /// adds to a composite's attributes when a SequentialLR runs it as its
    /// first child.
    step_count: Option<i64>,
    is_initial: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// `_milestones` and `last_epoch`.
    Sequential {
        milestones: Vec<i64>,
        last_epoch: i64,
    },
    Chained,
}

impl PartialEq for Composite {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.last_lr == other.last_lr
            && self.step_count == other.step_count
            && self.is_initial == other.is_initial
            && self.children.len() == other.children.len()
            && self
                .children
                .iter()
                .zip(&other.children)
                .all(|(a, b)| a.class == b.class && a.state == b.state)
    }
}

/// Python's `bisect.bisect_right` (which does not check that `a` is sorted).
fn bisect_right(a: &[i64], x: i64) -> usize {
    let (mut lo, mut hi) = (0, a.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if x < a[mid] {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

impl Composite {
    /// PyTorch's constructor of `class` (SequentialLR or ChainedScheduler),
    /// with the children built first, in order, on `groups` (a scratch copy
    /// the caller commits on success).
    pub(crate) fn new(class: &'static str, kw: &Kwargs<'_>, groups: &mut [ParamGroup]) -> Result<Self> {
        let chained = class == CHAINED_SCHEDULER;
        if chained && kw.as_map().contains_key("optimizer") {
            return Err(kw.error(
                "kwarg \"optimizer\" is not accepted: the optimizer is the container's, and files do not carry it",
            ));
        }
        let specs = kw.required_spec_list("schedulers")?;
        let (milestones, last_epoch) = match chained {
            true => (Vec::new(), -1),
            false => (kw.required_i64_list("milestones")?, kw.i64_or("last_epoch", -1)?),
        };
        kw.finish()?;

        // The children, as the caller's Python builds them before the
        // composite sees them.
        let mut children = Vec::with_capacity(specs.len());
        for (i, (child_class, child_kwargs)) in specs.iter().enumerate() {
            let child = Scheduler::new(child_class, child_kwargs, groups).map_err(|e| match e {
                Error::InvalidKwargs { class: c, reason } => kw.error(format!("schedulers[{i}] ({c}): {reason}")),
                e => e,
            })?;
            children.push(child);
        }

        // PyTorch's checks, in its order.
        if children.is_empty() {
            let what = if chained { " to be chained" } else { "" };
            return Err(kw.error(format!(
                "schedulers: {} expects at least one scheduler{what}, but got no scheduler",
                short(class)
            )));
        }
        if let Some(i) = children.iter().position(|c| c.class == REDUCE_LR_ON_PLATEAU) {
            return Err(kw.error(format!(
                "schedulers: {} does not support `ReduceLROnPlateau` scheduler as it requires additional \
                 kwargs to be specified when calling `step`, but got one at index {i} in the given schedulers sequence",
                short(class)
            )));
        }
        if chained {
            return Ok(Composite {
                kind: Kind::Chained,
                children,
                last_lr: group_lrs(groups)?,
                step_count: None,
                is_initial: None,
            });
        }
        if milestones.len() != children.len() - 1 {
            return Err(kw.error(format!(
                "milestones: Sequential Schedulers expects number of schedulers provided to be one more than \
                 the number of milestone points, but got number of schedulers {} and the number of milestones \
                 to be equal to {}",
                children.len(),
                milestones.len()
            )));
        }
        let last_epoch = add_int(last_epoch, 1)?;

        // Reset learning rates back to initial values.
        for (i, g) in groups.iter_mut().enumerate() {
            let initial = g.get("initial_lr").cloned().ok_or_else(|| Error::InvalidState {
                what: format!("param_groups[{i}] key \"initial_lr\""),
                reason: "missing".into(),
            })?;
            g.options.insert("lr".into(), initial);
        }
        // "Undo" the step performed by the children's constructors, then
        // the initial step of the child due at epoch 0.
        for child in &mut children {
            child.undo()?;
        }
        let idx = bisect_right(&milestones, 0);
        children[idx].initial_step(groups)?;
        let last_lr = children[idx].last_lr().to_vec();
        Ok(Composite {
            kind: Kind::Sequential { milestones, last_epoch },
            children,
            last_lr,
            step_count: None,
            is_initial: None,
        })
    }

    pub(crate) fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    /// PyTorch's `recursive_undo` below this composite: every leaf's
    /// `last_epoch` goes back by one.
    pub(crate) fn undo(&mut self) -> Result<()> {
        self.children.iter_mut().try_for_each(Scheduler::undo)
    }

    /// PyTorch's `_initial_step()` on the composite (a SequentialLR's first
    /// child): `_step_count = 0`, then `step()` with `_is_initial` set.
    pub(crate) fn initial_step(&mut self, groups: &mut [ParamGroup]) -> Result<()> {
        self.step_count = Some(0);
        self.is_initial = Some(true);
        self.step(groups)?;
        self.is_initial = Some(false);
        Ok(())
    }

    /// PyTorch's `step()`; the caller makes it all or nothing.
    pub(crate) fn step(&mut self, groups: &mut [ParamGroup]) -> Result<()> {
        match &mut self.kind {
            Kind::Chained => {
                for child in &mut self.children {
                    child.step_in_place(groups)?;
                }
                self.last_lr = group_lrs(groups)?;
            }
            Kind::Sequential { milestones, last_epoch } => {
                *last_epoch = add_int(*last_epoch, 1)?;
                let idx = bisect_right(milestones, *last_epoch);
                let child = &mut self.children[idx];
                if idx > 0 && milestones[idx - 1] == *last_epoch {
                    child.update_lr_at(groups, 0)?;
                } else {
                    child.step_in_place(groups)?;
                }
                self.last_lr = child.last_lr().to_vec();
            }
        }
        Ok(())
    }

    /// `state_dict()`: the attributes in PyTorch's order, then `_schedulers`.
    pub(crate) fn write(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Kind::Sequential { milestones, last_epoch } = &self.kind {
            m.insert("_milestones".into(), milestones.clone().into());
            m.insert("last_epoch".into(), (*last_epoch).into());
        }
        m.insert("_last_lr".into(), f64_list(&self.last_lr));
        if let Some(n) = self.step_count {
            m.insert("_step_count".into(), n.into());
        }
        if let Some(b) = self.is_initial {
            m.insert("_is_initial".into(), b.into());
        }
        let children = self.children.iter().map(|c| Value::Object(c.state_dict()));
        m.insert("_schedulers".into(), Value::Array(children.collect()));
        m
    }

    /// Reads a state of the same class and children as `self`; each child
    /// reads its entry of `_schedulers` as it reads its own state.
    pub(crate) fn read_like(&self, r: &mut StateReader<'_>, groups: &[ParamGroup]) -> Result<Composite> {
        let kind = match &self.kind {
            Kind::Chained => Kind::Chained,
            Kind::Sequential { .. } => {
                let raw = r.raw("_milestones")?;
                let milestones = raw
                    .as_array()
                    .and_then(|items| items.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| r.invalid("_milestones", format!("must be a list of integers, got {raw}")))?;
                if milestones.len() + 1 != self.children.len() {
                    return Err(r.invalid(
                        "_milestones",
                        format!(
                            "has {} milestones, the scheduler has {} schedulers (one more than milestones)",
                            milestones.len(),
                            self.children.len()
                        ),
                    ));
                }
                Kind::Sequential {
                    milestones,
                    last_epoch: r.i64("last_epoch")?,
                }
            }
        };
        let last_lr = r.f64_per_group("_last_lr")?;
        let step_count = r.i64_opt("_step_count")?;
        let is_initial = r.bool_opt("_is_initial")?;
        let raw = r.raw("_schedulers")?;
        let states = raw
            .as_array()
            .ok_or_else(|| r.invalid("_schedulers", format!("must be a list of states, got {raw}")))?;
        if states.len() != self.children.len() {
            return Err(r.invalid(
                "_schedulers",
                format!(
                    "has {} states, the scheduler has {} schedulers",
                    states.len(),
                    self.children.len()
                ),
            ));
        }
        let mut children = self.children.clone();
        for (i, (child, state)) in children.iter_mut().zip(states).enumerate() {
            let state = state
                .as_object()
                .ok_or_else(|| r.invalid("_schedulers", format!("entry {i} must be an object, got {state}")))?;
            child.load_state_dict(state, groups).map_err(|e| match e {
                Error::InvalidState { what, reason } => {
                    r.invalid("_schedulers", format!("entry {i}: invalid {what}: {reason}"))
                }
                e => e,
            })?;
        }
        Ok(Composite {
            kind,
            children,
            last_lr,
            step_count,
            is_initial,
        })
    }
}

/// `SequentialLR` for `torch.optim.lr_scheduler.SequentialLR`.
fn short(class: &str) -> &str {
    class.rsplit('.').next().unwrap_or(class)
}

#[cfg(test)]
mod tests {
    use super::bisect_right;

    #[test]
    fn bisect_right_is_pythons() {
        assert_eq!(bisect_right(&[], 0), 0);
        assert_eq!(bisect_right(&[5], 0), 0);
        assert_eq!(bisect_right(&[5], 5), 1);
        assert_eq!(bisect_right(&[5, 10], 7), 1);
        assert_eq!(bisect_right(&[5, 10], 10), 2);
        // Unsorted, as Python's binary search sees it.
        assert_eq!(bisect_right(&[10, 5], 7), 2);
        assert_eq!(bisect_right(&[10, 5], 3), 0);
    }
}
