//! Writes the Rust-side golden files of every format version into
//! tests/golden/v<N>/, each with a sidecar `<file>.json` holding what a
//! reader must find in it. It only ever adds: a file that exists is kept
//! as it is (golden files are never regenerated). Version 1 files are
//! written as version 1 (`with_format_version(1)`), should one be missing.
//!
//!     cargo run --release --example golden

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use pytorch_saver::extra_state::{Counters, Rng};
use pytorch_saver::format::{
    dtype_name, write_checkpoint, BytesTensor, Checkpoint, ClassSpec, Dtype, FileKind, MemberName, Metadata,
    TensorMember, TensorSource, WriteOptions, DTYPES,
};
use pytorch_saver::{models, optim, sched, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The sidecar: the file's whole metadata and every tensor's bytes.
fn sidecar(path: &Path, extra: Map<String, Value>) -> Value {
    let ckpt = Checkpoint::open(path).expect("what we just wrote is valid");
    let mut members = Map::new();
    for m in ckpt.members().iter().filter(|m| m.name != MemberName::Metadata) {
        let tensors: Map<String, Value> = m
            .tensors
            .iter()
            .map(|t| {
                let v = json!({"dtype": dtype_name(t.dtype), "shape": t.shape, "hex": hex(ckpt.tensor_bytes(t))});
                (t.name.clone(), v)
            })
            .collect();
        members.insert(m.name.as_str().into(), Value::Object(tensors));
    }
    let mut v = json!({"metadata": ckpt.metadata().to_json(), "tensors": members});
    v.as_object_mut().expect("object").extend(extra);
    v
}

fn keep_or_write(dir: &Path, name: &str, write: impl FnOnce(&Path) -> (PathBuf, Map<String, Value>)) {
    let target = dir.join(name);
    if target.exists() {
        println!("kept    {}", target.display());
        return;
    }
    let scratch = tempfile::tempdir().expect("temp dir");
    let (written, extra) = write(scratch.path());
    let expected = sidecar(&written, extra);
    std::fs::copy(&written, &target).expect("copy golden file");
    let json = serde_json::to_string_pretty(&expected).expect("JSON") + "\n";
    std::fs::write(dir.join(format!("{name}.json")), json).expect("write sidecar");
    println!("added   {}", target.display());
}

/// The golden files of format version `version` are written as it.
fn container(version: u64) -> ModelContainer {
    ModelContainer::new()
        .with_format_version(version)
        .expect("a version this library writes")
}

/// The objects a version 2 golden checkpoint tracks as extra state.
#[derive(Clone, Copy, PartialEq)]
enum Extra {
    None,
    /// `rng` (the global generator) and `counters` {step, epoch: 1}.
    RngAndCounters,
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// A tensor's values as f32 (exact for f32; int64 counters are small).
fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1).to_kind(Kind::Float)).expect("f32 tensor")
}

/// The loop tests/golden.rs repeats on a training checkpoint: MSE on one
/// batch, optimizer step, scheduler step (with the loss as metric for
/// ReduceLROnPlateau).
fn train(c: &mut ModelContainer, x: &Tensor, y: &Tensor, steps: usize, scheduler: bool) {
    for _ in 0..steps {
        c.zero_grad().expect("zero_grad");
        let out = c.model().and_then(|m| m.forward_t(x, true)).expect("forward");
        let loss = (out - y).square().mean(Kind::Float);
        loss.backward();
        c.step().expect("step");
        if !scheduler {
            continue;
        }
        if c.scheduler().expect("scheduler").needs_metric() {
            c.scheduler_step_with_metric(loss.double_value(&[]))
                .expect("scheduler step");
        } else {
            c.scheduler_step().expect("scheduler step");
        }
    }
}

