//! Optimizers with torch.optim's math and `state_dict()` layout: SGD,
//! Adam, AdamW, RMSprop, Adagrad, Adamax, NAdam, RAdam, Adadelta, Rprop,
//! ASGD, Adafactor, Muon and LBFGS under PyTorch's names and kwargs
//! (SparseAdam is refused: it needs sparse gradients).
//! tch 0.26 has optimizers but exposes none of their state, so these are
//! implemented here on tch tensors, op for op as PyTorch 2.13 does.
//!
//! - [`Optimizer`] (optimizer.rs): construction, step loop, state dict.
//! - algorithm.rs: the names, and dispatch to each algorithm's file.
//! - sgd.rs, adam.rs (Adam and AdamW), rmsprop.rs, adagrad.rs, adamax.rs,
//!   nadam.rs, radam.rs, adadelta.rs, rprop.rs, asgd.rs, adafactor.rs,
//!   muon.rs: each algorithm's
//!   hyperparameter table, state keys and step.
//! - options.rs: hyperparameter checks, kwargs into group options.
//! - state.rs: per-parameter state, its helpers and loaded-state checks.
//! - group.rs: [`ParamGroup`], shared with the schedulers (no tch).
//! - kernels.rs: the ATen ops with scalars that tch leaves out.
//! - lbfgs/: LBFGS, whose step takes a closure and whose state is
//!   global (kept under the first parameter, as PyTorch keeps it).
//! - user.rs: optimizer classes a user registers ([`OptimizerClass`]),
//!   and `Class`, a built-in algorithm or a registered class.

#[cfg(feature = "torch")]
mod adadelta;
#[cfg(feature = "torch")]
mod adafactor;
#[cfg(feature = "torch")]
mod adagrad;
#[cfg(feature = "torch")]
mod adam;
#[cfg(feature = "torch")]
mod adamax;
#[cfg(feature = "torch")]
mod algorithm;
#[cfg(feature = "torch")]
mod asgd;
mod group;
#[cfg(feature = "torch")]
pub(crate) mod kernels;
#[cfg(feature = "torch")]
mod lbfgs;
#[cfg(feature = "torch")]
mod muon;
#[cfg(feature = "torch")]
mod nadam;
#[cfg(feature = "torch")]
mod optimizer;
#[cfg(feature = "torch")]
mod options;
#[cfg(feature = "torch")]
mod radam;
#[cfg(feature = "torch")]
mod rmsprop;
#[cfg(feature = "torch")]
mod rprop;
#[cfg(feature = "torch")]
mod sgd;
#[cfg(feature = "torch")]
mod state;
#[cfg(feature = "torch")]
mod user;

#[cfg(feature = "torch")]
pub use algorithm::{
    names, ADADELTA, ADAFACTOR, ADAGRAD, ADAM, ADAMAX, ADAMW, ASGD, LBFGS, MUON, NADAM, RADAM, RMSPROP, RPROP, SGD,
    SPARSE_ADAM,
};
pub use group::ParamGroup;
#[cfg(feature = "torch")]
pub use optimizer::Optimizer;
#[cfg(feature = "torch")]
pub use state::{OptimizerState, ParamState};
#[cfg(feature = "torch")]
use user::Class;
#[cfg(feature = "torch")]
pub(crate) use user::UserClass;
#[cfg(feature = "torch")]
pub use user::{OptimizerClass, StateKey, StateShape};
