//! The Rust side of the load benchmark (benches/load.py): loads of a 1 GiB
//! checkpoint through the C ABI's plain functions, one per process.
//!
//!     cargo bench --bench load_capi [-- --runs N] [-- --dir DIR]
//!
//! Run without a mode, it starts the Python orchestrator (benches/load.py,
//! with the venv's python or $PYTHON), handing it its own path and any
//! arguments; the orchestrator makes the files, runs every contender
//! (anchors in Python, ours in Python and through this binary) in fresh
//! child processes and prints the table. The modes it calls:
//!
//!     load_capi --child load|load-noverify|restore|restore-noverify FILE
//!         one load, then one float of every 4 KiB page of every
//!         parameter; prints one JSON line (seconds, baseline VmRSS and
//!         VmHWM in KiB, a checksum of the floats read)
//!     load_capi --pss-child FILE
//!         prints "ready", waits for a line on stdin, loads zero-copy and
//!         touches every page, prints "loaded", waits for a line, exits

use std::ffi::{c_char, c_void, CStr, CString};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Command;
use std::ptr;
use std::time::Instant;

use pytorch_saver::capi::*;
use tch::{Kind, Tensor};

/// The MLP's kwargs; PTS_LOAD_BENCH_DIM (default 8192) shrinks it for a
/// quick trial of the benchmark itself, as in load.py.
fn kwargs() -> String {
    let dim: u64 = std::env::var("PTS_LOAD_BENCH_DIM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8192);
    format!(r#"{{"in_dim": {dim}, "hidden_dim": {dim}, "n_classes": {dim}, "n_layers": 3}}"#)
}

/// Panics with the library's message when a call failed.
fn check(err: *mut pts_error_t, what: &str) {
    if !err.is_null() {
        // SAFETY: a live error object the library returned; freed once.
        let msg = unsafe { CStr::from_ptr(pts_error_message(err)) }
            .to_string_lossy()
            .into_owned();
        unsafe { pts_error_free(err) };
        panic!("{what}: {msg}");
    }
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("a VmRSS/VmHWM line")
}

/// Reads one f32 of every 4 KiB page of every parameter (and the last
/// one), as a user touching the weights; returns the sum of their
/// absolute values, so that runs can be compared.
fn touch(c: *const pts_container_t) -> f64 {
    let mut count = 0usize;
    check(
        unsafe { pts_container_parameter_count(c, &mut count) },
        "parameter_count",
    );
    let mut sum = 0.0f64;
    for i in 0..count {
        let mut name: *const c_char = ptr::null();
        let mut handle: *mut pts_tensor_t = ptr::null_mut();
        check(
            unsafe { pts_container_parameter(c, i, &mut name, &mut handle) },
            "parameter",
        );
        let mut at: *const c_void = ptr::null();
        check(unsafe { pts_tensor_torch_ptr(handle, &mut at) }, "torch_ptr");
        // SAFETY: `at` is a live at::Tensor* of the libtorch tch links;
        // at_shallow_clone takes a new reference, which the tch tensor owns.
        let t = unsafe { Tensor::from_ptr(torch_sys::at_shallow_clone(at as *mut torch_sys::C_tensor)) };
        assert_eq!(t.kind(), Kind::Float, "an f32 parameter");
        assert!(t.is_contiguous(), "a contiguous parameter");
        let n = t.numel();
        let data = t.data_ptr() as *const f32;
        let mut idx = (0..n).step_by(1024).collect::<Vec<_>>();
        if n > 0 {
            idx.push(n - 1);
        }
        for j in idx {
            // SAFETY: j < numel of a contiguous f32 tensor alive here.
            sum += f64::from(unsafe { ptr::read_volatile(data.add(j)) }.abs());
        }
        drop(t);
        unsafe { pts_tensor_free(handle) };
    }
    sum
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// Options with the CRC check off (the caller frees them).
fn no_verify() -> *mut pts_load_options_t {
    let mut o: *mut pts_load_options_t = ptr::null_mut();
    check(unsafe { pts_load_options_new(&mut o) }, "load_options_new");
    check(unsafe { pts_load_options_set_verify(o, false) }, "set_verify");
    o
}

/// An initialized MLP container (its parameters written, so resident).
fn initialized() -> *mut pts_container_t {
    let mut c: *mut pts_container_t = ptr::null_mut();
    check(unsafe { pts_container_new(ptr::null(), &mut c) }, "container_new");
    let (class, kwargs) = (cstring("pytorch_saver.models.MLP"), cstring(&kwargs()));
    check(
        unsafe {
            pts_container_initialize(
                c,
                class.as_ptr(),
                kwargs.as_ptr(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
            )
        },
        "initialize",
    );
    c
}

/// libtorch initialized before the baseline, as in a process that has
/// already used it.
fn warm_up() {
    let _ = Tensor::ones([16], (Kind::Float, tch::Device::Cpu)).sum(Kind::Float);
}

fn fresh_load(path: &CStr, options: *const pts_load_options_t) -> *mut pts_container_t {
    let mut c: *mut pts_container_t = ptr::null_mut();
    let mut meta: *mut c_char = ptr::null_mut();
    check(
        unsafe { pts_container_load_ex(ptr::null(), path.as_ptr(), options, &mut c, &mut meta) },
        "container_load",
    );
    unsafe { pts_string_free(meta) };
    c
}

fn child(mode: &str, file: &str) {
    warm_up();
    let path = cstring(file);
    let restore = mode.starts_with("restore");
    let options = if mode.ends_with("-noverify") {
        no_verify()
    } else {
        ptr::null_mut()
    };
    let held = if restore { initialized() } else { ptr::null_mut() };
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (Linux >= 4.0)");
    let base = vm_kib("VmRSS:");
    let t = Instant::now();
    let c = match mode {
        "load" => unsafe {
            let mut c: *mut pts_container_t = ptr::null_mut();
            let mut meta: *mut c_char = ptr::null_mut();
            check(
                pts_container_load(ptr::null(), path.as_ptr(), &mut c, &mut meta),
                "load",
            );
            pts_string_free(meta);
            c
        },
        "load-noverify" => fresh_load(&path, options),
        "restore" | "restore-noverify" => {
            let mut meta: *mut c_char = ptr::null_mut();
            let err = if mode == "restore" {
                unsafe { pts_container_restore(held, path.as_ptr(), &mut meta) }
            } else {
                unsafe { pts_container_restore_ex(held, path.as_ptr(), options, &mut meta) }
            };
            check(err, "restore");
            unsafe { pts_string_free(meta) };
            held
        }
        _ => panic!("unknown mode {mode}"),
    };
    let sum = touch(c);
    let seconds = t.elapsed().as_secs_f64();
    let peak = vm_kib("VmHWM:");
    println!(r#"{{"seconds": {seconds}, "base_kib": {base}, "peak_kib": {peak}, "check": {sum}}}"#);
    unsafe {
        pts_container_free(c);
        pts_load_options_free(options);
    }
}

fn pss_child(file: &str) {
    warm_up();
    let path = cstring(file);
    let stdin = std::io::stdin();
    let mut line = String::new();
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    stdin.lock().read_line(&mut line).expect("stdin");
    let c = fresh_load(&path, ptr::null());
    let sum = touch(c);
    println!("loaded {sum}");
    std::io::stdout().flush().expect("stdout");
    stdin.lock().read_line(&mut line).expect("stdin");
    unsafe { pts_container_free(c) };
}

/// Starts benches/load.py with this binary's path and the arguments.
fn orchestrate(args: &[String]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let venv = root.join(".venv/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let exe = std::env::current_exe().expect("own path");
    // cargo bench passes --bench to a harness = false binary.
    let rest = args.iter().filter(|a| a.as_str() != "--bench");
    let status = Command::new(&python)
        .arg(root.join("benches/load.py"))
        .arg("--capi")
        .arg(exe)
        .args(rest)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    std::process::exit(status.code().unwrap_or(1));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child") if args.len() == 3 => child(&args[1], &args[2]),
        Some("--pss-child") if args.len() == 2 => pss_child(&args[1]),
        _ => orchestrate(&args),
    }
}
