//! LR schedulers with torch.optim.lr_scheduler's math and `state_dict()`.
//!
//! Thirteen of PyTorch 2.13's fifteen schedulers, under PyTorch's class
//! names, over the optimizer's [`ParamGroup`]s; the composites
//! SequentialLR and ChainedScheduler hold child schedulers of the others
//! (`composite.rs`). LambdaLR and MultiplicativeLR take a Python callable,
//! which no file carries: building or loading one is
//! [`Error::UnsupportedClass`]. Each mirrors PyTorch exactly:
//!
//! - the constructor does to the groups what PyTorch's does (`initial_lr`,
//!   OneCycleLR's `max_lr`/`min_lr`/`max_momentum`/`base_momentum`,
//!   CyclicLR's `lr`/`max_momentum`/`base_momentum`, and the
//!   initial step that sets `lr`), with PyTorch's kwargs, defaults and checks;
//! - `step()` evaluates PyTorch's recursive ("chainable") `get_lr()`
//!   operation by operation in f64, with glibc's `cos`/`pow` as Python's
//!   `math` module uses, so the learning rates are bit-identical to PyTorch's;
//! - `state_dict()` has PyTorch's keys (private ones included) and values,
//!   as JSON: Python ints stay integers, floats stay floats, non-finite
//!   floats use the format's encoding (`{"__float__": "inf"}`), and
//!   MultiStepLR's `Counter` of milestones is an object keyed by the
//!   milestone in decimal (as `json.dumps` writes it).
//!
//! Where PyTorch would raise in the middle of a step (OneCycleLR stepped
//! past `total_steps`, a division by zero), the scheduler returns an error
//! and, unlike PyTorch, leaves itself and the groups unchanged.

mod base;
mod chainable;
mod composite;
mod cyclic;
mod kwargs;
mod one_cycle;
mod plateau;
mod pymath;
mod state;
mod warm_restarts;

use serde_json::{Map, Value};

use self::base::{Base, Update};
use self::chainable::{ConstantLr, CosineAnnealingLr, ExponentialLr, LinearLr, MultiStepLr, PolynomialLr, StepLr};
use self::composite::Composite;
use self::cyclic::Cyclic;
use self::one_cycle::OneCycle;
use self::plateau::Plateau;
use self::pymath::add_int;
use self::state::StateReader;
use self::warm_restarts::WarmRestarts;
use crate::error::{Error, Result};
use crate::kwargs::Kwargs;
use crate::optim::ParamGroup;

/// `torch.optim.lr_scheduler.StepLR`: decay by `gamma` every `step_size` steps.
pub const STEP_LR: &str = "torch.optim.lr_scheduler.StepLR";
/// `torch.optim.lr_scheduler.MultiStepLR`: decay by `gamma` at each milestone.
pub const MULTI_STEP_LR: &str = "torch.optim.lr_scheduler.MultiStepLR";
/// `torch.optim.lr_scheduler.ExponentialLR`: decay by `gamma` every step.
pub const EXPONENTIAL_LR: &str = "torch.optim.lr_scheduler.ExponentialLR";
/// `torch.optim.lr_scheduler.ConstantLR`: `lr * factor` for `total_iters` steps.
pub const CONSTANT_LR: &str = "torch.optim.lr_scheduler.ConstantLR";
/// `torch.optim.lr_scheduler.LinearLR`: a linear ramp of the factor on `lr`.
pub const LINEAR_LR: &str = "torch.optim.lr_scheduler.LinearLR";
/// `torch.optim.lr_scheduler.PolynomialLR`: polynomial decay to 0 over `total_iters`.
pub const POLYNOMIAL_LR: &str = "torch.optim.lr_scheduler.PolynomialLR";
/// `torch.optim.lr_scheduler.CosineAnnealingLR`: cosine annealing to `eta_min`.
pub const COSINE_ANNEALING_LR: &str = "torch.optim.lr_scheduler.CosineAnnealingLR";
/// `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`: SGDR's restarts.
pub const COSINE_ANNEALING_WARM_RESTARTS: &str = "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts";
/// `torch.optim.lr_scheduler.OneCycleLR`: the 1cycle policy, with momentum cycling.
pub const ONE_CYCLE_LR: &str = "torch.optim.lr_scheduler.OneCycleLR";
/// `torch.optim.lr_scheduler.ReduceLROnPlateau`: decay when a metric stalls.
pub const REDUCE_LR_ON_PLATEAU: &str = "torch.optim.lr_scheduler.ReduceLROnPlateau";
/// `torch.optim.lr_scheduler.CyclicLR`: cyclical learning rates (triangular,
/// triangular2, exp_range), with momentum cycling.
pub const CYCLIC_LR: &str = "torch.optim.lr_scheduler.CyclicLR";
/// `torch.optim.lr_scheduler.SequentialLR`: child schedulers one after the
/// other, switching at milestones (the usual warmup recipe).
pub const SEQUENTIAL_LR: &str = "torch.optim.lr_scheduler.SequentialLR";
/// `torch.optim.lr_scheduler.ChainedScheduler`: every child stepped in turn.
pub const CHAINED_SCHEDULER: &str = "torch.optim.lr_scheduler.ChainedScheduler";
/// `torch.optim.lr_scheduler.LambdaLR`: takes a Python callable, which no
/// file can carry; refused here with [`Error::UnsupportedClass`].
pub const LAMBDA_LR: &str = "torch.optim.lr_scheduler.LambdaLR";
/// `torch.optim.lr_scheduler.MultiplicativeLR`: takes a Python callable,
/// which no file can carry; refused here with [`Error::UnsupportedClass`].
pub const MULTIPLICATIVE_LR: &str = "torch.optim.lr_scheduler.MultiplicativeLR";

