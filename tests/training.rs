//! Training state through the container: a run resumed from a checkpoint
//! in a fresh process equals an uninterrupted run bit for bit; Rust's
//! checkpoints resume in PyTorch (torch.optim's own load_state_dict) and
//! PyTorch's state resumes here; optimizer state that does not fit the
//! model is refused with nothing touched.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{batch_data as data, train_batches as train};
use pytorch_saver::format::{
    self, BytesTensor, Checkpoint, MemberName, Metadata, TensorMember, TensorSource, WriteOptions,
};
use pytorch_saver::optim::{
    ADADELTA, ADAFACTOR, ADAGRAD, ADAM, ADAMAX, ADAMW, ASGD, NADAM, RADAM, RMSPROP, RPROP, SGD,
};
use pytorch_saver::sched;
use pytorch_saver::{models, ContainerSpec, Error, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::Tensor;

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

fn mlp_kwargs() -> Map<String, Value> {
    kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3}))
}

/// A composite's child scheduler, as the file holds it: a `spec` tag.
fn child(class: &str, kwargs: Value) -> Value {
    json!({"__type__": "spec", "class": class, "kwargs": kwargs})
}

/// The usual warmup: LinearLR for `warmup` steps, then CosineAnnealingLR.
fn warmup(start_factor: f64, warmup: i64, t_max: i64, eta_min: f64) -> Value {
    json!({"schedulers": [child(sched::LINEAR_LR, json!({"start_factor": start_factor, "total_iters": warmup})),
                          child(sched::COSINE_ANNEALING_LR, json!({"T_max": t_max, "eta_min": eta_min}))],
           "milestones": [warmup]})
}

/// Optimizer and scheduler pairs covering every optimizer and the
/// schedulers with the most state; the newer optimizers under the
/// composite schedulers (most under SequentialLR's warmup, whose switch
/// falls before or after the save at step 50) and CyclicLR. Muon is not here: it takes 2-D
/// parameters only and the MLP has biases (tests/optimizers.rs compares
/// it with torch.optim on 2-D parameters).
fn configs() -> Vec<(&'static str, Value, &'static str, Value)> {
    vec![
        (
            ADAM,
            json!({"lr": 0.01}),
            sched::COSINE_ANNEALING_WARM_RESTARTS,
            json!({"T_0": 7, "T_mult": 2, "eta_min": 0.001}),
        ),
        (
            SGD,
            json!({"lr": 0.05, "momentum": 0.9, "nesterov": true}),
            sched::STEP_LR,
            json!({"step_size": 15, "gamma": 0.5}),
        ),
        (
            ADAMW,
            json!({"lr": 0.01, "amsgrad": true}),
            sched::ONE_CYCLE_LR,
            json!({"max_lr": 0.05, "total_steps": 200}),
        ),
        (
            RMSPROP,
            json!({"lr": 0.001, "momentum": 0.5, "centered": true}),
            sched::REDUCE_LR_ON_PLATEAU,
            json!({"patience": 2, "factor": 0.7}),
        ),
        (
            ADAGRAD,
            json!({"lr": 0.05, "lr_decay": 0.001}),
            sched::LINEAR_LR,
            json!({"start_factor": 0.5, "total_iters": 40}),
        ),
        (
            ADAMAX,
            json!({"lr": 0.01, "weight_decay": 0.001}),
            sched::SEQUENTIAL_LR,
            warmup(0.1, 10, 90, 0.0),
        ),
        (
            NADAM,
            json!({"lr": 0.01, "decoupled_weight_decay": true, "weight_decay": 0.01}),
            sched::SEQUENTIAL_LR,
            warmup(0.2, 60, 40, 0.001),
        ),
        (
            RADAM,
            json!({"lr": 0.01}),
            sched::SEQUENTIAL_LR,
            warmup(0.25, 5, 30, 0.0),
        ),
        (
            ADADELTA,
            json!({"rho": 0.8}),
            sched::CHAINED_SCHEDULER,
            json!({"schedulers": [child(sched::CONSTANT_LR, json!({"factor": 0.5, "total_iters": 30})),
                                  child(sched::EXPONENTIAL_LR, json!({"gamma": 0.99}))]}),
        ),
        (
            RPROP,
            json!({"lr": 0.005, "step_sizes": [1e-5, 0.1]}),
            sched::CHAINED_SCHEDULER,
            json!({"schedulers": [child(sched::LINEAR_LR, json!({"start_factor": 0.5, "total_iters": 20})),
                                  child(sched::MULTI_STEP_LR, json!({"milestones": [30, 60], "gamma": 0.5}))]}),
        ),
        (
            ASGD,
            json!({"lr": 0.05, "t0": 10.0}),
            sched::CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.05, "step_size_up": 15, "mode": "triangular2",
                   "cycle_momentum": false}),
        ),
        (
            ADAFACTOR,
            json!({"lr": 0.02, "weight_decay": 0.01}),
            sched::SEQUENTIAL_LR,
            warmup(0.1, 30, 70, 0.001),
        ),
    ]
}

