//! OneCycleLR: `lr` rises from `initial_lr` to `max_lr`, then falls to
//! `min_lr` (optionally through `initial_lr` again: `three_phase`), while
//! the momentum (`momentum`, or `betas[0]` for Adam-like groups) moves
//! the opposite way. The constructor writes `initial_lr`, `max_lr`,
//! `min_lr`, `max_momentum` and `base_momentum` into every group, and each
//! step reads the phase's endpoints back from the group by name.

use std::f64::consts::PI;

use serde_json::{Map, Value};

use super::base::{Base, Momentum, Update};
use super::pymath::{cos, div, mul_int, Num};
use super::state::StateReader;
use crate::error::{Error, Result};
use crate::format::metadata::encode_float;
use crate::kwargs::Kwargs;
use crate::optim::ParamGroup;

/// One entry of `_schedule_phases`: the phase ends at `end_step`, and its
/// endpoints are the group keys named here.
#[derive(Debug, Clone, PartialEq)]
struct Phase {
    /// A float, except the last phase's (`total_steps - 1`, an int).
    end_step: Num,
    start_lr: String,
    end_lr: String,
    start_momentum: String,
    end_momentum: String,
}

const PHASE_KEYS: [&str; 5] = ["end_step", "start_lr", "end_lr", "start_momentum", "end_momentum"];

impl Phase {
    fn new(end_step: Num, keys: [&str; 4]) -> Self {
        Phase {
            end_step,
            start_lr: keys[0].into(),
            end_lr: keys[1].into(),
            start_momentum: keys[2].into(),
            end_momentum: keys[3].into(),
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("end_step".into(), self.end_step.to_json());
        m.insert("start_lr".into(), self.start_lr.clone().into());
        m.insert("end_lr".into(), self.end_lr.clone().into());
        m.insert("start_momentum".into(), self.start_momentum.clone().into());
        m.insert("end_momentum".into(), self.end_momentum.clone().into());
        Value::Object(m)
    }

    fn from_json(r: &StateReader<'_>, i: usize, v: &Value) -> Result<Self> {
        let bad = |reason: String| r.invalid("_schedule_phases", format!("phase {i}: {reason}"));
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("must be an object, got {v}")))?;
        if let Some(k) = obj.keys().find(|k| !PHASE_KEYS.contains(&k.as_str())) {
            return Err(bad(format!("unexpected key {k:?}")));
        }
        let key = |k: &str| -> Result<String> {
            match obj.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(bad(format!("{k:?} must be a group key (a string), got {v}"))),
                None => Err(bad(format!("{k:?} is missing"))),
            }
        };
        let end_step = obj
            .get("end_step")
            .and_then(Num::from_json)
            .ok_or_else(|| bad("\"end_step\" must be a number".into()))?;
        Ok(Phase {
            end_step,
            start_lr: key("start_lr")?,
            end_lr: key("end_lr")?,
            start_momentum: key("start_momentum")?,
            end_momentum: key("end_momentum")?,
        })
    }
}

/// How `lr` and momentum move within a phase (`_anneal_func_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Anneal {
    Cos,
    Linear,
}

impl Anneal {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "cos" => Some(Anneal::Cos),
            "linear" => Some(Anneal::Linear),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Anneal::Cos => "cos",
            Anneal::Linear => "linear",
        }
    }

    /// `_annealing_cos` / `_annealing_linear`, from `start` to `end` as
    /// `pct` goes from 0 to 1.
    fn apply(self, start: f64, end: f64, pct: f64) -> Result<f64> {
        Ok(match self {
            Anneal::Cos => {
                let cos_out = cos(PI * pct)? + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            Anneal::Linear => (end - start) * pct + start,
        })
    }
}

/// The scheduler's own attributes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OneCycle {
    total_steps: i64,
    phases: Vec<Phase>,
    anneal: Anneal,
    cycle_momentum: bool,
    /// `use_beta1`: PyTorch sets it only when `cycle_momentum` is true.
    use_beta1: Option<bool>,
}