const NAMES: [&str; 13] = [
    STEP_LR,
    MULTI_STEP_LR,
    EXPONENTIAL_LR,
    CONSTANT_LR,
    LINEAR_LR,
    POLYNOMIAL_LR,
    COSINE_ANNEALING_LR,
    COSINE_ANNEALING_WARM_RESTARTS,
    ONE_CYCLE_LR,
    REDUCE_LR_ON_PLATEAU,
    CYCLIC_LR,
    SEQUENTIAL_LR,
    CHAINED_SCHEDULER,
];

/// The schedulers whose kwargs hold a Python callable (`lr_lambda`).
const PYTHON_ONLY: [&str; 2] = [LAMBDA_LR, MULTIPLICATIVE_LR];

/// The class names of every scheduler, PyTorch's fully qualified names.
pub fn names() -> &'static [&'static str] {
    &NAMES
}

/// A learning-rate scheduler: its class name, its constructor kwargs, and
/// its state (what PyTorch's `state_dict()` holds). It does not own the
/// param groups: every call that reads or writes them takes them.
#[derive(Debug, Clone)]
pub struct Scheduler {
    class: &'static str,
    kwargs: Map<String, Value>,
    state: State,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// A scheduler built on PyTorch's `LRScheduler` base logic.
    Epoch { base: Base, sched: EpochSched },
    /// ReduceLROnPlateau, which has its own.
    Plateau(Plateau),
    /// SequentialLR or ChainedScheduler, over child schedulers.
    Composite(Box<Composite>),
}

#[derive(Debug, Clone, PartialEq)]
enum EpochSched {
    Step(StepLr),
    MultiStep(MultiStepLr),
    Exponential(ExponentialLr),
    Constant(ConstantLr),
    Linear(LinearLr),
    Polynomial(PolynomialLr),
    Cosine(CosineAnnealingLr),
    WarmRestarts(WarmRestarts),
    OneCycle(OneCycle),
    Cyclic(Cyclic),
}

impl EpochSched {
    /// PyTorch's `get_lr()` with the counters already advanced in `b`.
    fn get_lr(&self, class: &str, b: &Base, groups: &[ParamGroup]) -> Result<Update> {
        let lrs = match self {
            EpochSched::Step(s) => s.get_lr(b, groups)?,
            EpochSched::MultiStep(s) => s.get_lr(b, groups)?,
            EpochSched::Exponential(s) => s.get_lr(b, groups)?,
            EpochSched::Constant(s) => s.get_lr(b, groups)?,
            EpochSched::Linear(s) => s.get_lr(b, groups)?,
            EpochSched::Polynomial(s) => s.get_lr(b, groups)?,
            EpochSched::Cosine(s) => s.get_lr(b, groups)?,
            EpochSched::OneCycle(s) => return s.get_lr(class, b, groups),
            EpochSched::Cyclic(s) => return s.get_lr(b, groups),
            EpochSched::WarmRestarts(_) => unreachable!("CosineAnnealingWarmRestarts overrides step()"),
        };
        Ok(Update::lrs(lrs))
    }