fn fresh(opt: &str, opt_kw: &Value, sched: &str, sched_kw: &Value) -> ModelContainer {
    tch::manual_seed(11);
    let mut c = ModelContainer::new();
    c.initialize(
        ContainerSpec::model(models::MLP, mlp_kwargs())
            .optimizer(opt, kw(opt_kw.clone()))
            .scheduler(sched, kw(sched_kw.clone())),
    )
    .unwrap_or_else(|e| panic!("{opt} + {sched}: {e}"));
    c
}

/// Everything that must survive a resume.
struct Snapshot {
    params: BTreeMap<String, Tensor>,
    state: BTreeMap<String, Tensor>,
    param_groups: Value,
    scheduler: Value,
}

fn snapshot(c: &ModelContainer) -> Snapshot {
    let sd = c.optimizer().unwrap().state_dict().unwrap();
    Snapshot {
        params: c.model().unwrap().state_dict(),
        state: sd
            .state
            .iter()
            .flat_map(|(i, s)| {
                s.iter()
                    .map(move |(k, t)| (format!("state.{i}.{k}"), t.shallow_clone()))
            })
            .collect(),
        param_groups: sd.param_groups.iter().map(|g| g.to_json()).collect(),
        scheduler: Value::Object(c.scheduler().unwrap().state_dict()),
    }
}

fn assert_bit_identical(a: &Snapshot, b: &Snapshot, label: &str) {
    assert_eq!(a.params.keys().collect::<Vec<_>>(), b.params.keys().collect::<Vec<_>>());
    for (n, t) in &a.params {
        assert!(common::bit_equal(t, &b.params[n]), "{label}: parameter {n} differs");
    }
    assert_eq!(
        a.state.keys().collect::<Vec<_>>(),
        b.state.keys().collect::<Vec<_>>(),
        "{label}"
    );
    for (n, t) in &a.state {
        assert!(common::bit_equal(t, &b.state[n]), "{label}: optimizer {n} differs");
    }
    assert_eq!(a.param_groups, b.param_groups, "{label}: param_groups (LRs) differ");
    assert_eq!(a.scheduler, b.scheduler, "{label}: scheduler state differs");
}

/// What a child process runs: load a checkpoint knowing nothing else,
/// train 50 more steps, save. Without the role variable it does nothing.
#[test]
fn child_process_role() {
    common::resume_child(ModelContainer::new(), 50, |c, start, steps| {
        train(c, &data(), start, steps);
    });
}