/// What the constructor writes into each group, computed (and checked)
/// before any group is touched.
pub(crate) struct Setup {
    /// (`initial_lr`, `max_lr`, `min_lr`) per group; `None` when resuming
    /// (`last_epoch != -1`), where PyTorch leaves the groups alone.
    lrs: Option<Vec<(f64, Num, f64)>>,
    /// (`max_momentum`, `base_momentum`) per group, when cycling momentum
    /// from scratch.
    momenta: Option<Vec<(Num, Num)>>,
    use_beta1: bool,
}

impl OneCycle {
    /// Reads and checks the kwargs as PyTorch's constructor does, in its
    /// order; `groups` decides between `momentum` and `betas`.
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>, groups: &[ParamGroup], last_epoch: i64) -> Result<(Self, Setup)> {
        let max_lr = kw.per_group_or("max_lr", None)?;
        let total_steps = kw.optional_i64("total_steps")?;
        let epochs = kw.optional_i64("epochs")?;
        let steps_per_epoch = kw.optional_i64("steps_per_epoch")?;
        let pct_start = kw.num_or("pct_start", Num::Float(0.3))?;
        let anneal_strategy = kw.str_or("anneal_strategy", "cos")?;
        let cycle_momentum = kw.bool_or("cycle_momentum", true)?;
        let base_momentum = kw.per_group_or("base_momentum", Some(Num::Float(0.85)))?;
        let max_momentum = kw.per_group_or("max_momentum", Some(Num::Float(0.95)))?;
        let div_factor = kw.num_or("div_factor", Num::Float(25.0))?;
        let final_div_factor = kw.num_or("final_div_factor", Num::Float(1e4))?;
        let three_phase = kw.bool_or("three_phase", false)?;

        let total_steps = match (total_steps, epochs, steps_per_epoch) {
            (Some(t), _, _) if t <= 0 => {
                return Err(kw.error(format!("total_steps: Expected positive integer total_steps, but got {t}")))
            }
            (Some(t), _, _) => t,
            (None, Some(e), Some(s)) => {
                if e <= 0 {
                    return Err(kw.error(format!("epochs: Expected positive integer epochs, but got {e}")));
                }
                if s <= 0 {
                    return Err(kw.error(format!(
                        "steps_per_epoch: Expected positive integer steps_per_epoch, but got {s}"
                    )));
                }
                mul_int(e, s).map_err(|e| kw.error(e.to_string()))?
            }
            _ => {
                return Err(kw.error(
                    "You must define either total_steps OR (epochs AND steps_per_epoch) (kwargs \"total_steps\", \"epochs\", \"steps_per_epoch\")",
                ))
            }
        };
        let total = total_steps as f64;
        let pct = pct_start.f();
        let phases = if three_phase {
            vec![
                Phase::new(
                    Num::Float(pct * total - 1.0),
                    ["initial_lr", "max_lr", "max_momentum", "base_momentum"],
                ),
                Phase::new(
                    Num::Float(2.0 * pct * total - 2.0),
                    ["max_lr", "initial_lr", "base_momentum", "max_momentum"],
                ),
                Phase::new(
                    Num::Int(total_steps - 1),
                    ["initial_lr", "min_lr", "max_momentum", "max_momentum"],
                ),
            ]
        } else {
            vec![
                Phase::new(
                    Num::Float(pct * total - 1.0),
                    ["initial_lr", "max_lr", "max_momentum", "base_momentum"],
                ),
                Phase::new(
                    Num::Int(total_steps - 1),
                    ["max_lr", "min_lr", "base_momentum", "max_momentum"],
                ),
            ]
        };
        // PyTorch insists on a Python float here (`pct_start=1` is refused),
        // and its comparisons let NaN through, which a range test would not.
        #[allow(clippy::manual_range_contains)]
        if !matches!(pct_start, Num::Float(_)) || pct < 0.0 || pct > 1.0 {
            return Err(kw.error(format!(
                "pct_start: Expected float between 0 and 1 pct_start, but got {}",
                pct_start.to_json()
            )));
        }
        let anneal = Anneal::parse(&anneal_strategy).ok_or_else(|| {
            kw.error(format!(
                "anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy:?}"
            ))
        })?;

        let max_lrs = max_lr.expand(kw, "max_lr", groups.len())?;
        let lrs = if last_epoch == -1 {
            let mut lrs = Vec::with_capacity(groups.len());
            for &m in &max_lrs {
                let initial_lr = div(m.f(), div_factor.f()).map_err(|e| kw.error(format!("div_factor: {e}")))?;
                let min_lr =
                    div(initial_lr, final_div_factor.f()).map_err(|e| kw.error(format!("final_div_factor: {e}")))?;
                lrs.push((initial_lr, m, min_lr));
            }
            Some(lrs)
        } else {
            None
        };

        let mut use_beta1 = false;
        let mut momenta = None;
        if cycle_momentum {
            use_beta1 = cycled_momentum_is_beta1(kw, groups)?;
            let max_m = max_momentum.expand(kw, "max_momentum", groups.len())?;
            let base_m = base_momentum.expand(kw, "base_momentum", groups.len())?;
            if last_epoch == -1 {
                momenta = Some(max_m.into_iter().zip(base_m).collect());
            }
        }
        let sched = OneCycle {
            total_steps,
            phases,
            anneal,
            cycle_momentum,
            use_beta1: cycle_momentum.then_some(use_beta1),
        };
        Ok((
            sched,
            Setup {
                lrs,
                momenta,
                use_beta1,
            },
        ))
    }

    /// Writes what the constructor writes into the groups.
    pub(crate) fn prepare(setup: &Setup, groups: &mut [ParamGroup]) {
        if let Some(lrs) = &setup.lrs {
            for (g, &(initial_lr, max_lr, min_lr)) in groups.iter_mut().zip(lrs) {
                g.set_f64("initial_lr", initial_lr);
                g.options.insert("max_lr".into(), max_lr.to_json());
                g.set_f64("min_lr", min_lr);
            }
        }
        if let Some(momenta) = &setup.momenta {
            for (g, &(max_m, base_m)) in groups.iter_mut().zip(momenta) {
                if setup.use_beta1 {
                    set_beta1(g, max_m.to_json());
                } else {
                    g.options.insert("momentum".into(), max_m.to_json());
                }
                g.options.insert("max_momentum".into(), max_m.to_json());
                g.options.insert("base_momentum".into(), base_m.to_json());
            }
        }
    }

    pub(crate) fn get_lr(&self, class: &str, b: &Base, groups: &[ParamGroup]) -> Result<Update> {
        let step_num = b.last_epoch;
        if step_num > self.total_steps {
            return Err(Error::Usage(format!(
                "{class}: Tried to step {step_num} times. The specified number of total steps is {}",
                self.total_steps
            )));
        }
        let use_beta1 = self.use_beta1 == Some(true);
        if self.cycle_momentum && use_beta1 {
            check_betas(groups)?;
        }
        let step = step_num as f64;
        let last = self.phases.len() - 1;
        let mut lrs = Vec::with_capacity(groups.len());
        let mut momenta = Vec::with_capacity(groups.len());
        for g in groups {
            let mut start_step = 0.0;
            for (i, phase) in self.phases.iter().enumerate() {
                let end_step = phase.end_step.f();
                if step <= end_step || i == last {
                    let pct = div(step - start_step, end_step - start_step)?;
                    lrs.push(self.anneal.apply(g.f64(&phase.start_lr)?, g.f64(&phase.end_lr)?, pct)?);
                    if self.cycle_momentum {
                        momenta.push(self.anneal.apply(
                            g.f64(&phase.start_momentum)?,
                            g.f64(&phase.end_momentum)?,
                            pct,
                        )?);
                    }
                    break;
                }
                start_step = end_step;
            }
        }
        let momentum = self.cycle_momentum.then_some(Momentum {
            beta1: use_beta1,
            values: momenta,
        });
        Ok(Update { lrs, momentum })
    }

    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("total_steps".into(), self.total_steps.into());
        m.insert(
            "_schedule_phases".into(),
            Value::Array(self.phases.iter().map(Phase::to_json).collect()),
        );
        m.insert("_anneal_func_type".into(), self.anneal.name().into());
        m.insert("cycle_momentum".into(), self.cycle_momentum.into());
        if let Some(b) = self.use_beta1 {
            m.insert("use_beta1".into(), b.into());
        }
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        let total_steps = r.i64("total_steps")?;
        let raw = r.raw("_schedule_phases")?;
        let items = raw
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| r.invalid("_schedule_phases", format!("must be a non-empty list, got {raw}")))?;
        let phases = items
            .iter()
            .enumerate()
            .map(|(i, v)| Phase::from_json(r, i, v))
            .collect::<Result<_>>()?;
        let name = r.str("_anneal_func_type")?;
        let anneal = Anneal::parse(name).ok_or_else(|| {
            r.invalid(
                "_anneal_func_type",
                format!("must be \"cos\" or \"linear\", got {name:?}"),
            )
        })?;
        let cycle_momentum = r.bool("cycle_momentum")?;
        let use_beta1 = if cycle_momentum {
            Some(r.bool("use_beta1")?)
        } else {
            r.bool_opt("use_beta1")?
        };
        Ok(OneCycle {
            total_steps,
            phases,
            anneal,
            cycle_momentum,
            use_beta1,
        })
    }
}

