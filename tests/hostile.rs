//! Hostile but well-formed files: every case of the shared corpus in
//! tests/hostile (cases.json, read at run time), a metadata.json over the
//! 16 MiB limit, and a registered factory with no layout whose kwargs ask
//! for 4 GiB. Each load runs in a child process (this test binary again,
//! with an environment variable naming the case) so that its peak memory
//! is its own and a crash or a panic is seen: the load must fail with a
//! typed error naming the culprit, print no panic, stay within 256 MiB of
//! where it started, and the child must exit normally.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_zip, member, metadata, metadata_bytes, safetensors_bytes};
use pytorch_saver::registry::{variable, Kwargs};
use pytorch_saver::{BoxedModel, InferenceModel, LoadOptions, ModelContainer, Registry};
use serde_json::{json, Value};

/// Which load the child runs: `file` (the built-in registry) or `factory`
/// (a registry with [`HUGE`]).
const ROLE: &str = "PTS_HOSTILE_ROLE";
/// The file the child loads.
const PATH: &str = "PTS_HOSTILE_PATH";
/// What the child prints before each load's result (one JSON object).
const MARK: &str = "HOSTILE_RESULT ";

/// How far above its starting point a refused load may take the child's
/// resident memory.
const MAX_GROWTH_KIB: u64 = 256 * 1024;
/// Only a guard against a hung child; outcomes are asserted, never times.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A registered class with no layout: one parameter `huge.weight` of `n`
/// floats, built by the same `variable` the built-in models use.
const HUGE: &str = "tests.hostile.Huge";
/// 2**30 floats: 4 GiB that the file's kwargs ask for.
const HUGE_N: i64 = 1 << 30;

#[derive(Debug)]
struct Huge(tch::Tensor);

impl pytorch_saver::Forward for Huge {
    fn forward_t(&self, xs: &tch::Tensor, _train: bool) -> pytorch_saver::Result<tch::Tensor> {
        Ok(xs.f_mul(&self.0)?)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn huge_factory(p: tch::nn::Path<'_>, kw: &Kwargs<'_>) -> pytorch_saver::Result<BoxedModel> {
    let n = kw.required_i64_at_least("n", 1)?;
    let weight = variable(&(&p / "huge"), kw, "weight", &[n], tch::nn::Init::Const(0.0))?;
    Ok(Box::new(Huge(weight)))
}

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Runs one load with the peak RSS reset first, and prints what happened.
fn report(api: &str, load: impl FnOnce() -> pytorch_saver::Result<()>) {
    // 5 resets VmHWM to the current RSS (proc(5)).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let baseline = status_kib("VmRSS");
    let result = load();
    let peak = status_kib("VmHWM");
    let mut line = json!({
        "api": api,
        "reset": reset,
        "baseline_kib": baseline,
        "peak_kib": peak,
        "ok": result.is_ok(),
    });
    if let Err(e) = result {
        let debug = format!("{e:?}");
        let variant = debug.split(['(', ' ', '{']).next().unwrap_or_default().to_owned();
        line["variant"] = json!(variant);
        line["message"] = json!(e.to_string());
        line["debug"] = json!(debug);
    }
    println!("{MARK}{line}");
}

/// What a child process runs; without the role variable it does nothing.
/// It never unwraps a load: whatever happens is printed for the parent.
#[test]
fn child_process_role() {
    let (Ok(role), Ok(path)) = (std::env::var(ROLE), std::env::var(PATH)) else {
        return;
    };
    let mut registry = Registry::new();
    if role == "factory" {
        registry.register_model(HUGE, huge_factory).expect("a fresh name");
    }
    // libtorch's own start-up (thread pools, first allocations) is not
    // the load's doing: get it over with before the first baseline.
    let _ = tch::Tensor::zeros([4], (tch::Kind::Float, tch::Device::Cpu)).sum(tch::Kind::Float);
    report("ModelContainer::load", || {
        ModelContainer::with_registry(registry.clone()).load(&path).map(drop)
    });
    report("InferenceModel::load", || {
        InferenceModel::load(&path, &registry, &LoadOptions::default()).map(drop)
    });
}

/// One hostile file and what its refusal must say.
struct Case {
    label: String,
    path: PathBuf,
    role: &'static str,
    message_contains_any: Vec<String>,
    /// The error variant, where the test knows it.
    variant: Option<&'static str>,
}

/// Error variants that mean "refused": anything else (a libtorch error
/// from an attempted allocation, a factory that panicked, ...) means the
/// loader went further than it should have.
const REFUSALS: [&str; 4] = ["Format", "UnknownName", "InvalidKwargs", "StateMismatch"];

/// Runs `case` in a child and returns what is wrong with the outcome
/// (empty when nothing is).
fn check_case(case: &Case, scratch: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(format!("{}: {p}", case.label));
    let stem = case.label.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let out_path = scratch.join(format!("{stem}.stdout"));
    let err_path = scratch.join(format!("{stem}.stderr"));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, case.role)
        .env(PATH, &case.path)
        // A panic would print its "run with RUST_BACKTRACE=1" note.
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn the child");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if started.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        None => problem(format!("hung: killed after {HANG_GUARD:?}")),
        Some(s) if !s.success() => problem(format!("the child did not exit normally: {s}")),
        Some(_) => {}
    }
    for text in ["panicked", "RUST_BACKTRACE"] {
        if stderr.contains(text) || stdout.contains(text) {
            problem(format!("the child printed a panic ({text:?}):\n{stderr}"));
        }
    }
    let results: Vec<Value> = stdout
        .lines()
        // The first result shares its line with the harness's "test ... ".
        .filter_map(|l| l.split_once(MARK).map(|(_, r)| r))
        .map(|l| serde_json::from_str(l).expect("the child prints JSON"))
        .collect();
    if results.len() != 2 {
        problem(format!(
            "expected 2 results, got {}:\n{stdout}\n{stderr}",
            results.len()
        ));
    }
    for r in &results {
        let api = r["api"].as_str().unwrap_or("?");
        let message = r["message"].as_str().unwrap_or_default();
        let variant = r["variant"].as_str().unwrap_or_default();
        eprintln!(
            "{}: {api}: {variant}: {message} (peak {} KiB, baseline {} KiB)",
            case.label, r["peak_kib"], r["baseline_kib"]
        );
        if r["ok"] != json!(false) {
            problem(format!("{api} loaded the file"));
            continue;
        }
        if !REFUSALS.contains(&variant) || case.variant.is_some_and(|v| v != variant) {
            problem(format!("{api}: not the expected refusal but {}", r["debug"]));
        }
        if !case.message_contains_any.iter().any(|s| message.contains(s.as_str())) {
            problem(format!(
                "{api}: {message:?} contains none of {:?}",
                case.message_contains_any
            ));
        }
        if r["reset"] != json!(true) {
            problem(format!("{api}: could not reset the peak RSS (/proc/self/clear_refs)"));
        }
        let (peak, baseline) = (r["peak_kib"].as_u64().unwrap(), r["baseline_kib"].as_u64().unwrap());
        if peak > baseline + MAX_GROWTH_KIB {
            problem(format!(
                "{api}: peak RSS {peak} KiB is more than {MAX_GROWTH_KIB} KiB above the baseline {baseline} KiB"
            ));
        }
    }
    problems
}

