//! CyclicLR: the learning rate cycles between `base_lr` and `max_lr`
//! (triangular, triangular2 or exp_range), and the momentum (`momentum`, or
//! Adam's `betas[0]`) inversely between `max_momentum` and `base_momentum`.
//!
//! PyTorch's custom `scale_fn` is a Python callable, which no file can
//! carry: the kwarg is refused, and a state whose `_scale_fn_custom` is not
//! null does not load.

use serde_json::{Map, Value};

use super::base::{Base, Momentum, Update};
use super::one_cycle::{check_betas, cycled_momentum_is_beta1, set_beta1};
use super::pymath::{div, pow, Num};
use super::state::{num_list, StateReader};
use crate::error::{Error, Result};
use crate::format::metadata::encode_float;
use crate::kwargs::Kwargs;
use crate::optim::ParamGroup;

/// The built-in scaling policies (`mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Triangular,
    Triangular2,
    ExpRange,
}

impl Mode {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "triangular" => Some(Mode::Triangular),
            "triangular2" => Some(Mode::Triangular2),
            "exp_range" => Some(Mode::ExpRange),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Triangular => "triangular",
            Mode::Triangular2 => "triangular2",
            Mode::ExpRange => "exp_range",
        }
    }

    /// The `scale_mode` that `_init_scale_fn` sets for this mode: the
    /// `scale_mode` kwarg only matters with a custom `scale_fn`.
    fn scale_mode(self) -> &'static str {
        match self {
            Mode::Triangular | Mode::Triangular2 => "cycle",
            Mode::ExpRange => "iterations",
        }
    }
}

const SCALE_MODES: [&str; 2] = ["cycle", "iterations"];

/// The momentum half of the scheduler, present when `cycle_momentum` is
/// (or was, in a loaded state) true.
#[derive(Debug, Clone, PartialEq)]
struct Momenta {
    use_beta1: bool,
    base: Vec<Num>,
    max: Vec<Num>,
}

/// The scheduler's own attributes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cyclic {
    max_lrs: Vec<Num>,
    total_size: f64,
    step_ratio: f64,
    mode: Mode,
    gamma: Num,
    cycle_momentum: bool,
    momenta: Option<Momenta>,
    /// `base_lrs` as PyTorch keeps them: the kwarg's values, ints included
    /// (the base class holds them as floats for the arithmetic).
    base_lrs: Vec<Num>,
}

/// What the constructor writes into each group, computed (and checked)
/// before any group is touched.
pub(crate) struct Setup {
    /// Each group's new `lr` (`base_lr`); `None` when resuming.
    lrs: Option<Vec<Num>>,
    /// (`max_momentum`, `base_momentum`) per group, when cycling momentum
    /// from scratch.
    momenta: Option<Vec<(Num, Num)>>,
    use_beta1: bool,
}