#[test]
fn resume_in_a_fresh_process_equals_uninterrupted_training_bit_for_bit() {
    let data = data();
    for (opt, opt_kw, sched, sched_kw) in configs() {
        let label = format!("{opt} + {sched}");
        let mut straight = fresh(opt, &opt_kw, sched, &sched_kw);
        train(&mut straight, &data, 0, 100);

        let dir = tempfile::tempdir().unwrap();
        let mut first = fresh(opt, &opt_kw, sched, &sched_kw);
        train(&mut first, &data, 0, 50);
        let ckpt = first
            .save(dir.path(), "half", &UserMetadata::new().with("step", 50).unwrap())
            .unwrap();
        let resumed_path = common::spawn_resume(&ckpt, dir.path());
        let mut resumed = ModelContainer::new();
        let meta = resumed.load(&resumed_path).unwrap();
        assert_eq!(meta["step"], 100);
        assert_eq!(meta["optim_kwargs"], opt_kw, "{label}");
        assert_eq!(meta["scheduler_kwargs"], sched_kw, "{label}");
        assert_bit_identical(&snapshot(&straight), &snapshot(&resumed), &label);
        assert_eq!(straight.lrs().unwrap(), resumed.lrs().unwrap(), "{label}");
    }
}

/// Numbers compared as f64 (Python writes `0` where Rust may write `0.0`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Compares a container with a PyTorch result file and JSON; returns
/// (worst relative difference, tensors compared, bit-identical ones).
fn compare_with_torch(c: &ModelContainer, file: &Path, json: &Value, label: &str) -> (f64, usize, usize) {
    let theirs = common::read_safetensors(file);
    let ours = snapshot(c);
    let mut worst = 0.0f64;
    let (mut n, mut same) = (0, 0);
    let mut check = |name: &str, t: &Tensor| {
        let other = theirs
            .get(name)
            .unwrap_or_else(|| panic!("{label}: PyTorch has no {name}"));
        worst = worst.max(common::max_rel_diff(t, other));
        n += 1;
        same += usize::from(common::bit_equal(&t.detach(), other));
    };
    for (name, t) in &ours.params {
        check(&format!("param.{name}"), t);
    }
    for (name, t) in &ours.state {
        check(name, t);
    }
    assert_eq!(
        theirs.len(),
        ours.params.len() + ours.state.len(),
        "{label}: tensor sets differ"
    );
    assert!(
        json_equal(&ours.param_groups, &json["param_groups"]),
        "{label}: param_groups differ:\n{}\n{}",
        ours.param_groups,
        json["param_groups"]
    );
    assert!(
        json_equal(&ours.scheduler, &json["scheduler"]),
        "{label}: scheduler state differs:\n{}\n{}",
        ours.scheduler,
        json["scheduler"]
    );
    (worst, n, same)
}

