//! `pytorch-saver verify FILE...`: validate files, or sharded checkpoints,
//! completely.

use std::path::PathBuf;
use std::process::ExitCode;

use pytorch_saver::format::{Checkpoint, FormatError, ReadOptions};
use pytorch_saver::sharded::{is_sharded_location, ShardedCheckpoint};

use crate::progress_bar;

/// Validate files completely (layout, CRC-32, schema, tensors); exit 0
/// when all are valid, 1 otherwise. On a terminal, a progress bar per
/// file shows how much of it is checked. A directory, an index.json or an
/// object-store prefix is a sharded checkpoint: its index, the tiling of
/// every tensor and every shard (all of each shard's checks and CRC-32s).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The files to check (or sharded checkpoints: a directory, a prefix
    /// URL or an index.json).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    let mut ok = true;
    for f in &args.files {
        if let Some(location) = f.to_str().filter(|l| is_sharded_location(l)) {
            match verify_sharded(location) {
                Ok(shards) => println!("OK {location} (sharded, {shards} shards)"),
                Err(e) => {
                    ok = false;
                    println!("FAIL {location}: {e}");
                }
            }
            continue;
        }
        let bar = progress_bar::on_terminal(&f.display().to_string());
        let options = ReadOptions {
            progress: bar.as_ref().map(|(progress, _)| progress.clone()),
            ..ReadOptions::default()
        };
        let result = Checkpoint::open_with(f, options);
        // The bar clears itself before the file's line is printed.
        drop(bar);
        match result {
            Ok(_) => println!("OK {}", f.display()),
            Err(e) => {
                ok = false;
                println!("FAIL {}: {e}", f.display());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every check of FORMAT.md 13.5 on a sharded checkpoint: the shard count.
fn verify_sharded(location: &str) -> Result<usize, FormatError> {
    let sharded = ShardedCheckpoint::open(location)?;
    sharded.verify()?;
    Ok(sharded.index().shards.len())
}
