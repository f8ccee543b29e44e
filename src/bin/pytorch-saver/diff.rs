//! `pytorch-saver diff A B [--json]`: what differs between two files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pytorch_saver::diff::{diff, MetadataDiff, Report, TensorChange, TensorDiff};
use pytorch_saver::format::Checkpoint;
use serde_json::Value;

/// Compare two files (metadata path by path, tensors value by value); exit
/// 0 when they are equal (the timestamp aside), 1 when they differ, 2 when
/// a file cannot be read.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The first file.
    a: PathBuf,
    /// The second file.
    b: PathBuf,
    /// Print one JSON document instead of a report (its shape: the
    /// `pytorch_saver::diff::Report` documentation, or README.md).
    #[arg(long)]
    json: bool,
}

/// Exit status for a file that cannot be read.
const UNREADABLE: u8 = 2;

fn open(path: &Path) -> Result<Checkpoint, ExitCode> {
    Checkpoint::open(path).map_err(|e| {
        eprintln!("pytorch-saver: {}: {e}", path.display());
        ExitCode::from(UNREADABLE)
    })
}

pub fn run(args: Args) -> ExitCode {
    let (a, b) = match (open(&args.a), open(&args.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let report = diff(&a, &b);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        );
    } else {
        print_report(&report);
    }
    if report.identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(r: &Report) {
    println!("--- a {}", r.a.display());
    println!("+++ b {}", r.b.display());
    if !r.metadata.is_empty() {
        println!();
        println!("metadata");
        for m in &r.metadata {
            println!("  {}", metadata_line(m));
        }
    }
    let mut members: Vec<&str> = r.tensors.iter().map(|t| t.member.as_str()).collect();
    members.dedup();
    for member in members {
        let tensors: Vec<&TensorDiff> = r.tensors.iter().filter(|t| t.member == member).collect();
        let equal = tensors.iter().filter(|t| t.change.is_equal()).count();
        println!();
        println!("{member} ({} tensors, {equal} equal)", tensors.len());
        for t in tensors.iter().filter(|t| !t.change.is_equal()) {
            println!("  {}", tensor_line(t));
        }
    }
    println!();
    match r.differences {
        0 => println!("identical"),
        1 => println!("1 difference"),
        n => println!("{n} differences"),
    }
}

fn show(v: &Option<Value>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "(absent)".into(),
    }
}

fn metadata_line(m: &MetadataDiff) -> String {
    let note = if m.counted { "" } else { "  (not counted)" };
    format!("{}: {} -> {}{note}", m.path, show(&m.a), show(&m.b))
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6e}")
    } else {
        "inf".into()
    }
}

fn tensor_line(t: &TensorDiff) -> String {
    let name = &t.name;
    match &t.change {
        TensorChange::Equal { dtype, shape } => format!("{name}: equal {dtype} {shape:?}"),
        TensorChange::Values {
            dtype,
            shape,
            max_abs_diff,
            max_rel_diff,
            elements_differing,
        } => {
            let numel: usize = shape.iter().product();
            format!(
                "{name}: {dtype} {shape:?} max abs diff {}, max rel diff {} ({elements_differing} of {numel} elements differ)",
                number(*max_abs_diff),
                number(*max_rel_diff)
            )
        }
        TensorChange::OnlyInA { dtype, shape } => format!("{name}: only in a ({dtype} {shape:?})"),
        TensorChange::OnlyInB { dtype, shape } => format!("{name}: only in b ({dtype} {shape:?})"),
        TensorChange::Renamed {
            renamed_to,
            dtype,
            shape,
        } => format!("{name}: renamed {name} -> {renamed_to} ({dtype} {shape:?}, same bytes)"),
        TensorChange::Dtype {
            dtype_a,
            dtype_b,
            shape_a,
            shape_b,
        } => format!("{name}: dtype changed {dtype_a} {shape_a:?} -> {dtype_b} {shape_b:?}"),
        TensorChange::Shape {
            dtype,
            shape_a,
            shape_b,
        } => format!("{name}: shape changed {shape_a:?} -> {shape_b:?} ({dtype})"),
    }
}
