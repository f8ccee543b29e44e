//! `pytorch-saver ls` (being built).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> ExitCode {
    eprintln!("pytorch-saver: ls is not built yet");
    ExitCode::from(2)
}
