//! `pytorch-saver consolidate LOCATION OUT.zip`: one ordinary file from a
//! sharded checkpoint.

use std::process::ExitCode;

use pytorch_saver::format::{Checkpoint, MemberName, ReadOptions};
use pytorch_saver::sharded::consolidate;

/// Write a sharded checkpoint (a directory or object-store prefix holding
/// index.json, or the index itself) as one file: a model container's
/// checkpoint as the checkpoint or inference file it describes, anything
/// else as a weights file. Every shard is verified first; OUT.zip must not
/// exist. Exit 0 on success, 1 on failure.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sharded checkpoint: its directory or prefix URL, or its index.json.
    location: String,
    /// The file to write (ending in .zip; a path or an object-store URL).
    out: String,
}

pub fn run(args: Args) -> ExitCode {
    match consolidate(&args.location, &args.out) {
        Ok(written) => {
            // Only a summary: the writer already checked what it wrote.
            let summary = Checkpoint::open_with(
                &written,
                ReadOptions {
                    verify: false,
                    progress: None,
                },
            )
            .map(|c| {
                let count = |m| c.tensors(m).len();
                format!(
                    "{} file, {} model and {} optimizer tensors",
                    c.metadata().kind.as_str(),
                    count(MemberName::Model),
                    count(MemberName::Optimizer)
                )
            })
            .unwrap_or_else(|e| format!("written, but it does not open: {e}"));
            println!("consolidated {} into {written} ({summary})", args.location);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pytorch-saver: consolidate {}: {e}", args.location);
            ExitCode::FAILURE
        }
    }
}
