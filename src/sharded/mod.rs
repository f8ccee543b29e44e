//! Sharded checkpoints (FORMAT.md section 13): what the ranks of a
//! distributed job save together, one shard file per rank and an
//! `index.json` that ties them together, read here as one logical
//! checkpoint. Needs no tch (but for [`ShardedCheckpoint::tensor`]).
//!
//! - `index.rs`: the one owner of the index's schema ([`ShardIndex`]):
//!   parsing and checking it, the chunks' tiling included (13.5 steps 2
//!   and 3);
//! - `checkpoint.rs`: [`ShardedCheckpoint`], which finds the index (step
//!   1), opens every shard and checks it against the index (step 4),
//!   assembles tensors and verifies every shard's CRCs;
//! - `consolidate.rs`: [`consolidate`], one ordinary file from a sharded
//!   checkpoint.

mod checkpoint;
mod consolidate;
pub mod index;

pub use checkpoint::{is_sharded_location, ShardedCheckpoint};
pub use consolidate::consolidate;
pub use index::{
    Chunk, ContainerInfo, IndexTensor, ShardEntry, ShardIndex, INDEX_FILE, INDEX_FORMAT, INDEX_FORMAT_VERSION,
};