    /// PyTorch's `step()`: everything that can fail happens before the
    /// scheduler or a group changes.
    fn step(&mut self, class: &str, b: &mut Base, groups: &mut [ParamGroup]) -> Result<()> {
        if let EpochSched::WarmRestarts(w) = self {
            return w.step(class, b, groups);
        }
        b.check_groups(class, groups)?;
        let mut next = b.advanced()?;
        let update = self.get_lr(class, &next, groups)?;
        next.get_lr_called_within_step = false;
        update.apply(groups);
        next.last_lr = update.lrs;
        *b = next;
        Ok(())
    }

    fn write(&self, m: &mut Map<String, Value>) {
        match self {
            EpochSched::Step(s) => s.write(m),
            EpochSched::MultiStep(s) => s.write(m),
            EpochSched::Exponential(s) => s.write(m),
            EpochSched::Constant(s) => s.write(m),
            EpochSched::Linear(s) => s.write(m),
            EpochSched::Polynomial(s) => s.write(m),
            EpochSched::Cosine(s) => s.write(m),
            EpochSched::WarmRestarts(s) => s.write(m),
            EpochSched::OneCycle(s) => s.write(m),
            EpochSched::Cyclic(s) => s.write(m),
        }
    }

    /// PyTorch's `_update_lr(epoch)`, which SequentialLR calls with epoch 0
    /// on the child it switches to: `last_epoch = epoch`, then the closed
    /// form `_get_closed_form_lr()` where the class has one, `get_lr()`
    /// otherwise. Leaves `_step_count` alone. All or nothing.
    fn update_lr_at(&mut self, class: &str, b: &mut Base, groups: &mut [ParamGroup], epoch: i64) -> Result<()> {
        b.check_groups(class, groups)?;
        let mut next = b.clone();
        next.last_epoch = epoch;
        next.get_lr_called_within_step = true;
        let update = match self {
            EpochSched::Step(s) => Update::lrs(s.closed_form_lr(&next)?),
            EpochSched::MultiStep(s) => Update::lrs(s.closed_form_lr(&next)?),
            EpochSched::Exponential(s) => Update::lrs(s.closed_form_lr(&next)?),
            EpochSched::Constant(s) => Update::lrs(s.closed_form_lr(&next)?),
            EpochSched::Linear(s) => Update::lrs(s.closed_form_lr(&next)?),
            EpochSched::Polynomial(s) => Update::lrs(s.closed_form_lr(&next)?),
            EpochSched::Cosine(s) => Update::lrs(s.closed_form_lr(&next)?),
            EpochSched::WarmRestarts(s) => Update::lrs(s.get_lr(&next)?),
            EpochSched::OneCycle(_) | EpochSched::Cyclic(_) => self.get_lr(class, &next, groups)?,
        };
        next.get_lr_called_within_step = false;
        update.apply(groups);
        next.last_lr = update.lrs;
        *b = next;
        Ok(())
    }

    /// Keys some schedulers write after (or over) the base class's.
    fn write_tail(&self, m: &mut Map<String, Value>) {
        if let EpochSched::Cyclic(s) = self {
            s.write_tail(m);
        }
    }

    /// Reads a state of the same class as `self`.
    fn read_like(&self, r: &mut StateReader<'_>) -> Result<EpochSched> {
        Ok(match self {
            EpochSched::Step(_) => EpochSched::Step(StepLr::read(r)?),
            EpochSched::MultiStep(_) => EpochSched::MultiStep(MultiStepLr::read(r)?),
            EpochSched::Exponential(_) => EpochSched::Exponential(ExponentialLr::read(r)?),
            EpochSched::Constant(_) => EpochSched::Constant(ConstantLr::read(r)?),
            EpochSched::Linear(_) => EpochSched::Linear(LinearLr::read(r)?),
            EpochSched::Polynomial(_) => EpochSched::Polynomial(PolynomialLr::read(r)?),
            EpochSched::Cosine(_) => EpochSched::Cosine(CosineAnnealingLr::read(r)?),
            EpochSched::WarmRestarts(_) => EpochSched::WarmRestarts(WarmRestarts::read(r)?),
            EpochSched::OneCycle(_) => EpochSched::OneCycle(OneCycle::read(r)?),
            EpochSched::Cyclic(_) => EpochSched::Cyclic(Cyclic::read(r)?),
        })
    }
}

