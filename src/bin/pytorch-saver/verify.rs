//! `pytorch-saver verify FILE...`: validate files completely.

use std::path::PathBuf;
use std::process::ExitCode;

use pytorch_saver::format::{Checkpoint, ReadOptions};

use crate::progress_bar;

/// Validate files completely (layout, CRC-32, schema, tensors); exit 0
/// when all are valid, 1 otherwise. On a terminal, a progress bar per
/// file shows how much of it is checked.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    let mut ok = true;
    for f in &args.files {
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