/// A training checkpoint of the MLP with `optimizer` and `scheduler`,
/// trained `before` steps (the scheduler stepped only if `step_scheduler`),
/// and the sidecar's `resume`: the batch, and the parameters and LRs after
/// `after` more steps of [`train`] from the loaded file.
fn training_checkpoint(
    out: &Path,
    seed: i64,
    optimizer: (&str, Value),
    scheduler: (&str, Value),
    step_scheduler: bool,
) -> (PathBuf, Map<String, Value>) {
    let model = (
        models::MLP,
        json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}),
    );
    let parts = (Some(optimizer), Some(scheduler));
    matrix_checkpoint(out, seed, model, &[4], parts, step_scheduler, (1, Extra::None))
}

/// A checkpoint of `model` (inputs of shape `[batch, in_shape..]`, 3
/// outputs), with an optimizer and scheduler when given, trained 10 steps,
/// and its sidecar extras: the `forward` of a fixed input, and with an
/// optimizer the `resume` of [`training_checkpoint`]. Written as format
/// `version`, tracking `extra`.
fn matrix_checkpoint(
    out: &Path,
    seed: i64,
    model: (&str, Value),
    in_shape: &[i64],
    (optimizer, scheduler): Training<'_>,
    step_scheduler: bool,
    (version, extra): (u64, Extra),
) -> (PathBuf, Map<String, Value>) {
    let (before, after) = (10, 5);
    tch::manual_seed(seed);
    let mut spec = ContainerSpec::model(model.0, kwargs(model.1));
    if let Some((class, kw)) = optimizer {
        spec = spec.optimizer(class, kwargs(kw));
    }
    if let Some((class, kw)) = scheduler {
        spec = spec.scheduler(class, kwargs(kw));
    }
    let mut c = container(version);
    c.initialize(spec).expect("initialize");
    let batch = |n: i64| [&[n], in_shape].concat();
    let x = Tensor::randn(batch(6), (Kind::Float, Device::Cpu));
    let y = Tensor::randn([6, 3], (Kind::Float, Device::Cpu));
    let trains = c.optimizer().is_some();
    if trains {
        train(&mut c, &x, &y, before, step_scheduler);
    }
    if extra == Extra::RngAndCounters {
        c.track("rng", Rng::new()).expect("track");
        let counters = Counters::new().with("step", before as i64).with("epoch", 1);
        c.track("counters", counters).expect("track");
    }
    let path = c
        .save(
            out,
            "golden",
            &UserMetadata::new()
                .with("step", if trains { before } else { 0 })
                .expect("metadata"),
        )
        .expect("save");

    let numel = 2 * in_shape.iter().product::<i64>();
    let probe = Tensor::linspace(-1.0, 1.0, numel, (Kind::Float, Device::Cpu)).reshape(batch(2));
    let output = c.model().and_then(|m| m.forward(&probe)).expect("forward");
    let mut extra = kwargs(json!({
        "forward": {"input": f32s(&probe), "input_shape": batch(2), "output": f32s(&output)}
    }));
    if !trains {
        return (path, extra);
    }
    let mut resumed = ModelContainer::new();
    resumed.load(&path).expect("load what was just written");
    train(&mut resumed, &x, &y, after, true);
    let params: Map<String, Value> = resumed
        .model()
        .expect("model")
        .state_dict()
        .iter()
        .map(|(n, t)| (n.clone(), json!(f32s(t))))
        .collect();
    let resume = json!({
        "input": f32s(&x), "input_shape": batch(6),
        "target": f32s(&y), "target_shape": [6, 3],
        "steps": after,
        "params_after": params,
        "lrs_after": resumed.lrs().expect("lrs"),
    });
    extra.insert("resume".into(), resume);
    (path, extra)
}

fn main() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    version_1(&golden.join("v1"));
    version_2(&golden.join("v2"));
}