impl Scheduler {
    /// Builds scheduler `class` (one of [`names`]) over the optimizer's
    /// `groups`, doing exactly what PyTorch's constructor does to them:
    /// `initial_lr` (set to `lr` when `last_epoch` is -1, required in every
    /// group otherwise), OneCycleLR's `initial_lr`/`max_lr`/`min_lr` and
    /// momentum keys, CyclicLR's `lr` (its `base_lr`) and momentum keys, and
    /// the initial step that sets each `lr`.
    /// ReduceLROnPlateau leaves the groups alone, as in PyTorch.
    ///
    /// SequentialLR and ChainedScheduler build their children (the `spec`
    /// tags of their `schedulers` kwarg) in order over the same groups,
    /// then do what PyTorch's composite constructors do (see
    /// `composite.rs`).
    ///
    /// `kwargs` are PyTorch's, with its defaults and checks. LambdaLR and
    /// MultiplicativeLR (a Python callable in their kwargs), at top level
    /// or as a child, are [`Error::UnsupportedClass`]. An unknown
    /// class, a child's included, is [`Error::UnknownName`]; a missing, unknown or invalid kwarg
    /// (or one that makes the initial step fail) is [`Error::InvalidKwargs`]
    /// naming it; a group without a usable `lr` is [`Error::InvalidState`].
    /// On error the groups are unchanged.
    pub fn new(class: &str, kwargs: &Map<String, Value>, groups: &mut [ParamGroup]) -> Result<Self> {
        if let Some(name) = PYTHON_ONLY.iter().find(|n| **n == class) {
            return Err(Error::UnsupportedClass {
                kind: "scheduler",
                name: (*name).to_owned(),
                reason: "its lr_lambda is a Python callable, which no file carries: the lambda lives only in \
                         Python; load the checkpoint with the Python package, passing the lambda"
                    .into(),
            });
        }
        let name = NAMES
            .iter()
            .copied()
            .find(|n| *n == class)
            .ok_or_else(|| Error::UnknownName {
                kind: "scheduler",
                name: class.to_owned(),
                known: NAMES.join(", "),
            })?;
        let kw = Kwargs::new(name, kwargs, false);
        let mut scratch = groups.to_vec();
        let state = if name == REDUCE_LR_ON_PLATEAU {
            State::Plateau(Plateau::new(&kw, &scratch)?)
        } else if name == SEQUENTIAL_LR || name == CHAINED_SCHEDULER {
            State::Composite(Box::new(Composite::new(name, &kw, &mut scratch)?))
        } else {
            let last_epoch = kw.i64_or("last_epoch", -1)?;
            let mut setup = None;
            let mut cyclic_setup = None;
            let mut sched = match name {
                STEP_LR => EpochSched::Step(StepLr::from_kwargs(&kw)?),
                MULTI_STEP_LR => EpochSched::MultiStep(MultiStepLr::from_kwargs(&kw)?),
                EXPONENTIAL_LR => EpochSched::Exponential(ExponentialLr::from_kwargs(&kw)?),
                CONSTANT_LR => EpochSched::Constant(ConstantLr::from_kwargs(&kw)?),
                LINEAR_LR => EpochSched::Linear(LinearLr::from_kwargs(&kw)?),
                POLYNOMIAL_LR => EpochSched::Polynomial(PolynomialLr::from_kwargs(&kw)?),
                COSINE_ANNEALING_LR => EpochSched::Cosine(CosineAnnealingLr::from_kwargs(&kw)?),
                COSINE_ANNEALING_WARM_RESTARTS => EpochSched::WarmRestarts(WarmRestarts::from_kwargs(&kw, last_epoch)?),
                ONE_CYCLE_LR => {
                    let (s, one_cycle_setup) = OneCycle::from_kwargs(&kw, &scratch, last_epoch)?;
                    setup = Some(one_cycle_setup);
                    EpochSched::OneCycle(s)
                }
                CYCLIC_LR => {
                    let (s, setup) = Cyclic::from_kwargs(&kw, &scratch, last_epoch)?;
                    cyclic_setup = Some(setup);
                    EpochSched::Cyclic(s)
                }
                _ => unreachable!("every other name in NAMES has a constructor"),
            };
            kw.finish()?;
            if let Some(setup) = &setup {
                OneCycle::prepare(setup, &mut scratch);
            }
            if let Some(setup) = &cyclic_setup {
                Cyclic::prepare(setup, &mut scratch);
            }
            let mut base = Base::init(&kw, &mut scratch, last_epoch)?;
            // PyTorch's _initial_step.
            base.step_count = 0;
            base.is_initial = true;
            sched.step(name, &mut base, &mut scratch).map_err(|e| match e {
                Error::Usage(reason) => kw.error(format!("the initial step fails: {reason}")),
                e => e,
            })?;
            base.is_initial = false;
            if let EpochSched::Cyclic(c) = &sched {
                // CyclicLR's `self.base_lrs = base_lrs` after the base
                // constructor.
                base.base_lrs = c.base_lrs();
            }
            State::Epoch { base, sched }
        };
        groups.clone_from_slice(&scratch);
        Ok(Scheduler {
            class: name,
            kwargs: kwargs.clone(),
            state,
        })
    }

