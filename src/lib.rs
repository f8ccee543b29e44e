//! pytorch-saver: one checkpoint format for PyTorch training state (model,
//! optimizer and scheduler state with their class names and constructor
//! kwargs), and the Rust core that writes and reads it on tch/libtorch.
//!
//! - [`format`]: format v1 alone (ZIP of safetensors members + JSON), no tch.
//! - [`registry`]: class name -> factory, so that a file rebuilds its objects.
//! - [`models`]: built-in models with PyTorch's state-dict names.
//! - [`optim`]: torch.optim's optimizers, same math and state layout.
//! - [`sched`]: torch.optim.lr_scheduler's schedulers, same math and state.
//! - [`ModelContainer`]: initialize, save, save_inference, load, restore.
//! - [`InferenceModel`]: a loaded model that many threads run at once.
//! - [`sharded`]: sharded checkpoints (one shard per rank and an index)
//!   read as one, and consolidated into one file.
//! - [`tch_bridge`]: tch tensors to and from the format's tensors, and
//!   tensors over a checkpoint's mapped memory (zero-copy loads).
//! - [`capi`]: the C ABI (`include/pytorch_saver.h`) over all of it.

// The C ABI gates itself on `torch` (an inner attribute), so that cbindgen
// reads it without a `[defines]` entry; cbindgen reads nothing else.
pub mod capi;
/// cbindgen:ignore
#[cfg(feature = "torch")]
pub mod container;
/// cbindgen:ignore
pub mod convert;
/// cbindgen:ignore
pub mod diff;
/// cbindgen:ignore
pub mod error;
/// cbindgen:ignore
#[cfg(feature = "torch")]
pub mod extra_state;
/// cbindgen:ignore
mod fault;
/// cbindgen:ignore
pub mod format;
/// cbindgen:ignore
#[cfg(feature = "torch")]
pub mod inference;
/// cbindgen:ignore
pub mod kwargs;
/// cbindgen:ignore
pub mod manager;
/// cbindgen:ignore
#[cfg(feature = "torch")]
pub mod models;
/// cbindgen:ignore
pub mod optim;
/// cbindgen:ignore
pub mod progress;
/// cbindgen:ignore
#[cfg(feature = "torch")]
pub mod registry;
/// cbindgen:ignore
pub mod sched;
/// cbindgen:ignore
pub mod sharded;
/// Checkpoints at object store URLs (s3://, gs://, az://) as well as paths.
/// cbindgen:ignore
pub mod storage;
/// cbindgen:ignore
#[cfg(feature = "torch")]
pub mod tch_bridge;

#[cfg(feature = "torch")]
pub use container::{ClassSpec, ContainerSpec, LoadOptions, MetadataValue, Model, ModelContainer, Parts, UserMetadata};
pub use error::{Error, Result};
#[cfg(feature = "torch")]
pub use inference::InferenceModel;
pub use kwargs::Kwargs;
pub use progress::Progress;
#[cfg(feature = "torch")]
pub use registry::{BoxedModel, Forward, Registry, TensorSpec};

/// The libtorch version tch 0.26 binds, recorded in every file we write.
///
/// cbindgen:ignore
pub const TORCH_VERSION: &str = "2.13.0";
