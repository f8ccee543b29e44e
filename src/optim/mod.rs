//! Optimizers with torch.optim's math and `state_dict()` layout: SGD,
//! Adam, AdamW, RMSprop and Adagrad under PyTorch's names and kwargs.
//! tch 0.26 has optimizers but exposes none of their state, so these are
//! implemented here on tch tensors, op for op as PyTorch 2.13 does.

mod group;
#[cfg(feature = "torch")]
pub(crate) mod kernels;
#[cfg(feature = "torch")]
mod optimizer;

pub use group::ParamGroup;
#[cfg(feature = "torch")]
pub use optimizer::{names, Optimizer, OptimizerState, ParamState, ADAGRAD, ADAM, ADAMW, RMSPROP, SGD};