/// A training checkpoint written with the format layer alone.
fn write_training_file(
    dir: &Path,
    stem: &str,
    metadata: &Metadata,
    model: &[BytesTensor<'_>],
    optim: &[BytesTensor<'_>],
) -> PathBuf {
    let members = [
        TensorMember {
            name: MemberName::Model,
            tensors: model.iter().map(|t| t as &dyn TensorSource).collect(),
        },
        TensorMember {
            name: MemberName::Optimizer,
            tensors: optim.iter().map(|t| t as &dyn TensorSource).collect(),
        },
    ];
    format::write_checkpoint(dir, stem, metadata, &members, &WriteOptions::default()).unwrap()
}

/// A v2 checkpoint from PyTorch's state in the pytorch-saver layout (what
/// resume_torch.py dumped), written with the format layer.
fn checkpoint_from_torch(dir: &Path, state_file: &Path, state: &Value, opt_kw: &Value, sched_kw: &Value) -> PathBuf {
    let bytes = std::fs::read(state_file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut model = Vec::new();
    let mut optim = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => format::Dtype::F32,
            d => panic!("unexpected dtype {d:?}"),
        };
        let (member, local) = match name.strip_prefix("model.") {
            Some(n) => (&mut model, n.to_owned()),
            None => (&mut optim, name.clone()),
        };
        member.push(BytesTensor {
            name: local,
            dtype,
            shape: view.shape().to_vec(),
            data: view.data().to_vec().into(),
        });
    }
    let metadata = json!({
        "model_kwargs": mlp_kwargs(),
        "optim_kwargs": opt_kw,
        "scheduler_kwargs": sched_kw,
        "timestamp": 1_700_000_000u64,
        "__pytorch_saver__": {
            // Version 2: composite schedulers' kwargs hold spec tags.
            "format_version": 2,
            "kind": "checkpoint",
            "model": {"class": models::MLP},
            "optimizer": state["optimizer"],
            "scheduler": state["scheduler"],
            "producer": {"library": "tests/python/resume_torch.py", "version": "0", "language": "python", "torch_version": "2.13.0"},
        },
    });
    let metadata = Metadata::from_json(metadata.as_object().unwrap().clone()).unwrap();
    write_training_file(dir, "from_torch", &metadata, &model, &optim)
}

#[test]
fn checkpoints_resume_across_languages_rust_to_pytorch_and_back() {
    let data = data();
    let (mut worst, mut total, mut identical) = (0.0f64, 0, 0);
    for (opt, opt_kw, sched, sched_kw) in configs() {
        let label = format!("{opt} + {sched}");
        let dir = tempfile::tempdir().unwrap();
        let data_file = dir.path().join("data.safetensors");
        Tensor::write_safetensors(&[("X", &data.0), ("Y", &data.1)], &data_file).unwrap();
        let mut c = fresh(opt, &opt_kw, sched, &sched_kw);
        train(&mut c, &data, 0, 50);
        let ckpt = c.save(dir.path(), "rust", &UserMetadata::new()).unwrap();

        let result = common::run_python(
            "resume_torch.py",
            &json!({"checkpoint": ckpt, "data": data_file, "start": 50, "steps": 20, "extra": 30, "out": dir.path()}),
        );

        // Rust -> PyTorch: PyTorch's next 20 steps against ours.
        let mut ours = ModelContainer::new();
        ours.load(&ckpt).unwrap();
        train(&mut ours, &data, 50, 20);
        let (w, n, s) = compare_with_torch(
            &ours,
            &dir.path().join("from_rust.safetensors"),
            &result["from_rust"],
            &label,
        );
        (worst, total, identical) = (worst.max(w), total + n, identical + s);

        // PyTorch -> Rust: PyTorch's state at step 100 loads here, and our
        // next 20 steps against PyTorch's.
        let file = checkpoint_from_torch(
            dir.path(),
            &dir.path().join("python_state.safetensors"),
            &result["python_state"],
            &opt_kw,
            &sched_kw,
        );
        let mut from_torch = ModelContainer::new();
        from_torch
            .load(&file)
            .unwrap_or_else(|e| panic!("{label}: PyTorch's state does not load: {e}"));
        train(&mut from_torch, &data, 100, 20);
        let (w, n, s) = compare_with_torch(
            &from_torch,
            &dir.path().join("python_final.safetensors"),
            &result["python_final"],
            &label,
        );
        (worst, total, identical) = (worst.max(w), total + n, identical + s);
    }
    println!("cross-language resume: {identical}/{total} tensors bit-identical to PyTorch, worst relative difference {worst:e}");
    assert!(worst <= 1e-6, "worst relative difference {worst:e}");
}

/// Rewrites a checkpoint through `edit(metadata, optimizer tensors)`.
fn rewrite(src: &Path, dir: &Path, edit: impl FnOnce(&mut Metadata, &mut Vec<BytesTensor<'static>>)) -> PathBuf {
    let ckpt = Checkpoint::open(src).unwrap();
    let copy = |m: MemberName| -> Vec<BytesTensor<'static>> {
        ckpt.tensors(m)
            .iter()
            .map(|e| BytesTensor {
                name: e.name.clone(),
                dtype: e.dtype,
                shape: e.shape.clone(),
                data: ckpt.tensor_bytes(e).to_vec().into(),
            })
            .collect()
    };
    let model = copy(MemberName::Model);
    let mut optim = copy(MemberName::Optimizer);
    let mut meta = ckpt.metadata().clone();
    edit(&mut meta, &mut optim);
    write_training_file(dir, "edited", &meta, &model, &optim)
}

fn adam_container() -> ModelContainer {
    let mut c = fresh(ADAM, &json!({"lr": 0.01}), sched::STEP_LR, &json!({"step_size": 3}));
    train(&mut c, &data(), 0, 5);
    c
}

#[test]
fn optimizer_state_that_does_not_fit_is_refused_naming_the_parameter_with_nothing_touched() {
    let dir = tempfile::tempdir().unwrap();
    let src = adam_container().save(dir.path(), "good", &UserMetadata::new()).unwrap();

    // exp_avg of fc1.weight (index 0, [16, 4]) stored as [4, 16]: same
    // bytes, wrong shape.
    let bad_shape = rewrite(&src, dir.path(), |_, optim| {
        let t = optim.iter_mut().find(|t| t.name == "state.0.exp_avg").unwrap();
        t.shape = vec![4, 16];
    });
    // Parameter names swapped: fc1.bias's state ([16]) now claims to be
    // the state of the last layer's bias ([3]).
    let swapped = rewrite(&src, dir.path(), |meta, _| {
        meta.optimizer.as_mut().unwrap().param_names.swap(1, 7);
    });
    // A name the model does not have.
    let unknown = rewrite(&src, dir.path(), |meta, _| {
        meta.optimizer.as_mut().unwrap().param_names[2] = "fc9.weight".into();
    });
    // A state key Adam does not have.
    let foreign = rewrite(&src, dir.path(), |_, optim| {
        optim.iter_mut().find(|t| t.name == "state.3.exp_avg_sq").unwrap().name = "state.3.momentum_buffer".into();
    });
    let cases = [
        (bad_shape, "fc1.weight", "shape"),
        (swapped, "hidden_layers.4.bias", "shape"),
        (unknown, "fc9.weight", "does not have"),
        (foreign, "hidden_layers.0.bias", "exp_avg_sq"),
    ];

    for (file, param, why) in cases {
        // load: the container keeps what it had.
        let mut c = adam_container();
        let before = snapshot(&c);
        let before_params: Vec<Tensor> = before.params.values().map(|t| t.detach().copy()).collect();
        let err = c.load(&file).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::StateMismatch { .. }) && msg.contains(param) && msg.contains(why),
            "{}: {msg}",
            file.display()
        );
        let after = snapshot(&c);
        assert_bit_identical(&before, &after, "after a failed load");
        for (t, b) in after.params.values().zip(&before_params) {
            assert!(t.detach().equal(b), "a failed load changed the model");
        }

        // restore: into the objects held, nothing is touched either.
        let err = c.restore(&file).unwrap_err();
        assert!(err.to_string().contains(param), "restore: {err}");
        let after = snapshot(&c);
        for (t, b) in after.params.values().zip(&before_params) {
            assert!(t.detach().equal(b), "a failed restore changed the model");
        }
        assert_bit_identical(&before, &after, "after a failed restore");
    }
}