    /// The class name, e.g. `"torch.optim.lr_scheduler.StepLR"`.
    pub fn class(&self) -> &str {
        self.class
    }

    /// The constructor kwargs as given (defaults not filled in).
    pub fn kwargs(&self) -> &Map<String, Value> {
        &self.kwargs
    }

    /// True for ReduceLROnPlateau, which steps with
    /// [`step_with_metric`](Self::step_with_metric) instead of [`step`](Self::step).
    pub fn needs_metric(&self) -> bool {
        matches!(self.state, State::Plateau(_))
    }

    /// SequentialLR's `recursive_undo` on this scheduler: a composite
    /// passes it to its children, any other goes back one epoch.
    fn undo(&mut self) -> Result<()> {
        match &mut self.state {
            State::Composite(c) => c.undo(),
            State::Epoch { base, .. } => {
                base.last_epoch = add_int(base.last_epoch, -1)?;
                Ok(())
            }
            State::Plateau(_) => Err(Error::Usage(format!("{} cannot be a composite's child", self.class))),
        }
    }

    /// PyTorch's `_initial_step()`, which SequentialLR runs again on the
    /// child due at epoch 0. Not all or nothing: the caller works on copies.
    fn initial_step(&mut self, groups: &mut [ParamGroup]) -> Result<()> {
        match &mut self.state {
            State::Composite(c) => c.initial_step(groups),
            State::Epoch { base, sched } => {
                base.step_count = 0;
                base.is_initial = true;
                sched.step(self.class, base, groups)?;
                base.is_initial = false;
                Ok(())
            }
            State::Plateau(_) => Err(Error::Usage(format!("{} cannot be a composite's child", self.class))),
        }
    }

    /// PyTorch's `_update_lr(epoch)` (see [`EpochSched::update_lr_at`]);
    /// a composite has no `get_lr()`, where PyTorch raises
    /// NotImplementedError.
    fn update_lr_at(&mut self, groups: &mut [ParamGroup], epoch: i64) -> Result<()> {
        match &mut self.state {
            State::Epoch { base, sched } => sched.update_lr_at(self.class, base, groups, epoch),
            _ => Err(Error::Usage(format!(
                "{} has no get_lr() to switch to at a SequentialLR milestone (PyTorch raises \
                 NotImplementedError here)",
                self.class
            ))),
        }
    }

    /// [`step`](Self::step) without the copies that make a composite's
    /// step all or nothing (a composite's own step works on copies).
    fn step_in_place(&mut self, groups: &mut [ParamGroup]) -> Result<()> {
        match &mut self.state {
            State::Composite(c) => c.step(groups),
            _ => self.step(groups),
        }
    }

