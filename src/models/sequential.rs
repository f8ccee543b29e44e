//! The portable `Sequential` (docs/MODELS.md): a list of layers described
//! in JSON by their PyTorch class names and constructor arguments, with
//! `torch.nn.Sequential`'s state-dict names. Python trains it as an
//! ordinary `nn.Sequential`; Rust, C, C++ and Go run it with no model code.
//!
//! - layer_spec.rs: the kwargs language, each layer read and validated
//!   into a `LayerSpec` (no tensors).
//! - layout.rs: each layer's state tensors (names, kinds, shapes, init),
//!   computed from its spec alone; the model's layout for a loader.
//! - model.rs: the built model, its tensors and forward pass.

mod layer_spec;
mod layout;
mod model;

pub use layer_spec::LAYER_TYPES;
pub(crate) use layout::layout;
pub(crate) use model::build;
pub use model::Sequential;

/// Registry name of the portable Sequential.
pub const SEQUENTIAL: &str = "pytorch_saver.models.Sequential";