#[test]
fn restore_loads_all_three_parts_into_the_objects_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = adam_container();
    let path = a.save(dir.path(), "a", &UserMetadata::new()).unwrap();
    train(&mut a, &data(), 5, 7);
    let params_held = a.model().unwrap().parameters();
    a.restore(&path).unwrap();
    let mut reloaded = ModelContainer::new();
    reloaded.load(&path).unwrap();
    assert_bit_identical(&snapshot(&a), &snapshot(&reloaded), "restore vs load");
    // Same storage as before the restore: tensors handed out still see it.
    for ((_, held), (_, now)) in params_held.iter().zip(a.model().unwrap().parameters()) {
        assert_eq!(held.data_ptr(), now.data_ptr());
    }

    // A different optimizer or scheduler is a mismatch, named.
    let mut sgd = fresh(SGD, &json!({"lr": 0.1}), sched::STEP_LR, &json!({"step_size": 3}));
    let err = sgd.restore(&path).unwrap_err();
    assert!(
        err.to_string().contains("optimizer") && err.to_string().contains("torch.optim.Adam"),
        "{err}"
    );
}

#[test]
fn checkpoint_holds_optimizer_and_scheduler_inference_file_only_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let c = adam_container();
    let ckpt = Checkpoint::open(
        c.save(dir.path(), "t", &UserMetadata::new().with("epoch", 5).unwrap())
            .unwrap(),
    )
    .unwrap();
    let json = ckpt.metadata().to_json();
    let keys: Vec<&str> = json.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "model_kwargs",
            "optim_kwargs",
            "scheduler_kwargs",
            "timestamp",
            "epoch",
            "__pytorch_saver__"
        ]
    );
    let m = ckpt.metadata();
    assert_eq!(m.optimizer.as_ref().map(|o| o.class.as_str()), Some(ADAM));
    assert_eq!(m.scheduler.as_ref().map(|s| s.class.as_str()), Some(sched::STEP_LR));
    let names: Vec<&str> = ckpt
        .tensors(MemberName::Optimizer)
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        names.contains(&"state.0.exp_avg") && names.contains(&"state.7.step"),
        "{names:?}"
    );
    let step = ckpt
        .tensors(MemberName::Optimizer)
        .iter()
        .find(|e| e.name == "state.0.step")
        .unwrap();
    assert!(
        step.shape.is_empty() && step.dtype == format::Dtype::F32,
        "step is a rank-0 float32"
    );
    let internals = &json["__pytorch_saver__"];
    assert_eq!(internals["optimizer"]["param_names"][0], "fc1.weight");
    assert_eq!(internals["scheduler"]["state"]["last_epoch"], 5);

    let inference = Checkpoint::open(c.save_inference(dir.path(), "t", &UserMetadata::new()).unwrap()).unwrap();
    let json = inference.metadata().to_json();
    let keys: Vec<&str> = json.keys().map(String::as_str).collect();
    assert_eq!(keys, ["model_kwargs", "timestamp", "__pytorch_saver__"]);
    assert_eq!(inference.members().len(), 2);
}

