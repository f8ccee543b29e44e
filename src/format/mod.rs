//! Format versions 1 and 2: the ZIP layout, the `metadata.json` schema
//! (with version 2's typed values, extra state, weights kind and manager
//! block), the safetensors members, a validating reader of both versions
//! and a streaming atomic writer of either. Nothing here depends on tch;
//! `docs/FORMAT.md` is the normative text.

mod error;
pub(crate) mod json;
mod lazy;
pub mod metadata;
pub(crate) mod publish;
mod reader;
mod tensors;
mod writer;
mod zip;

pub use error::FormatError;
pub use lazy::LazyCheckpoint;
pub use metadata::typed;
pub use metadata::{
    ClassSpec, ExtraEntry, FileKind, ManagerRecord, Metadata, OptimizerMetadata, Producer, SchedulerMetadata,
    FORMAT_VERSION, INTERNALS_KEY, RESERVED_KEYS,
};
#[cfg(feature = "torch")]
pub(crate) use reader::threads_for;
pub use reader::{Checkpoint, Member, PrivateMapping, ReadOptions};
pub use tensors::{dtype_name, dtype_size, Dtype, TensorEntry, DTYPES};
pub use writer::{write_checkpoint, BytesTensor, TensorMember, TensorSource, WriteOptions};
pub use zip::ALIGNMENT;

/// The members a file may hold, in the order they must appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberName {
    /// `metadata.json`: every non-tensor value.
    Metadata,
    /// `model.safetensors`: the model's state dict.
    Model,
    /// `optimizer.safetensors`: per-parameter optimizer state tensors.
    Optimizer,
    /// `extra.safetensors`: the tensors of the extra training state
    /// (version 2).
    Extra,
}

impl MemberName {
    pub const ALL: [MemberName; 4] = [
        MemberName::Metadata,
        MemberName::Model,
        MemberName::Optimizer,
        MemberName::Extra,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberName::Metadata => "metadata.json",
            MemberName::Model => "model.safetensors",
            MemberName::Optimizer => "optimizer.safetensors",
            MemberName::Extra => "extra.safetensors",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl std::fmt::Display for MemberName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