/// Version 2 (FORMAT.md 11): extra training state.
fn version_2(dir: &Path) {
    std::fs::create_dir_all(dir).expect("golden dir");
    // The v1 matrix's MLP with Adam and StepLR, trained 10 steps, with the
    // RNG and the counters tracked.
    keep_or_write(dir, "rust_v2_mlp_extra_checkpoint.zip", |out| {
        let model = (
            models::MLP,
            json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}),
        );
        let parts = (
            Some((optim::ADAM, json!({"lr": 0.01}))),
            Some((sched::STEP_LR, json!({"step_size": 3, "gamma": 0.5}))),
        );
        matrix_checkpoint(out, 40, model, &[4], parts, true, (2, Extra::RngAndCounters))
    });
    // Every optimizer and scheduler added with version 2's typed kwargs:
    // composites carry their children as `spec` tags.
    for (name, model, optimizer, scheduler) in v2_training_combos() {
        keep_or_write(dir, &format!("rust_v2_{name}_checkpoint.zip"), |out| {
            let parts = (Some(optimizer), Some(scheduler));
            matrix_checkpoint(out, 50, model, &[4], parts, true, (2, Extra::None))
        });
    }
    keep_or_write(dir, "rust_v2_mlp_lbfgs_steplr_checkpoint.zip", lbfgs_checkpoint);
}

/// LBFGS's kwargs in the golden files: a short history, so that it is
/// full and has rolled over by the save, and the strong Wolfe line search.
fn lbfgs_kwargs() -> Value {
    json!({"lr": 0.5, "max_iter": 4, "history_size": 3, "line_search_fn": "strong_wolfe"})
}

/// The matrix's MLP with LBFGS and StepLR, trained 6 steps with a closure
/// (gradients zeroed, MSE on one batch, backward), and the sidecar's
/// `forward`. LBFGS's state is global (FORMAT.md 5), its stacked history
/// included. No `resume` record: replaying one needs a closure.
fn lbfgs_checkpoint(out: &Path) -> (PathBuf, Map<String, Value>) {
    tch::manual_seed(60);
    let spec = ContainerSpec::model(
        models::MLP,
        kwargs(json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2})),
    )
    .optimizer(optim::LBFGS, kwargs(lbfgs_kwargs()))
    .scheduler(sched::STEP_LR, kwargs(json!({"step_size": 2, "gamma": 0.5})));
    let mut c = container(2);
    c.initialize(spec).expect("initialize");
    let x = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([6, 3], (Kind::Float, Device::Cpu));
    for _ in 0..6 {
        let parts = c.parts_mut().expect("parts");
        let model = &*parts.model;
        let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, t)| t).collect();
        let mut closure = || -> pytorch_saver::Result<f64> {
            for p in &params {
                p.shallow_clone().zero_grad();
            }
            let loss = (model.forward_t(&x, true)? - &y).square().mean(Kind::Float);
            loss.backward();
            Ok(loss.double_value(&[]))
        };
        let optimizer = parts.optimizer.expect("optimizer");
        optimizer.step_with_closure(&mut closure).expect("LBFGS step");
        c.scheduler_step().expect("scheduler step");
    }
    let path = c
        .save(out, "golden", &UserMetadata::new().with("step", 6).expect("metadata"))
        .expect("save");
    let probe = Tensor::linspace(-1.0, 1.0, 8, (Kind::Float, Device::Cpu)).reshape([2, 4]);
    let output = c.model().and_then(|m| m.forward(&probe)).expect("forward");
    let extra = kwargs(json!({
        "forward": {"input": f32s(&probe), "input_shape": [2, 4], "output": f32s(&output)}
    }));
    (path, extra)
}

/// A `spec` tag (FORMAT.md 11.2): a child scheduler of a composite.
fn spec(class: &str, kwargs: Value) -> Value {
    json!({"__type__": "spec", "class": class, "kwargs": kwargs})
}

