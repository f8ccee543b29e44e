//! Every golden file of every format version still reads, with exactly the
//! metadata and tensor bytes its sidecar records; model files also rebuild
//! through the registry and give the recorded forward output. Version 2
//! files also restore their extra state (RNG, counters) into tracked
//! objects. A file whose scheduler only Python can build (LambdaLR's
//! function is not in the file) reads, serves its model, and refuses to
//! build its scheduler, naming the class.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use pytorch_saver::extra_state::{tag_name, Counters, Rng};
use pytorch_saver::format::{dtype_name, Checkpoint, MemberName};
use pytorch_saver::{Error, InferenceModel, LoadOptions, ModelContainer, Registry};
use serde_json::Value;
use tch::Tensor;

/// Building a model may draw from the process's generator, which the
/// extra-state tests restore and compare: the tests that build models
/// take turns.
static RNG: Mutex<()> = Mutex::new(());

fn rng_lock() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn golden_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files = Vec::new();
    for version in std::fs::read_dir(&root).unwrap() {
        let version = version.unwrap().path();
        // tests/golden/v1, v2, ...; the generator script and README sit beside them.
        if !version.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(version).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "zip") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The scheduler class of a file that only Python can load whole
/// (LambdaLR, MultiplicativeLR: their function is a `callable` tag).
fn python_only_scheduler(want: &Value) -> Option<&str> {
    let class = want["metadata"]["__pytorch_saver__"]["scheduler"]["class"].as_str()?;
    class
        .ends_with(".LambdaLR")
        .then_some(class)
        .or(class.ends_with(".MultiplicativeLR").then_some(class))
}