/// Which option momentum cycling drives (OneCycleLR, CyclicLR): `true`
/// for Adam-like `betas[0]`, `false` for `momentum`; an error when the
/// groups have neither. PyTorch asks the optimizer's defaults; every group
/// holds the defaults' keys, so the groups tell the same.
pub(crate) fn cycled_momentum_is_beta1(kw: &Kwargs, groups: &[ParamGroup]) -> Result<bool> {
    let use_beta1 = !groups.is_empty() && groups.iter().all(|g| g.options.contains_key("betas"));
    let momentum = groups.iter().all(|g| g.options.contains_key("momentum"));
    if !use_beta1 && !momentum {
        return Err(kw.error(
            "cycle_momentum: optimizer must support momentum or beta1 with `cycle_momentum` option enabled \
             (every param group needs \"momentum\" or \"betas\"; pass cycle_momentum=false otherwise)",
        ));
    }
    if use_beta1 {
        check_betas(groups)?;
    }
    Ok(use_beta1)
}

/// Every group's `betas` must be a list (PyTorch: a tuple) to replace its
/// first element.
pub(crate) fn check_betas(groups: &[ParamGroup]) -> Result<()> {
    for g in groups {
        match g.get("betas") {
            Some(Value::Array(_)) => {}
            Some(v) => {
                return Err(Error::InvalidState {
                    what: "param_groups key \"betas\"".into(),
                    reason: format!("must be a list, got {v}"),
                })
            }
            None => {
                return Err(Error::InvalidState {
                    what: "param_groups key \"betas\"".into(),
                    reason: "missing".into(),
                })
            }
        }
    }
    Ok(())
}

/// `group["betas"] = (value, *group["betas"][1:])`.
pub(crate) fn set_beta1(g: &mut ParamGroup, value: Value) {
    if let Some(Value::Array(betas)) = g.options.get_mut("betas") {
        match betas.first_mut() {
            Some(first) => *first = value,
            None => betas.push(value),
        }
    }
}

/// Sets `betas[0]` to a float.
pub(crate) fn set_beta1_f64(g: &mut ParamGroup, value: f64) {
    set_beta1(g, encode_float(value));
}
