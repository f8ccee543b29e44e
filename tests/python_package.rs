//! Training crosses between the Python package (bindings/python, installed
//! in the venv) and the Rust core through checkpoint files alone, for each
//! configuration of [`configs`] (issue 19's optimizers with its composite
//! and cyclic schedulers, and Adam + CosineAnnealingWarmRestarts): Python
//! trains 50 steps and saves, Rust resumes 50 steps, and the result is
//! bit-identical to 100 uninterrupted Python steps; and the same from Rust
//! to Python.
//!
//! Each configuration is written once, as the typed kwargs a file holds
//! (docs/FORMAT.md 11.2: a composite's children are `spec` tags); the
//! Python side (tests/python/package_resume.py) decodes the same JSON with
//! the package's decoder into what its `initialize` takes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{batch_data as data, train_batches as train};
use pytorch_saver::{models, optim, sched, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::Tensor;

const HALF: usize = 50;

/// A model, optimizer and scheduler, each `[class name, typed kwargs]`.
struct Config {
    model: (&'static str, Value),
    optimizer: (&'static str, Value),
    scheduler: (&'static str, Value),
}

impl Config {
    fn json(&self) -> Value {
        json!({
            "model": [self.model.0, self.model.1],
            "optimizer": [self.optimizer.0, self.optimizer.1],
            "scheduler": [self.scheduler.0, self.scheduler.1],
        })
    }

    fn spec(&self) -> ContainerSpec {
        ContainerSpec::model(self.model.0, kw(&self.model.1))
            .optimizer(self.optimizer.0, kw(&self.optimizer.1))
            .scheduler(self.scheduler.0, kw(&self.scheduler.1))
    }
}

fn kw(v: &Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

fn child(class: &str, kwargs: Value) -> Value {
    json!({"__type__": "spec", "class": class, "kwargs": kwargs})
}

fn mlp() -> (&'static str, Value) {
    (models::MLP, json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3}))
}

/// `SequentialLR([LinearLR, CosineAnnealingLR])`, the usual warmup.
fn warmup_cosine() -> (&'static str, Value) {
    (
        sched::SEQUENTIAL_LR,
        json!({"schedulers": [child(sched::LINEAR_LR, json!({"start_factor": 0.1, "total_iters": 5})),
                              child(sched::COSINE_ANNEALING_LR, json!({"T_max": 95, "eta_min": 0.001}))],
               "milestones": [5]}),
    )
}

fn config(name: &str) -> Config {
    match name {
        "adam_warm_restarts" => Config {
            model: mlp(),
            optimizer: (optim::ADAM, json!({"lr": 0.01})),
            scheduler: (
                sched::COSINE_ANNEALING_WARM_RESTARTS,
                json!({"T_0": 7, "T_mult": 2, "eta_min": 0.001}),
            ),
        },
        "nadam_sequential" => Config {
            model: mlp(),
            optimizer: (
                optim::NADAM,
                json!({"lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": true, "momentum_decay": 0.005}),
            ),
            scheduler: warmup_cosine(),
        },
        "radam_sequential" => Config {
            model: mlp(),
            optimizer: (
                optim::RADAM,
                json!({"lr": 0.01, "weight_decay": 0.02, "decoupled_weight_decay": true}),
            ),
            scheduler: (
                sched::SEQUENTIAL_LR,
                json!({"schedulers": [child(sched::CONSTANT_LR, json!({"factor": 0.5, "total_iters": 10})),
                                      child(sched::EXPONENTIAL_LR, json!({"gamma": 0.98}))],
                       "milestones": [10]}),
            ),
        },
        "adamax_chained" => Config {
            model: mlp(),
            optimizer: (optim::ADAMAX, json!({"lr": 0.01})),
            scheduler: (
                sched::CHAINED_SCHEDULER,
                json!({"schedulers": [child(sched::MULTI_STEP_LR, json!({"milestones": [30, 60, 60], "gamma": 0.5})),
                                      child(sched::LINEAR_LR, json!({"start_factor": 0.2, "total_iters": 20}))]}),
            ),
        },
        "adadelta_cyclic" => Config {
            model: mlp(),
            optimizer: (optim::ADADELTA, json!({"lr": 1.0, "weight_decay": 0.01})),
            scheduler: (
                sched::CYCLIC_LR,
                json!({"base_lr": 0.1, "max_lr": 1.0, "step_size_up": 10, "cycle_momentum": false}),
            ),
        },
        "rprop_cyclic" => Config {
            model: mlp(),
            optimizer: (optim::RPROP, json!({"lr": 0.01})),
            scheduler: (
                sched::CYCLIC_LR,
                json!({"base_lr": 0.001, "max_lr": 0.01, "step_size_up": 8, "mode": "triangular2",
                       "cycle_momentum": false}),
            ),
        },
        "asgd_sequential" => Config {
            model: mlp(),
            optimizer: (optim::ASGD, json!({"lr": 0.05, "t0": 20.0, "lambd": 0.001})),
            scheduler: warmup_cosine(),
        },
        "adafactor_chained" => Config {
            model: mlp(),
            optimizer: (optim::ADAFACTOR, json!({"lr": 0.01, "weight_decay": 0.01})),
            scheduler: (
                sched::CHAINED_SCHEDULER,
                json!({"schedulers": [child(sched::CONSTANT_LR, json!({"factor": 0.5, "total_iters": 6})),
                                      child(sched::EXPONENTIAL_LR, json!({"gamma": 0.97}))]}),
            ),
        },
        "muon_cyclic" => Config {
            model: (
                models::LINEAR,
                json!({"in_features": 4, "out_features": 3, "bias": false}),
            ),
            optimizer: (optim::MUON, json!({"lr": 0.02, "momentum": 0.9})),
            scheduler: (
                sched::CYCLIC_LR,
                json!({"base_lr": 0.005, "max_lr": 0.02, "step_size_up": 6,
                       "base_momentum": 0.8, "max_momentum": 0.95}),
            ),
        },
        "sgd_cyclic_momentum" => Config {
            model: mlp(),
            optimizer: (optim::SGD, json!({"lr": 0.05, "momentum": 0.9})),
            scheduler: (
                sched::CYCLIC_LR,
                json!({"base_lr": 0.01, "max_lr": 0.05, "step_size_up": 7, "mode": "exp_range", "gamma": 0.99}),
            ),
        },
        other => panic!("no configuration {other}"),
    }
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

fn loaded(path: &Path) -> Snapshot {
    let mut c = ModelContainer::new();
    c.load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    snapshot(&c)
}

/// Asserts `a` is bit-identical to `b`: every tensor, every learning rate
/// and the whole scheduler state.
fn assert_identical(a: &Snapshot, b: &Snapshot, label: &str) {
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>(),
        "{label}"
    );
    for (name, t) in &a.tensors {
        let other = &b.tensors[name];
        assert!(
            common::bit_equal(t, other),
            "{label}: {name} differs by {:e} relative",
            common::max_rel_diff(t, other)
        );
    }
    assert_eq!(a.lrs, b.lrs, "{label}: learning rates");
    assert_eq!(a.scheduler, b.scheduler, "{label}: scheduler state");
}

fn path_of(v: &Value) -> PathBuf {
    PathBuf::from(v.as_str().expect("a path"))
}

fn data_file(dir: &Path, data: &(Tensor, Tensor)) -> PathBuf {
    let file = dir.join("data.safetensors");
    Tensor::write_safetensors(&[("X", &data.0), ("Y", &data.1)], &file).unwrap();
    file
}

fn python_trains_rust_resumes(name: &str) {
    let config = config(name);
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let file = data_file(dir.path(), &data);
    let out = common::run_python(
        "package_resume.py",
        &json!({"mode": "train", "config": config.json(), "data": file, "out": dir.path(),
                "steps": HALF, "total": 2 * HALF}),
    );

    let mut c = ModelContainer::new();
    let metadata = c.load(path_of(&out["half"])).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(metadata["step"], HALF);
    assert_eq!(c.scheduler().unwrap().class(), config.scheduler.0);
    train(&mut c, &data, HALF, HALF);
    assert_identical(
        &snapshot(&c),
        &loaded(&path_of(&out["whole"])),
        &format!("{name}: Python -> Rust"),
    );
}

fn rust_trains_python_resumes(name: &str) {
    let config = config(name);
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let file = data_file(dir.path(), &data);

    tch::manual_seed(11);
    let mut c = ModelContainer::new();
    c.initialize(config.spec()).unwrap_or_else(|e| panic!("{name}: {e}"));
    train(&mut c, &data, 0, HALF);
    let half = c.save(dir.path(), "rust_half", &UserMetadata::new()).unwrap();
    train(&mut c, &data, HALF, HALF);
    let whole = snapshot(&c);

    let out = common::run_python(
        "package_resume.py",
        &json!({"mode": "resume", "checkpoint": half, "data": file, "out": dir.path(),
                "start": HALF, "steps": HALF}),
    );
    assert_identical(
        &loaded(&path_of(&out["resumed"])),
        &whole,
        &format!("{name}: Rust -> Python"),
    );
}

macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {
        mod python_trains_rust_resumes {
            $(#[test]
            fn $name() {
                super::python_trains_rust_resumes(stringify!($name));
            })*
        }
        mod rust_trains_python_resumes {
            $(#[test]
            fn $name() {
                super::rust_trains_python_resumes(stringify!($name));
            })*
        }
    };
}

both_ways!(
    adam_warm_restarts,
    nadam_sequential,
    radam_sequential,
    adamax_chained,
    adadelta_cyclic,
    rprop_cyclic,
    asgd_sequential,
    adafactor_chained,
    muon_cyclic,
    sgd_cyclic_momentum,
);
