//! One optimizer step on a 50 MiB MLP, side by side in one run: ours
//! (torch.optim's single-tensor algorithm on tch tensors), LibTorch's C++
//! optimizer through tch (`nn::Adam`, `nn::Sgd`), and PyTorch's own
//! torch.optim (single-tensor and foreach) in a Python subprocess on the
//! same libtorch. Prints medians and ratios.
//!
//!     cargo bench --bench optim_step [-- --runs N]

use std::process::Command;
use std::time::{Duration, Instant};

use pytorch_saver::optim::{Optimizer, ADAM, SGD};
use pytorch_saver::{models, ContainerSpec, ModelContainer};
use serde_json::{json, Map, Value};
use tch::nn::OptimizerConfig;
use tch::{nn, Kind, Tensor};

/// Builds LibTorch's C++ optimizer over the model's var store.
type TchOptimizer<'a> = Box<dyn Fn() -> nn::Optimizer + 'a>;

const IN: i64 = 1024;
const HIDDEN: i64 = 2048;
const OUT: i64 = 1024;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median of `runs` timings of `f`, after 3 untimed warm-up calls.
fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..3 {
        f();
    }
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// A fresh MLP whose parameters all have a gradient.
fn model() -> ModelContainer {
    tch::manual_seed(0);
    let mut c = ModelContainer::new();
    let kw = json!({"in_dim": IN, "hidden_dim": HIDDEN, "n_classes": OUT, "n_layers": 3});
    c.initialize(ContainerSpec::model(
        models::MLP,
        kw.as_object().cloned().unwrap_or_default(),
    ))
    .expect("MLP");
    let x = Tensor::randn([8, IN], (Kind::Float, tch::Device::Cpu));
    c.model()
        .unwrap()
        .forward_t(&x, true)
        .unwrap()
        .sum(Kind::Float)
        .backward();
    c
}

const PYTHON: &str = r#"
import json, sys, time, torch
from torch import nn
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
dims = [spec["in"], spec["hidden"], spec["hidden"], spec["hidden"], spec["out"]]
m = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(dims, dims[1:])])
m(torch.randn(8, spec["in"])).sum().backward()
out = {}
for name, cls, kw in [("adam", torch.optim.Adam, {"lr": 1e-3}),
                      ("sgd", torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9})]:
    for foreach in (False, True):
        opt = cls(m.parameters(), foreach=foreach, **kw)
        times = []
        for i in range(spec["runs"] + 3):
            t = time.perf_counter(); opt.step(); times.append(time.perf_counter() - t)
        times = sorted(times[3:])
        out[f"{name}_{'foreach' if foreach else 'single'}"] = times[len(times) // 2]
print(json.dumps(out))
"#;

fn python(runs: usize) -> Option<Value> {
    let spec = json!({"in": IN, "hidden": HIDDEN, "out": OUT, "runs": runs});
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let out = Command::new(python)
        .args(["-c", PYTHON, &spec.to_string()])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let c = model();
    let params = c.model().unwrap().parameters();
    let numel: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
    println!(
        "optimizer step, MLP {IN}-{HIDDEN}-{HIDDEN}-{HIDDEN}-{OUT}: {:.1} MiB of f32 parameters, {} threads, median of {runs}",
        numel as f64 * 4.0 / (1 << 20) as f64,
        tch::get_num_threads()
    );
    let py = python(runs);
    let py_time = |k: &str| py.as_ref().and_then(|p| p[k].as_f64()).map(Duration::from_secs_f64);

    let kw = |v: Value| -> Map<String, Value> { v.as_object().cloned().unwrap_or_default() };
    let cases: [(&str, &str, Value, TchOptimizer); 2] = [
        (
            "Adam",
            ADAM,
            json!({"lr": 1e-3}),
            Box::new(|| nn::Adam::default().build(c.model().unwrap().var_store(), 1e-3).unwrap()),
        ),
        (
            "SGD momentum 0.9",
            SGD,
            json!({"lr": 1e-3, "momentum": 0.9}),
            Box::new(|| {
                nn::Sgd {
                    momentum: 0.9,
                    ..Default::default()
                }
                .build(c.model().unwrap().var_store(), 1e-3)
                .unwrap()
            }),
        ),
    ];
    for (label, class, kwargs, tch_opt) in cases {
        let mut ours = Optimizer::new(class, &kw(kwargs), c.model().unwrap().parameters()).unwrap();
        let t_ours = time(runs, || ours.step().unwrap());
        let mut theirs = tch_opt();
        let t_tch = time(runs, || theirs.step());
        println!("\n{label}");
        println!(
            "  ours (torch.optim single-tensor math)  {:>9.2} ms",
            t_ours.as_secs_f64() * 1e3
        );
        println!(
            "  tch / LibTorch C++ optimizer           {:>9.2} ms   ours = {:.2}x",
            t_tch.as_secs_f64() * 1e3,
            t_ours.as_secs_f64() / t_tch.as_secs_f64()
        );
        let key = if class == ADAM { "adam" } else { "sgd" };
        for (variant, name) in [
            ("single", "torch.optim, foreach=False"),
            ("foreach", "torch.optim, foreach=True"),
        ] {
            if let Some(t) = py_time(&format!("{key}_{variant}")) {
                println!(
                    "  {name:<38} {:>9.2} ms   ours = {:.2}x",
                    t.as_secs_f64() * 1e3,
                    t_ours.as_secs_f64() / t.as_secs_f64()
                );
            }
        }
    }
    if py.is_none() {
        println!("\n(no Python comparison: run `make venv`)");
    }
}
