//! Save and load of a 1 GiB state dict, side by side in one run: raw file
//! I/O of the same bytes (the floor), tch's VarStore (.ot and .safetensors),
//! and pytorch-saver. Prints medians and ratios, then the peak RSS of ours,
//! measured in child processes so that one phase cannot hide another.
//!
//!     cargo bench --bench save_load [-- --runs N] [-- --dir DIR]
//!
//! Durability is not equal across contenders: ours fsyncs the file and the
//! directory, tch does not. The raw write is shown both ways; our target
//! ratio is against the raw write that also fsyncs.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pytorch_saver::{models, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{nn, Kind, Tensor};

/// MLP(8192, 8192, 8192, n_layers=3): four 8192x8192 f32 weights (256 MiB
/// each) plus biases, a little over 1 GiB.
fn kwargs() -> Map<String, Value> {
    json!({"in_dim": 8192, "hidden_dim": 8192, "n_classes": 8192, "n_layers": 3})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<F: FnMut()>(runs: usize, f: F) -> Duration {
    time_after(runs, || {}, f)
}

/// Median of `runs` timings of `f`, each after an untimed `setup`.
fn time_after<S: FnMut(), F: FnMut()>(runs: usize, mut setup: S, mut f: F) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                setup();
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Removes what the previous run wrote, so that every save creates a file.
fn remove(path: &Path) {
    if path.exists() {
        std::fs::remove_file(path).unwrap();
    }
}

fn state_bytes(c: &ModelContainer) -> Vec<(String, Tensor)> {
    c.model().unwrap().state_dict().into_iter().collect()
}

fn tensor_slice(t: &Tensor) -> &[u8] {
    let len = t.numel() * t.kind().elt_size_in_bytes();
    // SAFETY: contiguous CPU tensors owned by the model, borrowed for the call.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) }
}

fn tensor_slice_mut(t: &mut Tensor) -> &mut [u8] {
    let len = t.numel() * t.kind().elt_size_in_bytes();
    // SAFETY: as above; the benchmark is the only user of these tensors.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, len) }
}

fn raw_write(path: &Path, tensors: &[(String, Tensor)], fsync: bool) {
    let mut f = File::create(path).unwrap();
    for (_, t) in tensors {
        f.write_all(tensor_slice(t)).unwrap();
    }
    if fsync {
        f.sync_all().unwrap();
    }
}

fn raw_read(path: &Path, tensors: &mut [(String, Tensor)]) {
    let f = File::open(path).unwrap();
    let mut off = 0u64;
    for (_, t) in tensors.iter_mut() {
        let dst = tensor_slice_mut(t);
        f.read_exact_at(dst, off).unwrap();
        off += dst.len() as u64;
    }
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (Linux >= 4.0)");
}

/// Child mode: one phase, then print "<runtime_base> <model_bytes> <peak>" in KiB.
fn rss_child(phase: &str, dir: &Path, file: Option<&str>) {
    let _warm = Tensor::ones([16], (Kind::Float, tch::Device::Cpu)).sum(Kind::Float);
    reset_peak();
    let base = vm_kib("VmRSS:");
    let mut c = ModelContainer::new();
    match phase {
        "save" => {
            c.initialize(ContainerSpec::model(models::MLP, kwargs())).unwrap();
            c.save(dir, "rss", &UserMetadata::new()).unwrap();
        }
        "load" => {
            let metadata = c.load(file.unwrap()).unwrap();
            assert!(metadata.contains_key("model_kwargs"));
        }
        "restore" => {
            c.initialize(ContainerSpec::model(models::MLP, kwargs())).unwrap();
            c.restore(file.unwrap()).unwrap();
        }
        _ => panic!("unknown phase {phase}"),
    }
    let model_kib = c
        .model()
        .unwrap()
        .state_dict()
        .values()
        .map(|t| t.numel() * 4)
        .sum::<usize>() as u64
        / 1024;
    println!("{base} {model_kib} {}", vm_kib("VmHWM:"));
}

fn measure_rss(phase: &str, dir: &Path, file: Option<&Path>) -> (u64, u64, u64) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--rss-child").arg(phase).arg(dir);
    if let Some(f) = file {
        cmd.arg(f);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1], v[2])
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        rss_child(
            &args[i + 1],
            Path::new(&args[i + 2]),
            args.get(i + 3).map(String::as_str),
        );
        return;
    }
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir: PathBuf = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    std::fs::create_dir_all(&dir).unwrap();
    let work = tempfile::tempdir_in(&dir).unwrap();
    let d = work.path();

    tch::manual_seed(0);
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(models::MLP, kwargs())).unwrap();
    let mut tensors = state_bytes(&c);
    let total: usize = tensors.iter().map(|(_, t)| tensor_slice(t).len()).sum();
    println!(
        "state dict: {} tensors, {:.1} MiB; {runs} runs each, median; files in {}",
        tensors.len(),
        total as f64 / (1 << 20) as f64,
        dir.display()
    );

    let raw = d.join("raw.bin");
    let ot = d.join("tch.ot");
    let st = d.join("tch.safetensors");
    let vs: &nn::VarStore = c.model().unwrap().var_store();

    let raw_save_nosync = time_after(runs, || remove(&raw), || raw_write(&raw, &tensors, false));
    let raw_save = time_after(runs, || remove(&raw), || raw_write(&raw, &tensors, true));
    let ot_save = time_after(runs, || remove(&ot), || vs.save(&ot).unwrap());
    let st_save = time_after(runs, || remove(&st), || vs.save(&st).unwrap());
    let ours_path = std::cell::RefCell::new(PathBuf::new());
    let ours_save = time_after(
        runs,
        || remove(&ours_path.borrow()),
        || *ours_path.borrow_mut() = c.save(d, "bench", &UserMetadata::new()).unwrap(),
    );
    let ours_path = ours_path.into_inner();

    let raw_load = time(runs, || raw_read(&raw, &mut tensors));
    let mut vs_mut = nn::VarStore::new(tch::Device::Cpu);
    let shadow_kwargs = kwargs();
    let _shadow = models::Mlp::new(
        vs_mut.root(),
        &pytorch_saver::Kwargs::new(models::MLP, &shadow_kwargs, false),
    )
    .unwrap();
    let ot_load = time(runs, || vs_mut.load(&ot).unwrap());
    let st_load = time(runs, || vs_mut.load(&st).unwrap());
    let ours_restore = time(runs, || {
        c.restore(&ours_path).unwrap();
    });
    let mut fresh = ModelContainer::new();
    let ours_load = time(runs, || {
        fresh.load(&ours_path).unwrap();
    });

    let s = |d: Duration| d.as_secs_f64();
    println!();
    println!("{:<44} {:>10} {:>16}", "save", "median s", "vs raw+fsync");
    for (name, t) in [
        ("raw write, no fsync", raw_save_nosync),
        ("raw write + fsync", raw_save),
        ("tch VarStore .ot (no fsync)", ot_save),
        ("tch VarStore .safetensors (no fsync)", st_save),
        ("pytorch-saver save (CRC, fsync, rename)", ours_save),
    ] {
        println!("{name:<44} {:>10.3} {:>15.2}x", s(t), s(t) / s(raw_save));
    }
    println!();
    println!(
        "{:<44} {:>10} {:>16} {:>12}",
        "load (warm page cache)", "median s", "vs raw read", "vs tch .ot"
    );
    for (name, t) in [
        ("raw read into the model's tensors", raw_load),
        ("tch VarStore .ot load", ot_load),
        ("tch VarStore .safetensors load", st_load),
        ("pytorch-saver restore (existing model)", ours_restore),
        ("pytorch-saver load (fresh model)", ours_load),
    ] {
        println!(
            "{name:<44} {:>10.3} {:>15.2}x {:>11.2}x",
            s(t),
            s(t) / s(raw_load),
            s(t) / s(ot_load)
        );
    }
    println!();
    println!(
        "targets: save <= 1.10x raw write+fsync: {:.2}x {}",
        s(ours_save) / s(raw_save),
        verdict(s(ours_save) <= 1.10 * s(raw_save))
    );
    println!(
        "         restore faster than tch .ot load: {:.2}x {}",
        s(ours_restore) / s(ot_load),
        verdict(ours_restore < ot_load)
    );

    println!();
    println!("peak RSS (child processes; runtime = libtorch loaded, no model yet)");
    println!(
        "{:<12} {:>12} {:>12} {:>14} {:>18} {:>8}",
        "phase", "runtime MiB", "model MiB", "peak MiB", "peak-runtime MiB", "target"
    );
    for (phase, file) in [
        ("save", None),
        ("restore", Some(ours_path.as_path())),
        ("load", Some(ours_path.as_path())),
    ] {
        let rss_dir = tempfile::tempdir_in(&dir).unwrap();
        let (base, model, peak) = measure_rss(phase, rss_dir.path(), file);
        let used = peak.saturating_sub(base);
        println!(
            "{phase:<12} {:>12.1} {:>12.1} {:>14.1} {:>18.1} {:>8}",
            mib(base),
            mib(model),
            mib(peak),
            mib(used),
            verdict(used <= model + 64 * 1024)
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}
