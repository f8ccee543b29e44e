//! Optimizers with torch.optim's math and `state_dict()` layout.

mod group;

pub use group::ParamGroup;