    /// Advances one step and writes each group's new `lr` (and, for
    /// OneCycleLR and CyclicLR with `cycle_momentum`, its `momentum` or
    /// `betas[0]`).
    /// Call it after the optimizer's step, as in PyTorch.
    ///
    /// Errors ([`Error::Usage`]): ReduceLROnPlateau (it needs a metric), a
    /// group count other than at construction, OneCycleLR past
    /// `total_steps`, or arithmetic that raises in Python (division by
    /// zero). On error nothing changes. A group without the keys the step
    /// reads is [`Error::InvalidState`].
    pub fn step(&mut self, groups: &mut [ParamGroup]) -> Result<()> {
        match &mut self.state {
            State::Plateau(_) => Err(Error::Usage(format!(
                "{} steps on a metric: call step_with_metric",
                self.class
            ))),
            State::Epoch { base, sched } => sched.step(self.class, base, groups),
            State::Composite(c) => {
                let mut next = c.clone();
                let mut scratch = groups.to_vec();
                next.step(&mut scratch)?;
                *c = next;
                groups.clone_from_slice(&scratch);
                Ok(())
            }
        }
    }

    /// ReduceLROnPlateau's `step(metrics)`: records `metric` and reduces
    /// the `lr`s when it has not improved for more than `patience` steps.
    /// Any other scheduler: [`Error::Usage`]. On error nothing changes.
    pub fn step_with_metric(&mut self, groups: &mut [ParamGroup], metric: f64) -> Result<()> {
        match &mut self.state {
            State::Plateau(p) => p.step(self.class, groups, metric),
            State::Epoch { .. } | State::Composite(_) => Err(Error::Usage(format!(
                "{} does not take a metric: call step",
                self.class
            ))),
        }
    }

    /// PyTorch's `get_last_lr()`: each group's `lr` after the last step.
    pub fn last_lr(&self) -> &[f64] {
        match &self.state {
            State::Epoch { base, .. } => &base.last_lr,
            State::Plateau(p) => p.last_lr(),
            State::Composite(c) => c.last_lr(),
        }
    }

    /// PyTorch's `state_dict()`: the same keys in the same order (private
    /// ones such as `_step_count`, `_is_initial`,
    /// `_get_lr_called_within_step`, `_last_lr`, OneCycleLR's
    /// `_schedule_phases` and CyclicLR's `_scale_fn_custom`, always null,
    /// included) and the same values, as JSON (see the
    /// module documentation for the encoding). A composite's ends with
    /// `_schedulers`, each child's `state_dict()`.
    pub fn state_dict(&self) -> Map<String, Value> {
        match &self.state {
            State::Epoch { base, sched } => {
                let mut m = Map::new();
                sched.write(&mut m);
                base.write(&mut m);
                sched.write_tail(&mut m);
                m
            }
            State::Plateau(p) => p.write(),
            State::Composite(c) => c.write(),
        }
    }

    /// PyTorch's `load_state_dict()`, for what its `state_dict()` produces
    /// (converted to JSON as [`state_dict`](Self::state_dict) writes it).
    /// Every key is checked before anything changes: a missing, unknown or
    /// mistyped key, or a per-group list whose length is not
    /// `groups.len()`, is [`Error::InvalidState`] naming the key, and the
    /// scheduler is left as it was. `_is_initial` and
    /// `_get_lr_called_within_step` may be absent and `verbose` present
    /// (states written by older PyTorch versions). A composite checks each
    /// entry of `_schedulers` as that child checks its own state, and a
    /// list of another length. Like PyTorch, it does not touch the groups:
    /// load the optimizer's state for those.
    pub fn load_state_dict(&mut self, state: &Map<String, Value>, groups: &[ParamGroup]) -> Result<()> {
        let mut r = StateReader::new(self.class, state, groups.len());
        let loaded = match &self.state {
            State::Epoch { sched, .. } => {
                let sched = sched.read_like(&mut r)?;
                State::Epoch {
                    base: Base::read(&mut r)?,
                    sched,
                }
            }
            State::Plateau(_) => State::Plateau(Plateau::read(&mut r)?),
            State::Composite(c) => State::Composite(Box::new(c.read_like(&mut r, groups)?)),
        };
        r.finish()?;
        self.state = loaded;
        Ok(())
    }
}