/// A class name and its kwargs.
type Class = (&'static str, Value);

/// The version 2 training checkpoints: (name, model, optimizer, scheduler).
/// Muon takes 2-D parameters only, hence a Linear without bias.
fn v2_training_combos() -> Vec<(&'static str, Class, Class, Class)> {
    let mlp = || {
        (
            models::MLP,
            json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}),
        )
    };
    let warmup_cosine = json!({
        "schedulers": [
            spec(sched::LINEAR_LR, json!({"start_factor": 0.1, "total_iters": 4})),
            spec(sched::COSINE_ANNEALING_LR, json!({"T_max": 20, "eta_min": 0.001})),
        ],
        "milestones": [4],
    });
    vec![
        (
            "mlp_nadam_sequential",
            mlp(),
            (
                optim::NADAM,
                json!({"lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": true, "momentum_decay": 0.005}),
            ),
            (sched::SEQUENTIAL_LR, warmup_cosine.clone()),
        ),
        (
            "mlp_radam_chained",
            mlp(),
            (
                optim::RADAM,
                json!({"lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": true}),
            ),
            (
                sched::CHAINED_SCHEDULER,
                json!({"schedulers": [
                    spec(sched::CONSTANT_LR, json!({"factor": 0.5, "total_iters": 6})),
                    spec(sched::EXPONENTIAL_LR, json!({"gamma": 0.95})),
                ]}),
            ),
        ),
        (
            "mlp_adamax_cyclic",
            mlp(),
            (optim::ADAMAX, json!({"lr": 0.01})),
            (
                sched::CYCLIC_LR,
                json!({"base_lr": 0.001, "max_lr": 0.01, "step_size_up": 3, "mode": "triangular2",
                       "cycle_momentum": false}),
            ),
        ),
        (
            "mlp_adadelta_sequential",
            mlp(),
            (optim::ADADELTA, json!({"lr": 1.0, "rho": 0.85})),
            (
                sched::SEQUENTIAL_LR,
                json!({"schedulers": [
                    spec(sched::CONSTANT_LR, json!({"factor": 0.25, "total_iters": 3})),
                    spec(sched::STEP_LR, json!({"step_size": 2, "gamma": 0.7})),
                ], "milestones": [5]}),
            ),
        ),
        (
            "mlp_rprop_cyclic",
            mlp(),
            (optim::RPROP, json!({"lr": 0.005, "etas": [0.4, 1.3]})),
            (
                sched::CYCLIC_LR,
                json!({"base_lr": 0.001, "max_lr": 0.005, "step_size_up": 4, "mode": "exp_range",
                       "gamma": 0.97, "cycle_momentum": false}),
            ),
        ),
        (
            "mlp_asgd_sequential",
            mlp(),
            (optim::ASGD, json!({"lr": 0.02, "t0": 4.0})),
            (sched::SEQUENTIAL_LR, warmup_cosine),
        ),
        (
            "mlp_adafactor_chained",
            mlp(),
            (optim::ADAFACTOR, json!({"lr": 0.01})),
            (
                sched::CHAINED_SCHEDULER,
                json!({"schedulers": [
                    spec(sched::LINEAR_LR, json!({"start_factor": 0.5, "total_iters": 5})),
                    spec(sched::MULTI_STEP_LR, json!({"milestones": [3, 8], "gamma": 0.5})),
                ]}),
            ),
        ),
        (
            "linear_muon_cyclic",
            (
                models::LINEAR,
                json!({"in_features": 4, "out_features": 3, "bias": false}),
            ),
            (optim::MUON, json!({"lr": 0.02, "momentum": 0.9})),
            (
                sched::CYCLIC_LR,
                json!({"base_lr": 0.005, "max_lr": 0.02, "step_size_up": 3,
                       "base_momentum": 0.8, "max_momentum": 0.95}),
            ),
        ),
        (
            "mlp_sgd_cyclic_momentum",
            mlp(),
            (optim::SGD, json!({"lr": 0.05, "momentum": 0.9})),
            (
                sched::CYCLIC_LR,
                json!({"base_lr": 0.01, "max_lr": 0.05, "step_size_up": 2, "step_size_down": 4}),
            ),
        ),
    ]
}