impl Cyclic {
    /// Reads and checks the kwargs as PyTorch's constructor does, in its
    /// order; `groups` decides between `momentum` and `betas`.
    pub(crate) fn from_kwargs(kw: &Kwargs<'_>, groups: &[ParamGroup], last_epoch: i64) -> Result<(Self, Setup)> {
        if let Some(f) = kw.take("scale_fn") {
            return Err(kw.error(format!(
                "scale_fn: a custom scale function is a Python callable, which no file can carry \
                 (got {f}); use mode \"triangular\", \"triangular2\" or \"exp_range\" instead"
            )));
        }
        let n = groups.len();
        let base_lrs = kw.per_group_or("base_lr", None)?.expand(kw, "base_lr", n)?;
        let lrs = if last_epoch == -1 {
            // `_update_param_group_val(group, "lr", lr)` needs the key.
            for g in groups {
                g.lr()?;
            }
            Some(base_lrs.clone())
        } else {
            None
        };
        let max_lrs = kw.per_group_or("max_lr", None)?.expand(kw, "max_lr", n)?;
        let step_size_up = kw.num_or("step_size_up", Num::Int(2000))?.f();
        let step_size_down = match kw.take("step_size_down") {
            None => step_size_up,
            Some(_) => kw.required_num("step_size_down")?.f(),
        };
        let total_size = step_size_up + step_size_down;
        let step_ratio =
            div(step_size_up, total_size).map_err(|e| kw.error(format!("step_size_up + step_size_down is 0: {e}")))?;
        let mode_name = kw.str_or("mode", "triangular")?;
        let mode = Mode::parse(&mode_name).ok_or_else(|| {
            kw.error(format!(
                "mode is invalid and scale_fn is None: mode must be \"triangular\", \"triangular2\" or \
                 \"exp_range\", got {mode_name:?}"
            ))
        })?;
        let gamma = kw.num_or("gamma", Num::Float(1.0))?;
        let scale_mode = kw.str_or("scale_mode", "cycle")?;
        if !SCALE_MODES.contains(&scale_mode.as_str()) {
            return Err(kw.error(format!(
                "scale_mode must be \"cycle\" or \"iterations\", got {scale_mode:?}"
            )));
        }
        let cycle_momentum = kw.bool_or("cycle_momentum", true)?;
        let base_momentum = kw.per_group_or("base_momentum", Some(Num::Float(0.8)))?;
        let max_momentum = kw.per_group_or("max_momentum", Some(Num::Float(0.9)))?;

        let mut momenta = None;
        let mut setup_momenta = None;
        let mut use_beta1 = false;
        if cycle_momentum {
            use_beta1 = cycled_momentum_is_beta1(kw, groups)?;
            let base = base_momentum.expand(kw, "base_momentum", n)?;
            let max = max_momentum.expand(kw, "max_momentum", n)?;
            if last_epoch == -1 {
                setup_momenta = Some(max.iter().copied().zip(base.iter().copied()).collect());
            }
            momenta = Some(Momenta { use_beta1, base, max });
        }
        let sched = Cyclic {
            max_lrs,
            total_size,
            step_ratio,
            mode,
            gamma,
            cycle_momentum,
            momenta,
            base_lrs,
        };
        Ok((
            sched,
            Setup {
                lrs,
                momenta: setup_momenta,
                use_beta1,
            },
        ))
    }

