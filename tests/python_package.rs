//! Training crosses between the Python package (bindings/python, installed
//! in the venv) and the Rust core through checkpoint files alone: Python
//! trains 20 steps of Adam + CosineAnnealingWarmRestarts and saves, Rust
//! resumes 20 steps, and the result equals 40 uninterrupted Python steps;
//! and the same from Rust to Python.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{batch_data as data, train_batches as train};
use pytorch_saver::{models, optim::ADAM, sched, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::Tensor;

const HALF: usize = 20;

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// Parameters and optimizer state tensors by name, the learning rates and
/// the scheduler state.
struct Snapshot {
    tensors: BTreeMap<String, Tensor>,
    lrs: Vec<f64>,
    scheduler: Map<String, Value>,
}

fn snapshot(c: &ModelContainer) -> Snapshot {
    let mut tensors: BTreeMap<String, Tensor> = c
        .model()
        .unwrap()
        .state_dict()
        .into_iter()
        .map(|(n, t)| (format!("param.{n}"), t))
        .collect();
    for (i, s) in c.optimizer().unwrap().state_dict().unwrap().state {
        for (k, t) in s {
            tensors.insert(format!("state.{i}.{k}"), t);
        }
    }
    Snapshot {
        tensors,
        lrs: c.lrs().unwrap(),
        scheduler: c.scheduler().unwrap().state_dict(),
    }
}

fn loaded(path: &PathBuf) -> Snapshot {
    let mut c = ModelContainer::new();
    c.load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    snapshot(&c)
}

/// Asserts `a` equals `b` within 1e-6 relative (tensors) and 1e-12 (LRs),
/// with the same scheduler position; returns the worst tensor difference.
fn assert_close(a: &Snapshot, b: &Snapshot, label: &str) -> f64 {
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>(),
        "{label}"
    );
    let mut worst = 0.0f64;
    for (name, t) in &a.tensors {
        let d = common::max_rel_diff(t, &b.tensors[name]);
        assert!(d <= 1e-6, "{label}: {name} differs by {d:e} relative");
        worst = worst.max(d);
    }
    assert_eq!(a.lrs.len(), b.lrs.len());
    for (x, y) in a.lrs.iter().zip(&b.lrs) {
        assert!((x - y).abs() <= 1e-12 * y.abs(), "{label}: lr {x} vs {y}");
    }
    for key in ["last_epoch", "T_cur", "T_i", "T_0", "T_mult", "_step_count"] {
        assert_eq!(a.scheduler.get(key), b.scheduler.get(key), "{label}: scheduler {key}");
    }
    worst
}

fn spec() -> ContainerSpec {
    ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
        .optimizer(ADAM, kw(json!({"lr": 0.01})))
        .scheduler(
            sched::COSINE_ANNEALING_WARM_RESTARTS,
            kw(json!({"T_0": 7, "T_mult": 2, "eta_min": 0.001})),
        )
}

fn path_of(v: &Value) -> PathBuf {
    PathBuf::from(v.as_str().expect("a path"))
}

#[test]
fn python_trains_rust_resumes_and_matches_uninterrupted_python() {
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let data_file = dir.path().join("data.safetensors");
    Tensor::write_safetensors(&[("X", &data.0), ("Y", &data.1)], &data_file).unwrap();
    let out = common::run_python(
        "package_resume.py",
        &json!({"mode": "train", "data": data_file, "out": dir.path(), "steps": HALF, "total": 2 * HALF}),
    );

    let mut c = ModelContainer::new();
    let metadata = c.load(path_of(&out["half"])).unwrap();
    assert_eq!(metadata["step"], HALF);
    train(&mut c, &data, HALF, HALF);
    let worst = assert_close(&snapshot(&c), &loaded(&path_of(&out["whole"])), "Python -> Rust");
    println!("Python 20 + Rust 20 vs Python 40: worst relative difference {worst:e}");
}

#[test]
fn rust_trains_python_resumes_and_matches_uninterrupted_rust() {
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let data_file = dir.path().join("data.safetensors");
    Tensor::write_safetensors(&[("X", &data.0), ("Y", &data.1)], &data_file).unwrap();

    tch::manual_seed(11);
    let mut c = ModelContainer::new();
    c.initialize(spec()).unwrap();
    train(&mut c, &data, 0, HALF);
    let half = c.save(dir.path(), "rust_half", &UserMetadata::new()).unwrap();
    train(&mut c, &data, HALF, HALF);
    let whole = snapshot(&c);

    let out = common::run_python(
        "package_resume.py",
        &json!({"mode": "resume", "checkpoint": half, "data": data_file, "out": dir.path(), "start": HALF, "steps": HALF}),
    );
    let resumed = path_of(&out["resumed"]);
    let worst = assert_close(&loaded(&resumed), &whole, "Rust -> Python");
    println!("Rust 20 + Python 20 vs Rust 40: worst relative difference {worst:e}");
}