/// Loading such a file into a container is refused, naming the class, and
/// leaves the container empty.
fn assert_refused_outside_python(path: &Path, class: &str) {
    let mut c = ModelContainer::new();
    match c.load(path) {
        Err(Error::UnsupportedClass { kind, name, reason }) => {
            assert_eq!((kind, name.as_str()), ("scheduler", class), "{}", path.display());
            assert!(reason.contains("Python"), "{reason}");
        }
        other => panic!("{}: {other:?}", path.display()),
    }
    assert!(c.model().is_err(), "{}: a refused load built a model", path.display());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A JSON array of numbers as f32 (exact for values written from f32).
fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn expected(path: &Path) -> Value {
    let sidecar = PathBuf::from(format!("{}.json", path.display()));
    serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap()
}

#[test]
fn every_golden_file_reads_with_the_recorded_values() {
    let files = golden_files();
    assert!(files.len() >= 3, "golden files present: {files:?}");
    for path in files {
        let want = expected(&path);
        let ckpt = Checkpoint::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            &Value::Object(ckpt.metadata().to_json()),
            &want["metadata"],
            "{}",
            path.display()
        );
        let members = want["tensors"].as_object().unwrap();
        for (member, tensors) in members {
            let m = MemberName::from_name(member).unwrap();
            let tensors = tensors.as_object().unwrap();
            assert_eq!(ckpt.tensors(m).len(), tensors.len(), "{}: {member}", path.display());
            for (name, t) in tensors {
                let e = ckpt.tensor(m, name).unwrap();
                assert_eq!(dtype_name(e.dtype), t["dtype"].as_str().unwrap(), "{name}");
                assert_eq!(serde_json::to_value(&e.shape).unwrap(), t["shape"], "{name}");
                assert_eq!(
                    hex(ckpt.tensor_bytes(e)),
                    t["hex"].as_str().unwrap(),
                    "{}: {name}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn golden_models_rebuild_and_compute_the_recorded_output() {
    let _rng = rng_lock();
    let mut checked = 0;
    for path in golden_files() {
        let want = expected(&path);
        let Some(fwd) = want.get("forward") else { continue };
        let shape: Vec<i64> = fwd["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let x = Tensor::from_slice(&f32s(&fwd["input"])).reshape(&shape);
        let output = match python_only_scheduler(&want) {
            // The model alone serves, its optimizer and scheduler ignored.
            Some(class) => {
                assert_refused_outside_python(&path, class);
                let (model, _) = InferenceModel::load(&path, &Registry::new(), &LoadOptions::new()).unwrap();
                model.forward(&x).unwrap()
            }
            None => {
                let mut c = ModelContainer::new();
                c.load(&path).unwrap();
                c.model().unwrap().forward(&x).unwrap()
            }
        };
        let y = Vec::<f32>::try_from(output.flatten(0, -1)).unwrap();
        let out = f32s(&fwd["output"]);
        assert_eq!(y.len(), out.len());
        for (a, b) in y.iter().zip(&out) {
            // Another CPU may order a reduction differently: 1e-6 relative.
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{}: {a} vs {b}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 1);
}

fn tensor(v: &Value, shape: &Value) -> Tensor {
    let shape: Vec<i64> = shape.as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
    Tensor::from_slice(&f32s(v)).reshape(&shape)
}

/// Training checkpoints resume: loaded with nothing but the file, the
/// recorded steps (MSE on the recorded batch, optimizer step, scheduler
/// step; the loss as metric for ReduceLROnPlateau) reach the recorded
/// parameters and learning rates.
#[test]
fn golden_training_checkpoints_resume_to_the_recorded_state() {
    let _rng = rng_lock();
    let mut checked = 0;
    for path in golden_files() {
        let want = expected(&path);
        let Some(resume) = want.get("resume") else { continue };
        if let Some(class) = python_only_scheduler(&want) {
            assert_refused_outside_python(&path, class);
            continue;
        }
        let label = path.display().to_string();
        let mut c = ModelContainer::new();
        c.load(&path).unwrap_or_else(|e| panic!("{label}: {e}"));
        let x = tensor(&resume["input"], &resume["input_shape"]);
        let y = tensor(&resume["target"], &resume["target_shape"]);
        for _ in 0..resume["steps"].as_u64().unwrap() {
            common::mse_step(&mut c, &x, &y);
        }
        for (name, t) in c.model().unwrap().state_dict() {
            // (as f32, as the sidecar records them: num_batches_tracked is int64)
            let got = Vec::<f32>::try_from(t.flatten(0, -1).to_kind(tch::Kind::Float)).unwrap();
            let recorded = f32s(&resume["params_after"][&name]);
            assert_eq!(got.len(), recorded.len(), "{label}: {name}");
            for (a, b) in got.iter().zip(&recorded) {
                // Another CPU may round a matmul differently: 1e-5 relative.
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{label}: {name}: {a} vs {b}");
            }
        }
        let lrs = c.lrs().unwrap();
        let recorded: Vec<f64> = resume["lrs_after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(lrs.len(), recorded.len());
        for (a, b) in lrs.iter().zip(&recorded) {
            assert!((a - b).abs() <= 1e-12 * b.abs(), "{label}: lr {a} vs {b}");
        }
        checked += 1;
    }
    assert!(checked >= 2, "training golden files present");
}

/// Every golden file of a built-in model, whichever language wrote it,
/// loads into a container (model, optimizer and scheduler rebuilt by name)
/// whose model and optimizer state are the file's bytes exactly.
#[test]
fn every_builtin_golden_file_loads_into_a_container_with_its_bytes() {
    let _rng = rng_lock();
    let mut by_language = std::collections::BTreeMap::<String, usize>::new();
    for path in golden_files() {
        let want = expected(&path);
        let internals = &want["metadata"]["__pytorch_saver__"];
        let Some(class) = internals["model"]["class"].as_str() else {
            assert_eq!(internals["kind"], "weights", "{}: no model class", path.display());
            continue;
        };
        if !ModelContainer::new().registry().has_model(class) {
            continue;
        }
        if let Some(scheduler) = python_only_scheduler(&want) {
            assert_refused_outside_python(&path, scheduler);
            continue;
        }
        let label = path.display().to_string();
        let mut c = ModelContainer::new();
        c.load(&path).unwrap_or_else(|e| panic!("{label}: {e}"));
        let hex_of = |member: &str, name: &str| {
            want["tensors"][member][name]["hex"]
                .as_str()
                .unwrap_or_else(|| panic!("{label}: no {member} tensor {name}"))
                .to_owned()
        };
        let model = c.model().unwrap().state_dict();
        assert_eq!(
            model.len(),
            want["tensors"]["model.safetensors"].as_object().unwrap().len()
        );
        for (name, t) in &model {
            assert_eq!(
                hex(&common::bytes_of(t)),
                hex_of("model.safetensors", name),
                "{label}: {name}"
            );
        }
        if let Some(opt) = c.optimizer() {
            let state = opt.state_dict().unwrap();
            let mut n = 0;
            for (index, tensors) in &state.state {
                for (key, t) in tensors {
                    let name = format!("state.{index}.{key}");
                    assert_eq!(
                        hex(&common::bytes_of(t)),
                        hex_of("optimizer.safetensors", &name),
                        "{label}: {name}"
                    );
                    n += 1;
                }
            }
            assert_eq!(
                n,
                want["tensors"]["optimizer.safetensors"].as_object().unwrap().len(),
                "{label}"
            );
            assert_eq!(internals.get("scheduler").is_some(), c.scheduler().is_some(), "{label}");
        }
        let language = internals["producer"]["language"].as_str().unwrap().to_owned();
        *by_language.entry(language).or_default() += 1;
    }
    assert!(by_language.get("rust").copied().unwrap_or(0) >= 8, "{by_language:?}");
    assert!(
        by_language.get("python").copied().unwrap_or(0) >= 8,
        "Python-written files: {by_language:?}"
    );
}

fn v2_golden_files() -> Vec<PathBuf> {
    let v2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v2");
    golden_files()
        .into_iter()
        .filter(|p| p.parent() == Some(v2.as_path()))
        .collect()
}

/// The tensor names of the `tensor` tags in a typed value, depth first.
fn tags(value: &Value, out: &mut Vec<String>) {
    if let Some(name) = tag_name(value) {
        out.push(name.to_owned());
    } else if let Some(m) = value.as_object() {
        m.values().for_each(|v| tags(v, out));
    } else if let Some(items) = value.as_array() {
        items.iter().for_each(|v| tags(v, out));
    }
}

/// Every version 2 golden file, whichever language wrote it: version 2,
/// its extra entries and `extra.safetensors` as the sidecar records them
/// (each tag naming one recorded tensor, each tensor named once), and,
/// for a built-in model, a load that restores the entries of the built-in
/// classes (the CPU generator's state bytes, the counters) into tracked
/// objects.
#[test]
fn every_v2_golden_file_restores_its_extra_state_as_recorded() {
    let _rng = rng_lock();
    let files = v2_golden_files();
    assert!(!files.is_empty(), "no version 2 golden file");
    for path in files {
        let label = path.display().to_string();
        let want = expected(&path);
        let ckpt = Checkpoint::open(&path).unwrap_or_else(|e| panic!("{label}: {e}"));
        let meta = ckpt.metadata();
        assert_eq!(meta.format_version, 2, "{label}");
        let recorded = &want["tensors"]["extra.safetensors"];
        let entries = meta.extra.clone().unwrap_or_default();
        let mut named = Vec::new();
        for e in &entries {
            tags(&e.state, &mut named);
        }
        let mut sorted = named.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), named.len(), "{label}: a tensor named twice");
        let held: Vec<String> = recorded
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            sorted,
            {
                let mut h = held;
                h.sort();
                h
            },
            "{label}: tags and tensors"
        );

        let class = meta.model.as_ref().map(|m| m.class.as_str()).unwrap_or("");
        if !ModelContainer::new().registry().has_model(class) || python_only_scheduler(&want).is_some() {
            continue;
        }
        let mut c = ModelContainer::new();
        for e in &entries {
            match e.class.as_str() {
                "pytorch_saver.RNG" => c.track(&e.name, Rng::new()).unwrap(),
                "pytorch_saver.Counters" => c.track(&e.name, Counters::new()).unwrap(),
                _ => {}
            }
        }
        c.load(&path).unwrap_or_else(|e| panic!("{label}: {e}"));
        for e in &entries {
            match e.class.as_str() {
                "pytorch_saver.RNG" => {
                    if let Some(cpu) = e.state.get("torch").and_then(|t| t.get("cpu")) {
                        let name = tag_name(cpu).unwrap();
                        let state = common::bytes_of(&Rng::cpu_state().unwrap());
                        assert_eq!(hex(&state), recorded[name]["hex"].as_str().unwrap(), "{label}: {name}");
                    }
                }
                "pytorch_saver.Counters" => {
                    let counters = c.tracked::<Counters>(&e.name).unwrap();
                    let got: serde_json::Map<String, Value> =
                        counters.iter().map(|(n, v)| (n.to_owned(), v.into())).collect();
                    assert_eq!(Value::Object(got), e.state, "{label}: {}", e.name);
                }
                _ => {}
            }
        }
    }
}

/// Rust's version 2 golden checkpoint: a tracked `Rng` gets the recorded
/// CPU generator state, whatever the process had drawn, and replays the
/// same numbers after each restore; the counters are {step: 10, epoch: 1}.
#[test]
fn the_rust_v2_golden_restores_its_rng_state_into_rng() {
    let _rng = rng_lock();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v2/rust_v2_mlp_extra_checkpoint.zip");
    let want = expected(&path);
    let recorded = want["tensors"]["extra.safetensors"]["rng.torch.cpu"]["hex"]
        .as_str()
        .unwrap();
    let mut c = ModelContainer::new();
    c.track("rng", Rng::new()).unwrap();
    c.track("counters", Counters::new()).unwrap();
    tch::manual_seed(123);
    assert_ne!(hex(&common::bytes_of(&Rng::cpu_state().unwrap())), recorded);
    c.load(&path).unwrap();
    assert_eq!(hex(&common::bytes_of(&Rng::cpu_state().unwrap())), recorded);
    let first = Tensor::randn([6], (tch::Kind::Float, tch::Device::Cpu));
    c.restore(&path).unwrap();
    assert_eq!(hex(&common::bytes_of(&Rng::cpu_state().unwrap())), recorded);
    assert!(Tensor::randn([6], (tch::Kind::Float, tch::Device::Cpu)).equal(&first));
    let counters = c.tracked::<Counters>("counters").unwrap();
    assert_eq!(counters.iter().collect::<Vec<_>>(), [("step", 10), ("epoch", 1)]);
    assert_eq!(c.model().unwrap().class(), "pytorch_saver.models.MLP");
    assert_eq!(c.optimizer().unwrap().class(), "torch.optim.Adam");
    assert_eq!(c.scheduler().unwrap().class(), "torch.optim.lr_scheduler.StepLR");
}

/// Python's version 2 golden checkpoint in Rust: its typed kwargs read as
/// what Python passed (a `torch.float64` dtype, Adam's `betas` tuple) and
/// build a float64 Linear and an Adam with beta2 0.99; its RNG entry,
/// written with Python's `random` and NumPy parts, restores the CPU
/// generator Python had, so Rust draws the numbers Python would draw next.
#[test]
fn the_python_v2_golden_reads_its_typed_kwargs_and_continues_its_rng_in_rust() {
    use pytorch_saver::format::typed;
    let _rng = rng_lock();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v2/python_v2_typed_extra_checkpoint.zip");
    let want = expected(&path);
    let ckpt = Checkpoint::open(&path).unwrap();
    let meta = ckpt.metadata();
    let model = meta.model.as_ref().unwrap();
    assert_eq!(typed::as_dtype(&model.kwargs["dtype"]), Some("float64"));
    let opt = meta.optimizer.as_ref().unwrap();
    let betas = typed::as_tuple(&opt.kwargs["betas"]).unwrap();
    assert_eq!(betas, [Value::from(0.9), Value::from(0.99)]);
    let names: Vec<_> = meta.extra.as_ref().unwrap().iter().map(|e| e.class.as_str()).collect();
    assert_eq!(
        names,
        ["pytorch_saver.RNG", "torch.amp.GradScaler", "pytorch_saver.Counters"]
    );

    let mut c = ModelContainer::new();
    c.track("rng", Rng::new()).unwrap();
    tch::manual_seed(5);
    c.load(&path).unwrap();
    let recorded = want["tensors"]["extra.safetensors"]["rng.torch.cpu"]["hex"]
        .as_str()
        .unwrap();
    assert_eq!(hex(&common::bytes_of(&Rng::cpu_state().unwrap())), recorded);
    for (name, t) in c.model().unwrap().state_dict() {
        assert_eq!(t.kind(), tch::Kind::Double, "{name}");
    }
    let group = &c.optimizer().unwrap().param_groups()[0];
    assert_eq!(group.options["betas"], serde_json::json!([0.9, 0.99]));
}

/// The golden sharded checkpoints (tests/golden/sharded_v1, index
/// version 1) with their sidecars `<directory>.json`.
fn sharded_golden() -> Vec<(PathBuf, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut out = Vec::new();
    for f in std::fs::read_dir(root.join("sharded_v1")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let sidecar: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            out.push((root.join(sidecar["index"].as_str().unwrap()), sidecar));
        }
    }
    assert!(!out.is_empty(), "no golden sharded checkpoint");
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every golden sharded checkpoint opens with the recorded tensors, bit
/// for bit, and its consolidated file computes the recorded output.
#[test]
fn every_golden_sharded_checkpoint_reads_and_consolidates_as_recorded() {
    use pytorch_saver::sharded::{consolidate, ShardedCheckpoint};

    for (index, want) in sharded_golden() {
        let sharded = ShardedCheckpoint::open(index.to_str().unwrap()).unwrap();
        sharded.verify().unwrap();
        let recorded = want["tensors"].as_object().unwrap();
        assert_eq!(
            sharded.tensor_names(),
            recorded.keys().map(String::as_str).collect::<Vec<_>>()
        );
        for (name, t) in recorded {
            assert_eq!(
                hex(&sharded.read_tensor(name).unwrap()),
                t["hex"].as_str().unwrap(),
                "{name}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("whole.zip");
        consolidate(index.to_str().unwrap(), out.to_str().unwrap()).unwrap();
        let mut c = ModelContainer::new();
        c.load(&out).unwrap();
        let forward = &want["forward"];
        let x = tensor(&forward["input"], &forward["shape"]);
        let y = tch::no_grad(|| c.model().unwrap().forward_t(&x, false)).unwrap();
        let got: Vec<f32> = Vec::<f32>::try_from(y.contiguous().view([-1])).unwrap();
        for (g, w) in got.iter().zip(f32s(&forward["output"])) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{}: {g} vs {w}",
                index.display()
            );
        }
    }
}