fn assert_all(cases: &[Case]) {
    let scratch = tempfile::tempdir().unwrap();
    let problems: Vec<String> = cases.iter().flat_map(|c| check_case(c, scratch.path())).collect();
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn every_case_of_the_shared_corpus_is_refused_in_bounded_memory() {
    let dir = hostile_dir();
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("tests/hostile/cases.json");
    let listed: Vec<Value> = serde_json::from_str(&text).expect("cases.json is a JSON array");
    assert!(!listed.is_empty(), "cases.json lists no case");
    let cases: Vec<Case> = listed
        .iter()
        .map(|c| {
            let file = c["file"].as_str().expect("every case names its file");
            let needles: Vec<String> = c["message_contains_any"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: message_contains_any is a list"))
                .iter()
                .map(|s| s.as_str().expect("substrings are strings").to_owned())
                .collect();
            assert!(!needles.is_empty(), "{file}: message_contains_any is empty");
            let path = dir.join(file);
            assert!(path.is_file(), "{} is listed but missing", path.display());
            Case {
                label: file.to_owned(),
                path,
                role: "file",
                message_contains_any: needles,
                variant: None,
            }
        })
        .collect();
    assert_all(&cases);
}

#[test]
fn metadata_over_16_mib_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = metadata("inference", "torch.nn.Linear");
    meta.insert("padding".into(), json!("x".repeat((16 << 20) + 1)));
    let bytes = build_zip(&[
        member("metadata.json", metadata_bytes(&meta)),
        member("model.safetensors", common::small_model_member()),
    ]);
    let path = common::write_file(dir.path(), "metadata_17mib.zip", &bytes);
    assert_all(&[Case {
        label: "metadata_17mib.zip".into(),
        path,
        role: "file",
        message_contains_any: vec!["metadata.json".into()],
        variant: Some("Format"),
    }]);
}

#[test]
fn a_factory_without_a_layout_is_checked_after_an_uninitialized_build() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = metadata("inference", HUGE);
    meta.insert("model_kwargs".into(), json!({ "n": HUGE_N }));
    let model = safetensors_bytes(
        &json!({"huge.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}),
        &[0, 0, 128, 63, 0, 0, 0, 64],
    );
    let bytes = build_zip(&[
        member("metadata.json", metadata_bytes(&meta)),
        member("model.safetensors", model),
    ]);
    let path = common::write_file(dir.path(), "huge_factory.zip", &bytes);
    // The file itself is fine: only its kwargs lie.
    pytorch_saver::format::Checkpoint::open(&path).expect("a valid file");
    assert_all(&[Case {
        label: "huge_factory.zip (4 GiB of kwargs, 8 bytes of tensor)".into(),
        path,
        role: "factory",
        message_contains_any: vec!["huge.weight".into()],
        variant: Some("StateMismatch"),
    }]);
}
