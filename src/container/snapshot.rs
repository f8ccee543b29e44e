//! A save split in two: [`ModelContainer::snapshot`] copies every tensor a
//! checkpoint holds (model, optimizer and tracked extra state) into one
//! byte buffer and decides the metadata, so that training may go on;
//! [`Snapshot::write`] then writes the file from the buffer, on any thread.
//! The buffer goes back to the caller for the next snapshot: a buffer of
//! the right size is reused, so its pages are touched once, not per save.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::ModelContainer;
use crate::error::Result;
use crate::format::{
    self, BytesTensor, Dtype, FileKind, ManagerRecord, MemberName, Metadata, TensorMember, TensorSource, WriteOptions,
};
use crate::tch_bridge::TchSource;

/// One tensor of a snapshot: where its bytes lie in the buffer.
struct SnapshotTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

/// A checkpoint's content, copied out of the live objects: what
/// [`Snapshot::write`] writes.
pub struct Snapshot {
    metadata: Metadata,
    stem: String,
    members: Vec<(MemberName, Vec<SnapshotTensor>)>,
    buffer: Vec<u8>,
    write_options: WriteOptions,
}

impl ModelContainer {
    /// Copies what [`save`](Self::save) would write, with `record` as the
    /// manager block, into `buffer` (grown when it is too small, reused
    /// as it is otherwise) and returns it as a [`Snapshot`].
    pub(crate) fn snapshot(
        &self,
        prefix: &str,
        user: &super::UserMetadata,
        record: Option<ManagerRecord>,
        mut buffer: Vec<u8>,
    ) -> Result<Snapshot> {
        let plan = self.plan_save(prefix, user, FileKind::Checkpoint, record)?;
        let mut members = Vec::with_capacity(plan.members.len());
        let mut layout = Vec::new();
        let mut total = 0usize;
        for (member, tensors) in &plan.members {
            let mut described = Vec::with_capacity(tensors.len());
            for (name, tensor) in tensors {
                let source = TchSource::new(name.clone(), tensor)?;
                let len = tensor.numel() * source.dtype().bitsize() / 8;
                described.push(SnapshotTensor {
                    name: name.clone(),
                    dtype: source.dtype(),
                    shape: source.shape(),
                    range: total..total + len,
                });
                layout.push(source);
                total += len;
            }
            members.push((*member, described));
        }
        if buffer.len() < total {
            // A new allocation, zeroed: its pages are touched by the copy
            // below once, and by no later snapshot of the same layout.
            buffer = vec![0u8; total];
        }
        let mut at = 0usize;
        for source in &layout {
            let bytes = source
                .bytes()
                .map_err(|e| format::FormatError::io("cannot read tensor data for", source.name(), e))?;
            buffer[at..at + bytes.len()].copy_from_slice(&bytes);
            at += bytes.len();
        }
        Ok(Snapshot {
            metadata: plan.metadata,
            stem: plan.stem,
            members,
            buffer,
            write_options: self.write_options.clone(),
        })
    }
}

impl Snapshot {
    /// Writes the snapshot into `dir` as section 8 of FORMAT.md requires,
    /// named as [`ModelContainer::save`] names a checkpoint.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let tensors: Vec<Vec<BytesTensor<'_>>> = self
            .members
            .iter()
            .map(|(_, tensors)| {
                tensors
                    .iter()
                    .map(|t| BytesTensor {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        data: Cow::Borrowed(&self.buffer[t.range.clone()]),
                    })
                    .collect()
            })
            .collect();
        let members: Vec<TensorMember<'_>> = self
            .members
            .iter()
            .zip(&tensors)
            .map(|((name, _), tensors)| TensorMember {
                name: *name,
                tensors: tensors.iter().map(|t| t as &dyn TensorSource).collect(),
            })
            .collect();
        Ok(format::write_checkpoint(
            dir,
            &self.stem,
            &self.metadata,
            &members,
            &self.write_options,
        )?)
    }

    /// The buffer, for the next snapshot.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buffer
    }
}