    /// Writes what the constructor writes into the groups before the base
    /// class's `initial_lr`.
    pub(crate) fn prepare(setup: &Setup, groups: &mut [ParamGroup]) {
        if let Some(lrs) = &setup.lrs {
            for (g, lr) in groups.iter_mut().zip(lrs) {
                g.options.insert("lr".into(), lr.to_json());
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

    /// `self.base_lrs = base_lrs` after the base constructor (whose initial
    /// step used each group's `initial_lr`).
    pub(crate) fn base_lrs(&self) -> Vec<f64> {
        self.base_lrs.iter().map(|x| x.f()).collect()
    }

    /// `scale_fn(cycle)` or `scale_fn(last_epoch)`, as the mode's
    /// `scale_mode` picks: 1, `1 / 2.0 ** (cycle - 1)` or `gamma ** last_epoch`.
    fn scale(&self, cycle: f64, last_epoch: i64) -> Result<f64> {
        match self.mode {
            Mode::Triangular => Ok(1.0),
            Mode::Triangular2 => div(1.0, pow(2.0, cycle - 1.0)?),
            Mode::ExpRange => self.gamma.pow_int(last_epoch),
        }
    }

    pub(crate) fn get_lr(&self, b: &Base, groups: &[ParamGroup]) -> Result<Update> {
        let epoch = b.last_epoch as f64;
        let q = div(epoch, self.total_size)?;
        let shifted = 1.0 + q;
        if !shifted.is_finite() {
            return Err(Error::Usage(format!("math.floor of {shifted} (PyTorch raises here)")));
        }
        let cycle = shifted.floor();
        let x = shifted - cycle;
        let scale_factor = if x <= self.step_ratio {
            div(x, self.step_ratio)?
        } else {
            div(x - 1.0, self.step_ratio - 1.0)?
        };
        let scale = self.scale(cycle, b.last_epoch)?;
        let lrs = b
            .base_lrs
            .iter()
            .zip(&self.max_lrs)
            .map(|(&base, max)| base + (max.f() - base) * scale_factor * scale)
            .collect();
        let momentum = match (&self.momenta, self.cycle_momentum) {
            (Some(m), true) => {
                if m.use_beta1 {
                    check_betas(groups)?;
                }
                let values = m
                    .base
                    .iter()
                    .zip(&m.max)
                    .map(|(base, max)| max.f() - (max.f() - base.f()) * scale_factor * scale)
                    .collect();
                Some(Momentum {
                    beta1: m.use_beta1,
                    values,
                })
            }
            _ => None,
        };
        Ok(Update { lrs, momentum })
    }

    /// The keys before the base class's.
    pub(crate) fn write(&self, m: &mut Map<String, Value>) {
        m.insert("max_lrs".into(), num_list(&self.max_lrs));
        m.insert("total_size".into(), encode_float(self.total_size));
        m.insert("step_ratio".into(), encode_float(self.step_ratio));
        m.insert("mode".into(), self.mode.name().into());
        m.insert("gamma".into(), self.gamma.to_json());
        m.insert("scale_mode".into(), self.mode.scale_mode().into());
        m.insert("cycle_momentum".into(), self.cycle_momentum.into());
        if let Some(mo) = &self.momenta {
            m.insert("use_beta1".into(), mo.use_beta1.into());
            m.insert("base_momentums".into(), num_list(&mo.base));
            m.insert("max_momentums".into(), num_list(&mo.max));
        }
    }

    /// After the base class's keys: `base_lrs` as the kwarg gave them (in
    /// place), and `_scale_fn_custom` last, as PyTorch's `state_dict()`
    /// pops and re-adds it.
    pub(crate) fn write_tail(&self, m: &mut Map<String, Value>) {
        m.insert("base_lrs".into(), num_list(&self.base_lrs));
        m.insert("_scale_fn_custom".into(), Value::Null);
    }

    pub(crate) fn read(r: &mut StateReader<'_>) -> Result<Self> {
        let max_lrs = r.num_per_group("max_lrs")?;
        let total_size = r.f64("total_size")?;
        let step_ratio = r.f64("step_ratio")?;
        let name = r.str("mode")?;
        let mode = Mode::parse(name).ok_or_else(|| {
            r.invalid(
                "mode",
                format!("must be \"triangular\", \"triangular2\" or \"exp_range\", got {name:?}"),
            )
        })?;
        let gamma = r.num("gamma")?;
        // PyTorch's load_state_dict re-derives scale_mode from mode.
        let scale_mode = r.str("scale_mode")?;
        if !SCALE_MODES.contains(&scale_mode) {
            return Err(r.invalid(
                "scale_mode",
                format!("must be \"cycle\" or \"iterations\", got {scale_mode:?}"),
            ));
        }
        let cycle_momentum = r.bool("cycle_momentum")?;
        let momenta = if cycle_momentum || r.bool_opt("use_beta1")?.is_some() {
            Some(Momenta {
                use_beta1: r.bool("use_beta1")?,
                base: r.num_per_group("base_momentums")?,
                max: r.num_per_group("max_momentums")?,
            })
        } else {
            None
        };
        let base_lrs = r.num_per_group("base_lrs")?;
        let custom = r.raw("_scale_fn_custom")?;
        if !custom.is_null() {
            return Err(r.invalid(
                "_scale_fn_custom",
                format!(
                    "must be null: a custom scale function is a Python callable, which no file can carry, got {custom}"
                ),
            ));
        }
        Ok(Cyclic {
            max_lrs,
            total_size,
            step_ratio,
            mode,
            gamma,
            cycle_momentum,
            momenta,
            base_lrs,
        })
    }
}
