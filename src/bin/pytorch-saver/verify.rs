//! `pytorch-saver verify FILE...`: validate files completely.

use std::path::PathBuf;
use std::process::ExitCode;

use pytorch_saver::format::Checkpoint;

/// Validate files completely (layout, CRC-32, schema, tensors); exit 0
/// when all are valid, 1 otherwise.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    let mut ok = true;
    for f in &args.files {
        match Checkpoint::open(f) {
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
