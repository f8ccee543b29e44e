//! `pytorch-saver`: look into, check, compare and convert checkpoint files
//! from the shell. `pytorch-saver --help` lists the commands; options may
//! come before or after the file arguments.
//!
//! Exit status: 0 on success, 1 when the operation failed (or, for
//! `verify` and `diff`, found invalid or different files), 2 on a usage
//! error (and, for `diff`, when a file cannot be read).

mod consolidate;
mod convert;
mod diff;
mod inspect;
mod ls;
mod progress_bar;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pytorch-saver",
    version,
    about = "Inspect, verify, compare, convert and consolidate pytorch-saver checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Inspect(inspect::Args),
    Verify(verify::Args),
    Convert(convert::Args),
    Consolidate(consolidate::Args),
    Diff(diff::Args),
    Ls(ls::Args),
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of the output goes
    // away (`pytorch-saver ls DIR --json | head`) instead of failing to print.
    // SAFETY: restoring the default disposition of one signal, before any
    // thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match Cli::parse().command {
        Command::Inspect(args) => inspect::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Consolidate(args) => consolidate::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Ls(args) => ls::run(args),
    }
}