#[test]
fn a_scheduler_needs_an_optimizer_and_a_failed_initialize_keeps_the_old_objects() {
    let mut c = adam_container();
    let before = snapshot(&c);
    let err = c
        .initialize(
            ContainerSpec::model(models::MLP, mlp_kwargs()).scheduler(sched::STEP_LR, kw(json!({"step_size": 1}))),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Usage(_)) && err.to_string().contains("optimizer"),
        "{err}"
    );
    let err = c
        .initialize(
            ContainerSpec::model(models::MLP, mlp_kwargs()).optimizer(ADAM, kw(json!({"lr": 0.1, "momentum": 0.9}))),
        )
        .unwrap_err();
    assert!(err.to_string().contains("unexpected kwarg \"momentum\""), "{err}");
    let err = c
        .initialize(ContainerSpec::model(models::MLP, mlp_kwargs()).optimizer("torch.optim.Lion", Map::new()))
        .unwrap_err();
    assert!(matches!(err, Error::UnknownName { kind: "optimizer", .. }), "{err}");
    assert_bit_identical(&before, &snapshot(&c), "after failed initializes");

    let mut bare = ModelContainer::new();
    bare.initialize(ContainerSpec::model(models::MLP, mlp_kwargs()))
        .unwrap();
    assert!(matches!(bare.step(), Err(Error::Usage(_))));
    assert!(matches!(bare.scheduler_step(), Err(Error::Usage(_))));
}

#[test]
fn scheduler_kwargs_that_need_the_saved_groups_rebuild_on_load() {
    // A Python user may construct a scheduler with last_epoch != -1 (it
    // needs initial_lr in the groups); the loaded groups have it.
    let dir = tempfile::tempdir().unwrap();
    let c = adam_container();
    let src = c.save(dir.path(), "a", &UserMetadata::new()).unwrap();
    let file = rewrite(&src, dir.path(), |meta, _| {
        let kwargs = &mut meta.scheduler.as_mut().unwrap().kwargs;
        kwargs.insert("last_epoch".into(), json!(4));
    });
    let mut loaded = ModelContainer::new();
    let meta = loaded.load(&file).unwrap();
    assert_eq!(meta["scheduler_kwargs"]["last_epoch"], 4);
    assert_bit_identical(&snapshot(&c), &snapshot(&loaded), "load with last_epoch");
}