fn version_1(dir: &Path) {
    std::fs::create_dir_all(dir).expect("golden dir");

    keep_or_write(dir, "rust_mlp_inference.zip", |out| {
        tch::manual_seed(0);
        let mut c = container(1);
        c.initialize(ContainerSpec::model(
            models::MLP,
            kwargs(json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 3})),
        ))
        .expect("MLP");
        let x = Tensor::linspace(-1.0, 1.0, 8, (Kind::Float, Device::Cpu)).reshape([2, 4]);
        let y = c.model().and_then(|m| m.forward(&x)).expect("forward");
        let input = Vec::<f32>::try_from(x.flatten(0, -1)).expect("f32");
        let output = Vec::<f32>::try_from(y.flatten(0, -1)).expect("f32");
        let path = c.save_inference(out, "golden", &UserMetadata::new()).expect("save");
        (
            path,
            kwargs(json!({"forward": {"input": input, "input_shape": [2, 4], "output": output}})),
        )
    });

    keep_or_write(dir, "rust_linear_checkpoint.zip", |out| {
        tch::manual_seed(1);
        let mut c = container(1);
        c.initialize(ContainerSpec::model(
            models::LINEAR,
            kwargs(json!({"in_features": 3, "out_features": 2})),
        ))
        .expect("Linear");
        let meta = UserMetadata::new()
            .with("loss", 0.55)
            .and_then(|m| m.with("epoch", 5))
            .and_then(|m| m.with("notes", json!({"text": "ünïcode ✓", "list": [1, 2.5, null, true]})))
            .expect("metadata");
        (c.save(out, "golden", &meta).expect("save"), Map::new())
    });

    keep_or_write(dir, "rust_all_dtypes_inference.zip", |out| {
        let mut tensors = Vec::new();
        for (i, &d) in DTYPES.iter().enumerate() {
            let size = d.bitsize() / 8;
            let pattern = |n: usize| -> Vec<u8> {
                if d == Dtype::BOOL {
                    (0..n).map(|j| (j % 2) as u8).collect()
                } else {
                    (0..n * size).map(|j| (j * 37 + i * 11) as u8).collect()
                }
            };
            let name = dtype_name(d).to_lowercase();
            for (kind, shape, n) in [
                ("matrix", vec![2, 3], 6),
                ("scalar", vec![], 1),
                ("empty", vec![0, 4], 0),
            ] {
                let data = Cow::Owned(pattern(n));
                tensors.push(BytesTensor {
                    name: format!("{name}.{kind}"),
                    dtype: d,
                    shape,
                    data,
                });
            }
        }
        let mut meta = Metadata::new(
            FileKind::Inference,
            ClassSpec::new("tests.AllDtypes", Map::new()),
            1_795_000_000,
        );
        meta.format_version = 1;
        meta.user.insert(
            "description".into(),
            "every v1 dtype as matrix, rank-0 and empty tensors".into(),
        );
        let members = [TensorMember {
            name: MemberName::Model,
            tensors: tensors.iter().map(|t| t as &dyn TensorSource).collect(),
        }];
        let path = write_checkpoint(
            out,
            "golden_inference_1795000000",
            &meta,
            &members,
            &WriteOptions::default(),
        )
        .expect("write");
        (path, Map::new())
    });

    // Optimizer and scheduler state (FORMAT.md sections 5 and 6).
    keep_or_write(dir, "rust_mlp_adam_warm_restarts_checkpoint.zip", |out| {
        training_checkpoint(
            out,
            2,
            (optim::ADAM, json!({"lr": 0.01, "amsgrad": true})),
            (sched::COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 4, "T_mult": 2})),
            true,
        )
    });
    // ReduceLROnPlateau never stepped: its `best` is inf, the non-finite
    // float encoding of 3.4.
    keep_or_write(dir, "rust_mlp_sgd_plateau_checkpoint.zip", |out| {
        training_checkpoint(
            out,
            3,
            (optim::SGD, json!({"lr": 0.05, "momentum": 0.9, "weight_decay": 0.001})),
            (sched::REDUCE_LR_ON_PLATEAU, json!({"patience": 1, "factor": 0.5})),
            false,
        )
    });

    // The cross-language matrix (tests/golden/README.md): each model with
    // no optimizer, SGD + StepLR, Adam + CosineAnnealingWarmRestarts and
    // AdamW + OneCycleLR; tests/golden/generate_python.py writes the same
    // matrix from Python.
    for (model_name, model) in [
        (
            "mlp",
            (
                models::MLP,
                json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}),
            ),
        ),
        ("linear", (models::LINEAR, json!({"in_features": 4, "out_features": 3}))),
    ] {
        for (i, (combo, optimizer, scheduler)) in matrix_combos().into_iter().enumerate() {
            keep_or_write(dir, &format!("rust_matrix_{model_name}_{combo}.zip"), |out| {
                let parts = (optimizer, scheduler);
                matrix_checkpoint(out, 10 + i as i64, model.clone(), &[4], parts, true, (1, Extra::None))
            });
        }
    }

    // Portable Sequentials (docs/MODELS.md), also written by
    // tests/golden/generate_python.py: a small conv net, and a 1-d net
    // with most other layer types.
    let combos = matrix_combos();
    for (name, layers, in_shape, combo) in sequential_nets() {
        let (combo_name, optimizer, scheduler) = combos.iter().find(|c| c.0 == combo).expect("a combo").clone();
        keep_or_write(dir, &format!("rust_sequential_{name}_{combo_name}.zip"), |out| {
            let model = (models::SEQUENTIAL, json!({ "layers": layers }));
            matrix_checkpoint(
                out,
                30,
                model,
                &in_shape,
                (optimizer, scheduler),
                true,
                (1, Extra::None),
            )
        });
    }
}

