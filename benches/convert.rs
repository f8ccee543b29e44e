//! Conversion of a 1 GiB `torch.save` file into this format, side by side
//! in one run: raw I/O of the same bytes (the floor), `convert` in Rust
//! with and without a progress callback, `pytorch_saver.convert` in Python,
//! and what users reach for today, `torch.load(mmap=True,
//! weights_only=True)` followed by safetensors' `save_file`. Prints medians
//! (with the fastest and slowest run) and ratios; asserts nothing.
//!
//!     cargo bench --bench convert [-- --runs N] [-- --dir DIR] [-- --mib N]
//!
//! The input is a transformer-like state dict of float32 tensors (67
//! tensors of mixed sizes, about `--mib` MiB, default 1024) written once by
//! the real `torch.save` in a child of the venv's python (or $PYTHON),
//! through benches/convert.py. The runs go round-robin over the contenders
//! (the two Rust conversions taking turns at going first); before each,
//! the input is read through the page cache (untimed) and the previous
//! output removed. The Python contenders run in a fresh child each and are
//! timed inside it after its imports: process start and import time are
//! excluded. Durability is not equal: ours and the raw copy fsync their
//! output, safetensors' `save_file` does not; it is shown both ways (the
//! child fsyncs after timing it, so that no contender pays for another's
//! writeback). Files go to a temporary directory under `--dir` (default
//! target/bench-data), removed at the end.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pytorch_saver::convert::{convert, ConvertOptions};
use pytorch_saver::Progress;
use serde_json::Value;

const MIB: f64 = (1 << 20) as f64;

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn python() -> PathBuf {
    std::env::var_os("PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    })
}

/// Runs benches/convert.py with `args`; its one line of JSON.
fn python_child(args: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/convert.py");
    let py = python();
    let out = Command::new(&py)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "convert.py {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("convert.py {}: not JSON ({e}): {text}", args.join(" ")))
}

fn seconds(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Reads a file through the page cache, as a user's recent write leaves it.
fn warm(path: &Path) {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 16 << 20];
    while f.read(&mut buf).unwrap() > 0 {}
}

/// Removes what the previous run wrote, so that every run creates its file.
fn remove(path: &Path) {
    if path.exists() {
        std::fs::remove_file(path).unwrap();
    }
}

/// The floor: read the input and write the same bytes, then fsync.
fn raw_copy(input: &Path, output: &Path) {
    let mut src = File::open(input).unwrap();
    let mut dst = File::create(output).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).unwrap();
    }
    dst.sync_all().unwrap();
}

/// The median, the fastest and the slowest of the runs.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = arg(&args, "--runs").unwrap_or(5);
    let mib: u64 = arg(&args, "--mib").unwrap_or(1024);
    let dir: PathBuf =
        arg(&args, "--dir").unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    std::fs::create_dir_all(&dir).unwrap();
    let work = tempfile::tempdir_in(&dir).unwrap();
    let d = work.path();

    let input = d.join("state_dict.pt");
    let made = python_child(&["make", input.to_str().unwrap(), &mib.to_string()]);
    let input_len = std::fs::metadata(&input).unwrap().len();
    println!(
        "state dict: {} float32 tensors, {:.1} MiB of data (torch.save file {:.1} MiB); \
         {runs} runs each, round-robin, median; input in the page cache; files in {}",
        made["tensors"],
        made["bytes"].as_f64().unwrap_or(0.0) / MIB,
        input_len as f64 / MIB,
        dir.display()
    );

    let raw_out = d.join("raw.bin");
    let rust_out = d.join("rust.zip");
    let progress_out = d.join("rust-progress.zip");
    let py_out = d.join("python.zip");
    let st_out = d.join("anchor.safetensors");
    let path = |p: &Path| p.to_str().unwrap().to_owned();

    let calls = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let sink = calls.clone();
    let with_progress = ConvertOptions {
        progress: Some(Progress::new(move |done, total| {
            sink.lock().unwrap().push((done, total))
        })),
        ..ConvertOptions::default()
    };

    let (mut raw, mut rust, mut rust_progress, mut py) = (vec![], vec![], vec![], vec![]);
    let (mut st, mut st_fsync) = (vec![], vec![]);
    let t_start = Instant::now();
    for round in 0..runs {
        let timed = |out: &Path, f: &mut dyn FnMut()| {
            remove(out);
            warm(&input);
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        raw.push(timed(&raw_out, &mut || raw_copy(&input, &raw_out)));
        // With and without the callback in turn first, so that neither
        // always follows the same contender.
        for with in [round % 2 == 1, round % 2 == 0] {
            if with {
                calls.lock().unwrap().clear();
                rust_progress.push(timed(&progress_out, &mut || {
                    convert(&input, &progress_out, &with_progress).unwrap();
                }));
            } else {
                rust.push(timed(&rust_out, &mut || {
                    convert(&input, &rust_out, &ConvertOptions::default()).unwrap();
                }));
            }
        }
        remove(&py_out);
        warm(&input);
        py.push(seconds(
            &python_child(&["ours", &path(&input), &path(&py_out)]),
            "seconds",
        ));
        remove(&st_out);
        warm(&input);
        let v = python_child(&["safetensors", &path(&input), &path(&st_out)]);
        st.push(seconds(&v, "seconds"));
        st_fsync.push(seconds(&v, "seconds_fsync"));
        println!(
            "  round {}/{runs} done ({:.0} s)",
            round + 1,
            t_start.elapsed().as_secs_f64()
        );
    }
    let calls = calls.lock().unwrap().clone();

    let raw = spread(raw);
    let rust = spread(rust);
    let rust_progress = spread(rust_progress);
    println!();
    println!(
        "{:<54} {:>9} {:>15} {:>8} {:>9}",
        "torch.save file -> weights file", "median s", "min-max s", "vs raw", "MiB/s in"
    );
    for (name, (t, lo, hi)) in [
        ("raw read + write + fsync of the same bytes (floor)", raw),
        ("pytorch-saver convert (Rust)", rust),
        ("pytorch-saver convert (Rust) + progress callback", rust_progress),
        ("pytorch_saver.convert (Python)*", spread(py)),
        ("torch.load(mmap) + safetensors save_file, no fsync*", spread(st)),
        ("torch.load(mmap) + safetensors save_file + fsync*", spread(st_fsync)),
    ] {
        println!(
            "{name:<54} {t:>9.3} {:>15} {:>7.2}x {:>9.0}",
            format!("{lo:.3}-{hi:.3}"),
            t / raw.0,
            input_len as f64 / MIB / t
        );
    }
    println!("* timed inside a fresh Python process after its imports (process start excluded)");
    println!();
    let first = calls.first().copied().unwrap_or_default();
    let last = calls.last().copied().unwrap_or_default();
    println!(
        "progress callback: {} calls in the last run, first ({}, {}), last ({}, {})",
        calls.len(),
        first.0,
        first.1,
        last.0,
        last.1
    );
    println!(
        "progress overhead (with / without callback): {:.3}x {}",
        rust_progress.0 / rust.0,
        if rust_progress.0 <= 1.05 * rust.0 {
            "met (<= 1.05x)"
        } else {
            "MISSED (> 1.05x)"
        }
    );
}