/// The golden Sequentials: name, layers, per-example input shape, combo.
fn sequential_nets() -> Vec<(&'static str, Value, Vec<i64>, &'static str)> {
    vec![
        (
            "convnet",
            json!([
                {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1, "bias": false},
                {"type": "BatchNorm2d", "num_features": 4},
                {"type": "ReLU"},
                {"type": "MaxPool2d", "kernel_size": 2},
                {"type": "Flatten"},
                {"type": "Linear", "in_features": 36, "out_features": 3}
            ]),
            vec![1, 6, 6],
            "adam_warm_restarts",
        ),
        (
            "layers",
            json!([
                {"type": "Conv1d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": "same"},
                {"type": "BatchNorm1d", "num_features": 4, "momentum": null},
                {"type": "LeakyReLU", "negative_slope": 0.1},
                {"type": "Flatten"},
                {"type": "LayerNorm", "normalized_shape": 32},
                {"type": "Linear", "in_features": 32, "out_features": 8},
                {"type": "GELU", "approximate": "tanh"},
                {"type": "Linear", "in_features": 8, "out_features": 8},
                {"type": "SiLU"},
                {"type": "Linear", "in_features": 8, "out_features": 3},
                {"type": "Tanh"}
            ]),
            vec![3, 8],
            "sgd_steplr",
        ),
    ]
}

type Part = Option<(&'static str, Value)>;

/// An optimizer and a scheduler, each a class name and kwargs, if any.
type Training<'a> = (Option<(&'a str, Value)>, Option<(&'a str, Value)>);

/// The optimizer + scheduler pairs of the golden matrix.
fn matrix_combos() -> Vec<(&'static str, Part, Part)> {
    vec![
        ("none", None, None),
        (
            "sgd_steplr",
            Some((optim::SGD, json!({"lr": 0.05, "momentum": 0.9}))),
            Some((sched::STEP_LR, json!({"step_size": 3, "gamma": 0.5}))),
        ),
        (
            "adam_warm_restarts",
            Some((optim::ADAM, json!({"lr": 0.01}))),
            Some((sched::COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 4, "T_mult": 2}))),
        ),
        (
            "adamw_onecycle",
            Some((optim::ADAMW, json!({"lr": 0.01, "weight_decay": 0.01}))),
            Some((sched::ONE_CYCLE_LR, json!({"max_lr": 0.02, "total_steps": 40}))),
        ),
    ]
}
