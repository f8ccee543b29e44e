//! The schedulers against PyTorch 2.13 itself: tests/python/lr_sequences.py
//! runs the same scenarios in torch, and every learning rate and momentum
//! after every step, every state_dict() snapshot and the groups the
//! constructors write must agree (bit for bit: the tolerance is 1e-12
//! relative, the expected difference 0). States cross between the two in
//! both directions. The error tests need no Python.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use pytorch_saver::optim::ParamGroup;
use pytorch_saver::sched::{self, Scheduler};
use pytorch_saver::Error;
use serde_json::{json, Map, Value};

const STEPS: usize = 1000;
const TOLERANCE: f64 = 1e-12;

/// One scheduler configuration, run identically in Rust and PyTorch.
struct Scenario {
    name: String,
    class: &'static str,
    kwargs: Value,
    adam: bool,
    /// Each group's `initial_lr` before the scheduler is built (resuming
    /// with `last_epoch`).
    initial_lrs: Option<[f64; 2]>,
    /// ReduceLROnPlateau's metric at each step.
    metrics: Option<Vec<f64>>,
}

const LRS: [f64; 2] = [0.1, 0.05];

/// A child scheduler of a composite, as the file holds it: a `spec` tag.
fn child(class: &str, kwargs: Value) -> Value {
    json!({"__type__": "spec", "class": class, "kwargs": kwargs})
}

fn scenario(class: &'static str, kwargs: Value) -> Scenario {
    let short = class.rsplit('.').next().unwrap();
    Scenario {
        name: format!("{short}({kwargs})"),
        class,
        kwargs,
        adam: false,
        initial_lrs: None,
        metrics: None,
    }
}

impl Scenario {
    fn adam(mut self) -> Self {
        self.adam = true;
        self.name.push_str(" Adam");
        self
    }

    fn resuming(mut self, initial_lrs: [f64; 2]) -> Self {
        self.initial_lrs = Some(initial_lrs);
        self.name.push_str(&format!(" initial_lr={initial_lrs:?}"));
        self
    }

    fn metrics(mut self, rising: bool, seed: u64) -> Self {
        self.metrics = Some(noisy_metric(rising, seed));
        self
    }

    fn metric(&self, i: usize) -> Option<f64> {
        self.metrics.as_ref().map(|m| m[i])
    }

    fn optimizer(&self) -> (&'static str, Value) {
        if self.adam {
            ("Adam", json!({}))
        } else {
            ("SGD", json!({"momentum": 0.9}))
        }
    }

    /// The groups PyTorch's SGD(momentum=0.9) or Adam() builds from
    /// `[{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.05}]`, in
    /// its key order.
    fn groups(&self) -> Vec<ParamGroup> {
        LRS.iter()
            .enumerate()
            .map(|(i, &lr)| {
                let mut options = if self.adam {
                    json!({"lr": lr, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0, "amsgrad": false,
                           "maximize": false, "foreach": null, "capturable": false, "differentiable": false,
                           "fused": null, "decoupled_weight_decay": false})
                } else {
                    json!({"lr": lr, "momentum": 0.9, "dampening": 0, "weight_decay": 0, "nesterov": false,
                           "maximize": false, "foreach": null, "differentiable": false, "fused": null})
                };
                if let Some(initial) = self.initial_lrs {
                    options["initial_lr"] = json!(initial[i]);
                }
                ParamGroup::new(vec![i], options.as_object().unwrap().clone())
            })
            .collect()
    }

    /// The scenario for lr_sequences.py.
    fn spec(&self, steps: usize, snapshots: &[usize], resume: Option<Value>) -> Value {
        let (optimizer, optimizer_kwargs) = self.optimizer();
        json!({
            "class": self.class,
            "kwargs": self.kwargs,
            "optimizer": optimizer,
            "optimizer_kwargs": optimizer_kwargs,
            "lrs": LRS,
            "initial_lrs": self.initial_lrs,
            "steps": steps,
            "metrics": self.metrics,
            "snapshots": snapshots,
            "resume": resume,
        })
    }

    fn build(&self, groups: &mut [ParamGroup]) -> Scheduler {
        let kwargs = self.kwargs.as_object().unwrap();
        Scheduler::new(self.class, kwargs, groups).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn step(&self, s: &mut Scheduler, groups: &mut [ParamGroup], i: usize) {
        let r = match self.metric(i) {
            Some(m) => s.step_with_metric(groups, m),
            None => s.step(groups),
        };
        r.unwrap_or_else(|e| panic!("{} step {}: {e}", self.name, i + 1));
    }
}

/// A loss-like metric (or, `rising`, an accuracy-like one) that improves
/// ever more slowly under deterministic noise, so that plateaus come and go.
fn noisy_metric(rising: bool, seed: u64) -> Vec<f64> {
    let mut x = seed;
    (0..STEPS)
        .map(|i| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.02;
            let trend = 1.0 / (1.0 + i as f64 / 40.0);
            if rising {
                1.0 - trend + noise
            } else {
                trend + noise
            }
        })
        .collect()
}

fn scenarios() -> Vec<Scenario> {
    use pytorch_saver::sched::*;
    vec![
        scenario(STEP_LR, json!({"step_size": 30, "gamma": 0.5})),
        scenario(STEP_LR, json!({"step_size": 7})),
        scenario(STEP_LR, json!({"step_size": 100, "gamma": 2})),
        scenario(STEP_LR, json!({"step_size": 10, "last_epoch": 25})).resuming([0.2, 0.1]),
        scenario(MULTI_STEP_LR, json!({"milestones": [100, 300, 300, 700], "gamma": 0.5})),
        scenario(MULTI_STEP_LR, json!({"milestones": [50, 5]})),
        scenario(EXPONENTIAL_LR, json!({"gamma": 0.995})),
        scenario(EXPONENTIAL_LR, json!({"gamma": 0.9})),
        scenario(EXPONENTIAL_LR, json!({"gamma": 0.99, "last_epoch": 3})).resuming([0.3, 0.01]),
        scenario(CONSTANT_LR, json!({"factor": 0.5, "total_iters": 40})),
        scenario(CONSTANT_LR, json!({})),
        scenario(CONSTANT_LR, json!({"factor": 0.25, "total_iters": 0})),
        scenario(LINEAR_LR, json!({"start_factor": 0.05, "total_iters": 40})),
        scenario(
            LINEAR_LR,
            json!({"start_factor": 1.0, "end_factor": 0.1, "total_iters": 500}),
        ),
        scenario(LINEAR_LR, json!({})),
        scenario(POLYNOMIAL_LR, json!({"total_iters": 800, "power": 1.0})),
        scenario(POLYNOMIAL_LR, json!({"total_iters": 300, "power": 2})),
        scenario(POLYNOMIAL_LR, json!({})),
        scenario(COSINE_ANNEALING_LR, json!({"T_max": 100, "eta_min": 0.001})),
        scenario(COSINE_ANNEALING_LR, json!({"T_max": 1000})),
        scenario(COSINE_ANNEALING_LR, json!({"T_max": 37, "eta_min": 0})),
        scenario(COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 10})),
        scenario(
            COSINE_ANNEALING_WARM_RESTARTS,
            json!({"T_0": 10, "T_mult": 2, "eta_min": 1e-4}),
        ),
        scenario(COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 7, "eta_min": 0.001})),
        scenario(
            COSINE_ANNEALING_WARM_RESTARTS,
            json!({"T_0": 10, "T_mult": 2, "last_epoch": 15}),
        )
        .resuming([0.2, 0.1]),
        scenario(ONE_CYCLE_LR, json!({"max_lr": 0.5, "total_steps": 1000})),
        scenario(
            ONE_CYCLE_LR,
            json!({"max_lr": [0.5, 0.2], "total_steps": 1000, "anneal_strategy": "linear"}),
        ),
        scenario(
            ONE_CYCLE_LR,
            json!({"max_lr": 0.01, "epochs": 10, "steps_per_epoch": 100, "three_phase": true}),
        )
        .adam(),
        scenario(
            ONE_CYCLE_LR,
            json!({"max_lr": [0.01, 1], "total_steps": 1000, "base_momentum": [0.8, 0.85], "max_momentum": 0.9,
                   "div_factor": 10.0, "final_div_factor": 100.0, "pct_start": 0.25}),
        )
        .adam(),
        scenario(
            ONE_CYCLE_LR,
            json!({"max_lr": 0.3, "total_steps": 1000, "three_phase": true, "anneal_strategy": "linear"}),
        ),
        scenario(
            ONE_CYCLE_LR,
            json!({"max_lr": 0.1, "total_steps": 1000, "cycle_momentum": false}),
        ),
        scenario(REDUCE_LR_ON_PLATEAU, json!({})).metrics(false, 1),
        scenario(
            REDUCE_LR_ON_PLATEAU,
            json!({"mode": "max", "threshold_mode": "abs", "threshold": 0.01, "patience": 3, "cooldown": 5,
                   "min_lr": 1e-4}),
        )
        .metrics(true, 2),
        scenario(
            REDUCE_LR_ON_PLATEAU,
            json!({"threshold_mode": "abs", "threshold": 0.001, "factor": 0.5, "patience": 2, "cooldown": 2,
                   "min_lr": [1e-3, 1e-5], "eps": 1e-12}),
        )
        .metrics(false, 3),
        scenario(
            REDUCE_LR_ON_PLATEAU,
            json!({"mode": "max", "patience": 5, "factor": 0.7}),
        )
        .metrics(true, 4),
        scenario(CYCLIC_LR, json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 50})),
        scenario(
            CYCLIC_LR,
            json!({"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 30, "step_size_down": 70, "mode": "triangular2"}),
        ),
        scenario(
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.2, "step_size_up": 40, "mode": "exp_range", "gamma": 0.997,
                   "base_momentum": 0.85, "max_momentum": 0.95}),
        ),
        // PyTorch's built-in modes override scale_mode (triangular2: "cycle").
        scenario(
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 25, "mode": "triangular2",
                   "scale_mode": "iterations"}),
        ),
        scenario(
            CYCLIC_LR,
            json!({"base_lr": [0.01, 0], "max_lr": [0.1, 1], "step_size_up": 33, "step_size_down": 17.5,
                   "base_momentum": [0.8, 0.85], "max_momentum": [0.9, 1]}),
        ),
        scenario(
            CYCLIC_LR,
            json!({"base_lr": 0.001, "max_lr": 0.006, "step_size_up": 100, "mode": "exp_range", "gamma": 0.999}),
        )
        .adam(),
        scenario(
            CYCLIC_LR,
            json!({"base_lr": 0.001, "max_lr": 0.01, "step_size_up": 60, "step_size_down": 20, "mode": "triangular2"}),
        )
        .adam(),
        scenario(
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 20, "cycle_momentum": false}),
        ),
        scenario(
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 10, "last_epoch": 25}),
        )
        .resuming([0.2, 0.1]),
    ]
    .into_iter()
    .chain(composite_scenarios())
    .collect()
}

/// SequentialLR and ChainedScheduler, their children given as spec tags.
fn composite_scenarios() -> Vec<Scenario> {
    use pytorch_saver::sched::*;
    let warmup = || {
        json!({"schedulers": [child(LINEAR_LR, json!({"start_factor": 0.1, "total_iters": 5})),
                              child(COSINE_ANNEALING_LR, json!({"T_max": 995}))],
               "milestones": [5]})
    };
    vec![
        // The standard warmup.
        scenario(SEQUENTIAL_LR, warmup()),
        scenario(SEQUENTIAL_LR, warmup()).adam(),
        scenario(
            SEQUENTIAL_LR,
            json!({"schedulers": [child(CONSTANT_LR, json!({"factor": 0.5, "total_iters": 10})),
                                  child(EXPONENTIAL_LR, json!({"gamma": 0.99})),
                                  child(STEP_LR, json!({"step_size": 50, "gamma": 0.5}))],
                   "milestones": [100, 400]}),
        ),
        scenario(
            SEQUENTIAL_LR,
            json!({"schedulers": [child(CONSTANT_LR, json!({"factor": 0.25, "total_iters": 30})),
                                  child(EXPONENTIAL_LR, json!({"gamma": 0.995})),
                                  child(MULTI_STEP_LR, json!({"milestones": [100, 300, 300], "gamma": 0.5}))],
                   "milestones": [50, 300]}),
        )
        .adam(),
        scenario(
            SEQUENTIAL_LR,
            json!({"schedulers": [child(LINEAR_LR, json!({"start_factor": 0.5, "total_iters": 20})),
                                  child(CYCLIC_LR, json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 50}))],
                   "milestones": [100]}),
        ),
        scenario(
            SEQUENTIAL_LR,
            json!({"schedulers": [child(LINEAR_LR, json!({"start_factor": 0.2, "total_iters": 10})),
                                  child(ONE_CYCLE_LR, json!({"max_lr": 0.3, "total_steps": 1000}))],
                   "milestones": [10]}),
        )
        .adam(),
        scenario(
            SEQUENTIAL_LR,
            json!({"schedulers": [child(LINEAR_LR, json!({"start_factor": 0.1, "total_iters": 30})),
                                  child(POLYNOMIAL_LR, json!({"total_iters": 400, "power": 2})),
                                  child(COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 50, "T_mult": 2}))],
                   "milestones": [30, 500]}),
        ),
        // LinearLR, ConstantLR and ExponentialLR switched to at a
        // milestone (their closed forms).
        scenario(
            SEQUENTIAL_LR,
            json!({"schedulers": [child(STEP_LR, json!({"step_size": 30, "gamma": 0.8})),
                                  child(LINEAR_LR, json!({"start_factor": 0.5, "end_factor": 0.9, "total_iters": 100})),
                                  child(CONSTANT_LR, json!({"factor": 0.3, "total_iters": 200})),
                                  child(EXPONENTIAL_LR, json!({"gamma": 0.995}))],
                   "milestones": [100, 300, 600]}),
        )
        .adam(),
        // SequentialLR's own last_epoch.
        scenario(SEQUENTIAL_LR, {
            let mut kw = warmup();
            kw["last_epoch"] = json!(10);
            kw
        }),
        scenario(
            CHAINED_SCHEDULER,
            json!({"schedulers": [child(CONSTANT_LR, json!({"factor": 0.5, "total_iters": 20})),
                                  child(EXPONENTIAL_LR, json!({"gamma": 0.995}))]}),
        ),
        scenario(
            CHAINED_SCHEDULER,
            json!({"schedulers": [child(MULTI_STEP_LR, json!({"milestones": [200, 600], "gamma": 0.5})),
                                  child(LINEAR_LR, json!({"start_factor": 0.2, "total_iters": 50}))]}),
        )
        .adam(),
        // Composites within composites, as PyTorch allows them.
        scenario(
            SEQUENTIAL_LR,
            json!({"schedulers": [child(CHAINED_SCHEDULER, json!({"schedulers": [
                                      child(LINEAR_LR, json!({"start_factor": 0.1, "total_iters": 20})),
                                      child(EXPONENTIAL_LR, json!({"gamma": 0.999}))]})),
                                  child(COSINE_ANNEALING_LR, json!({"T_max": 900, "eta_min": 0.001}))],
                   "milestones": [100]}),
        ),
        scenario(
            CHAINED_SCHEDULER,
            json!({"schedulers": [child(SEQUENTIAL_LR, warmup()),
                                  child(MULTI_STEP_LR, json!({"milestones": [300, 700]}))]}),
        )
        .adam(),
    ]
}

/// Runs lr_sequences.py on `scenarios` (one torch import for all).
fn run_python(scenarios: Vec<Value>) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/lr_sequences.py");
    let mut child = Command::new(common::python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let input = serde_json::to_vec(&json!({ "scenarios": scenarios })).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lr_sequences.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("lr_sequences.py prints JSON");
    v["results"].as_array().unwrap().clone()
}

fn lrs(groups: &[ParamGroup]) -> Vec<f64> {
    groups.iter().map(|g| g.lr().unwrap()).collect()
}

/// What lr_sequences.py records as a group's momentum: `betas[0]` or `momentum`.
fn momenta(groups: &[ParamGroup]) -> Vec<f64> {
    groups
        .iter()
        .map(|g| match g.get("betas") {
            Some(_) => g.f64_pair("betas").unwrap().0,
            None => g.f64("momentum").unwrap(),
        })
        .collect()
}

fn options(groups: &[ParamGroup]) -> Value {
    Value::Array(groups.iter().map(|g| Value::Object(g.options.clone())).collect())
}

fn floats(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

fn rel_diff(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

/// Worst relative difference per scheduler class, and the mismatches.
#[derive(Default)]
struct Report {
    worst: BTreeMap<&'static str, (f64, String)>,
    /// Values compared, and how many of them were not bit-identical.
    compared: usize,
    inexact: usize,
    failures: Vec<String>,
}

impl Report {
    /// Compares step-by-step values (`what`: lr or momentum), where
    /// `first_step` is the step number of `ours[0]`.
    fn sequences(&mut self, sc: &Scenario, what: &str, ours: &[Vec<f64>], theirs: &[Vec<f64>], first_step: usize) {
        if ours.len() != theirs.len() {
            self.failures.push(format!(
                "{}: {} {what} rows vs PyTorch's {}",
                sc.name,
                ours.len(),
                theirs.len()
            ));
            return;
        }
        let short = sc.class.rsplit('.').next().unwrap();
        let entry = self.worst.entry(short).or_insert((0.0, String::new()));
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            for (g, (&x, &y)) in a.iter().zip(b).enumerate() {
                let d = rel_diff(x, y);
                self.compared += 1;
                self.inexact += usize::from(x.to_bits() != y.to_bits());
                if d > entry.0 {
                    *entry = (
                        d,
                        format!("{} {what} step {} group {g}: {x:e} vs {y:e}", sc.name, first_step + i),
                    );
                }
                if d.is_nan() || d > TOLERANCE {
                    self.failures.push(format!(
                        "{} {what} step {} group {g}: rust {x:e}, pytorch {y:e} (rel {d:e})",
                        sc.name,
                        first_step + i
                    ));
                }
            }
        }
    }

    /// Compares JSON exactly: same keys in the same order, same values of
    /// the same JSON type (Python int vs float included).
    fn json(&mut self, sc: &Scenario, what: &str, ours: &Value, theirs: &Value) {
        if ours != theirs {
            self.failures
                .push(format!("{} {what}:\n  rust    {ours}\n  pytorch {theirs}", sc.name));
        } else if key_orders(ours) != key_orders(theirs) {
            self.failures.push(format!(
                "{} {what}: key order differs:\n  rust    {ours}\n  pytorch {theirs}",
                sc.name
            ));
        }
    }

    fn finish(self, title: &str) {
        println!("{title}: worst relative difference per scheduler (tolerance {TOLERANCE:e}):");
        let mut overall: f64 = 0.0;
        for (class, (d, at)) in &self.worst {
            println!("  {class:<28} {d:e}  {at}");
            overall = overall.max(*d);
        }
        println!(
            "  overall worst: {overall:e}; {} of {} values not bit-identical",
            self.inexact, self.compared
        );
        let shown: Vec<_> = self.failures.iter().take(30).collect();
        assert!(
            self.failures.is_empty(),
            "{} mismatches with PyTorch, first ones:\n{}",
            self.failures.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
}

/// Every object's keys in order, depth first.
fn key_orders(v: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                out.push(m.keys().cloned().collect());
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Rust's run of a scenario: lrs and momenta after every step, and the
/// state_dict and groups after the steps in `snapshots`.
struct RustRun {
    lrs: Vec<Vec<f64>>,
    momenta: Vec<Vec<f64>>,
    snapshots: BTreeMap<usize, (Value, Value)>,
}

fn run_rust(sc: &Scenario, steps: usize, snapshots: &[usize]) -> RustRun {
    let mut groups = sc.groups();
    let mut s = sc.build(&mut groups);
    let mut run = RustRun {
        lrs: Vec::new(),
        momenta: Vec::new(),
        snapshots: BTreeMap::new(),
    };
    let snapshot = |k: usize, s: &Scheduler, groups: &[ParamGroup], run: &mut RustRun| {
        if snapshots.contains(&k) {
            run.snapshots
                .insert(k, (Value::Object(s.state_dict()), options(groups)));
        }
    };
    snapshot(0, &s, &groups, &mut run);
    for i in 0..steps {
        sc.step(&mut s, &mut groups, i);
        run.lrs.push(lrs(&groups));
        run.momenta.push(momenta(&groups));
        assert_eq!(s.last_lr(), lrs(&groups).as_slice(), "{}: last_lr", sc.name);
        snapshot(i + 1, &s, &groups, &mut run);
    }
    run
}

#[test]
fn lr_sequences_and_state_dicts_match_pytorch() {
    let scenarios = scenarios();
    let snapshots = [0, 1, 500, STEPS];
    let specs = scenarios.iter().map(|sc| sc.spec(STEPS, &snapshots, None)).collect();
    let results = run_python(specs);
    let mut report = Report::default();
    for (sc, py) in scenarios.iter().zip(&results) {
        let ours = run_rust(sc, STEPS, &snapshots);
        report.sequences(sc, "lr", &ours.lrs, &floats(&py["lrs"]), 1);
        report.sequences(sc, "momentum", &ours.momenta, &floats(&py["momenta"]), 1);
        for k in snapshots {
            let theirs = &py["snapshots"][k.to_string()];
            let (state, groups) = &ours.snapshots[&k];
            report.json(sc, &format!("state_dict after {k} steps"), state, &theirs["state"]);
            report.json(sc, &format!("param groups after {k} steps"), groups, &theirs["groups"]);
        }
    }
    report.finish("1000 steps against PyTorch");
}

#[test]
fn state_dicts_load_across_languages() {
    const AT: usize = 300;
    const MORE: usize = 200;
    let scenarios = scenarios();
    let ours: Vec<RustRun> = scenarios.iter().map(|sc| run_rust(sc, AT + MORE, &[AT])).collect();
    let specs = scenarios
        .iter()
        .zip(&ours)
        .map(|(sc, run)| {
            let (state, groups) = &run.snapshots[&AT];
            let metrics = sc.metrics.as_ref().map(|m| m[AT..AT + MORE].to_vec());
            let resume = json!({"groups": groups, "state": state, "steps": MORE, "metrics": metrics});
            sc.spec(AT + MORE, &[AT], Some(resume))
        })
        .collect();
    let results = run_python(specs);
    let mut report = Report::default();
    for ((sc, run), py) in scenarios.iter().zip(&ours).zip(&results) {
        // Rust's state in PyTorch: its next steps are Rust's.
        let resumed = &py["resumed"];
        report.sequences(
            sc,
            "lr (PyTorch from Rust state)",
            &floats(&resumed["lrs"]),
            &run.lrs[AT..],
            AT + 1,
        );
        report.sequences(
            sc,
            "momentum (PyTorch from Rust state)",
            &floats(&resumed["momenta"]),
            &run.momenta[AT..],
            AT + 1,
        );

        // PyTorch's state in Rust, resumed as a user would: build, load the
        // optimizer's groups, load the scheduler's state, step on.
        let snapshot = &py["snapshots"][AT.to_string()];
        let mut groups = sc.groups();
        let mut s = sc.build(&mut groups);
        for (g, saved) in groups.iter_mut().zip(snapshot["groups"].as_array().unwrap()) {
            g.options = saved.as_object().unwrap().clone();
        }
        let state = snapshot["state"].as_object().unwrap();
        if let Err(e) = s.load_state_dict(state, &groups) {
            report
                .failures
                .push(format!("{}: PyTorch's state does not load: {e}", sc.name));
            continue;
        }
        report.json(
            sc,
            "state_dict after loading PyTorch's",
            &Value::Object(s.state_dict()),
            &snapshot["state"],
        );
        let (mut lrs_after, mut momenta_after) = (Vec::new(), Vec::new());
        for i in AT..AT + MORE {
            sc.step(&mut s, &mut groups, i);
            lrs_after.push(lrs(&groups));
            momenta_after.push(momenta(&groups));
        }
        let py_lrs = floats(&py["lrs"]);
        let py_momenta = floats(&py["momenta"]);
        report.sequences(sc, "lr (Rust from PyTorch state)", &lrs_after, &py_lrs[AT..], AT + 1);
        report.sequences(
            sc,
            "momentum (Rust from PyTorch state)",
            &momenta_after,
            &py_momenta[AT..],
            AT + 1,
        );
    }
    report.finish("states loaded across languages, 200 more steps");
}

// ---------------------------------------------------------------- errors

fn sgd_groups() -> Vec<ParamGroup> {
    scenario(sched::STEP_LR, json!({})).groups()
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Builds `class` with `kw` over `groups`, expecting an error; the groups
/// must be unchanged.
fn build_err(class: &str, kw: Value, groups: &[ParamGroup]) -> Error {
    let mut after = groups.to_vec();
    let err = Scheduler::new(class, &kwargs(kw.clone()), &mut after)
        .map(|_| ())
        .expect_err(&format!("{class} {kw} should fail"));
    assert_eq!(after, groups, "{class} {kw}: groups changed on error");
    err
}

/// An InvalidKwargs error whose message names `key`.
fn assert_names_kwarg(err: Error, class: &str, key: &str) {
    match &err {
        Error::InvalidKwargs { class: c, reason } => {
            assert_eq!(c, class);
            assert!(reason.contains(key), "{class}: {reason:?} does not name {key:?}");
        }
        e => panic!("{class}: expected InvalidKwargs naming {key:?}, got {e:?}"),
    }
}

#[test]
fn names_lists_all_thirteen_schedulers() {
    let names = sched::names();
    assert_eq!(names.len(), 13);
    assert!(names.contains(&sched::SEQUENTIAL_LR) && names.contains(&sched::CHAINED_SCHEDULER));
    assert!(!names.contains(&sched::LAMBDA_LR) && !names.contains(&sched::MULTIPLICATIVE_LR));
    for n in names {
        assert!(n.starts_with("torch.optim.lr_scheduler."), "{n}");
    }
    let mut groups = sgd_groups();
    let s = Scheduler::new(sched::REDUCE_LR_ON_PLATEAU, &Map::new(), &mut groups).unwrap();
    assert!(s.needs_metric());
    assert_eq!(s.class(), sched::REDUCE_LR_ON_PLATEAU);
    assert_eq!(groups, sgd_groups(), "ReduceLROnPlateau leaves the groups alone");
    let s = Scheduler::new(sched::STEP_LR, &kwargs(json!({"step_size": 3})), &mut groups).unwrap();
    assert!(!s.needs_metric());
    assert_eq!(s.kwargs(), &kwargs(json!({"step_size": 3})));
}

#[test]
fn unknown_scheduler_is_refused_listing_the_known_ones() {
    const NO_SUCH: &str = "torch.optim.lr_scheduler.NoSuchLR";
    let as_child = json!({"schedulers": [child(sched::LINEAR_LR, json!({})), child(NO_SUCH, json!({}))],
                          "milestones": [5]});
    for err in [
        build_err(NO_SUCH, json!({}), &sgd_groups()),
        // A composite's child: the same error as at top level.
        build_err(sched::SEQUENTIAL_LR, as_child, &sgd_groups()),
    ] {
        match err {
            Error::UnknownName { kind, name, known } => {
                assert_eq!(kind, "scheduler");
                assert_eq!(name, NO_SUCH);
                for n in sched::names() {
                    assert!(known.contains(n), "{known} lacks {n}");
                }
            }
            e => panic!("expected UnknownName, got {e:?}"),
        }
    }
}

/// LambdaLR and MultiplicativeLR take a Python callable (`lr_lambda`),
/// which no file carries: building one, at top level or as a composite's
/// child, is UnsupportedClass naming the class and saying why.
#[test]
fn lambda_schedulers_are_unsupported_naming_the_class() {
    use pytorch_saver::format::typed;
    for class in [sched::LAMBDA_LR, sched::MULTIPLICATIVE_LR] {
        let kw = json!({"lr_lambda": typed::callable("warmup")});
        let chained =
            json!({"schedulers": [child(sched::EXPONENTIAL_LR, json!({"gamma": 0.9})), child(class, kw.clone())]});
        for err in [
            build_err(class, kw.clone(), &sgd_groups()),
            build_err(sched::CHAINED_SCHEDULER, chained, &sgd_groups()),
        ] {
            assert_eq!(err.kind(), "UnsupportedClass");
            match &err {
                Error::UnsupportedClass { kind, name, reason } => {
                    assert_eq!(*kind, "scheduler");
                    assert_eq!(name, class);
                    assert!(reason.contains("Python") && reason.contains("lambda"), "{reason}");
                }
                e => panic!("{class}: expected UnsupportedClass, got {e:?}"),
            }
            assert!(err.to_string().contains(class), "{err}");
        }
    }
}

/// A file whose metadata names LambdaLR (its kwargs with a `callable`
/// tag, its state PyTorch's LambdaLR state_dict), as the Python package
/// writes one: the container refuses it with UnsupportedClass naming the
/// class, and is left as it was. (The container needs libtorch.)
#[cfg(feature = "torch")]
#[test]
fn a_checkpoint_naming_lambda_lr_is_refused_and_the_container_is_untouched() {
    use pytorch_saver::format::{
        typed, write_checkpoint, BytesTensor, Checkpoint, SchedulerMetadata, TensorMember, TensorSource, WriteOptions,
    };
    use pytorch_saver::{models, optim, ContainerSpec, ModelContainer, UserMetadata};

    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(7);
    let mut c = ModelContainer::new();
    c.initialize(
        ContainerSpec::model(
            models::MLP,
            kwargs(json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})),
        )
        .optimizer(optim::SGD, kwargs(json!({"lr": 0.1, "momentum": 0.9})))
        .scheduler(sched::STEP_LR, kwargs(json!({"step_size": 3}))),
    )
    .unwrap();
    let saved = c.save(dir.path(), "step", &UserMetadata::new()).unwrap();

    // The same file with LambdaLR in the scheduler's place, written with
    // the format layer.
    let ckpt = Checkpoint::open(&saved).unwrap();
    let mut meta = ckpt.metadata().clone();
    meta.format_version = 2;
    let lambda_state = json!({"base_lrs": [0.1], "last_epoch": 0, "_step_count": 1, "_is_initial": false,
                              "_get_lr_called_within_step": false, "_last_lr": [0.1], "lr_lambdas": [null]});
    meta.scheduler = Some(SchedulerMetadata {
        class: sched::LAMBDA_LR.into(),
        kwargs: kwargs(json!({"lr_lambda": typed::callable("warmup")})),
        state: kwargs(lambda_state),
    });
    let tensors: Vec<Vec<BytesTensor>> = meta
        .members()
        .into_iter()
        .skip(1)
        .map(|m| {
            ckpt.tensors(m)
                .iter()
                .map(|e| BytesTensor {
                    name: e.name.clone(),
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    data: ckpt.tensor_bytes(e).into(),
                })
                .collect()
        })
        .collect();
    let members: Vec<TensorMember> = meta
        .members()
        .into_iter()
        .skip(1)
        .zip(&tensors)
        .map(|(name, ts)| TensorMember {
            name,
            tensors: ts.iter().map(|t| t as &dyn TensorSource).collect(),
        })
        .collect();
    let lambda_file = write_checkpoint(dir.path(), "lambda", &meta, &members, &WriteOptions::default()).unwrap();

    let before_state = c.scheduler().unwrap().state_dict();
    let before_params: Vec<(String, tch::Tensor)> = c
        .model()
        .unwrap()
        .parameters()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let err = c.load(&lambda_file).unwrap_err();
    match &err {
        Error::UnsupportedClass { kind, name, reason } => {
            assert_eq!(*kind, "scheduler");
            assert_eq!(name, sched::LAMBDA_LR);
            assert!(reason.contains("Python"), "{reason}");
        }
        e => panic!("expected UnsupportedClass, got {e:?}"),
    }
    assert_eq!(c.scheduler().unwrap().class(), sched::STEP_LR, "the container changed");
    assert_eq!(c.scheduler().unwrap().state_dict(), before_state);
    let after = c.model().unwrap().parameters();
    assert_eq!(after.len(), before_params.len());
    for ((n, a), (m, b)) in after.iter().zip(&before_params) {
        assert_eq!(n, m);
        assert!(a.equal(b), "{n} changed");
    }
    // A fresh container refuses it the same way, and the original loads.
    let mut fresh = ModelContainer::new();
    assert_eq!(fresh.load(&lambda_file).unwrap_err().kind(), "UnsupportedClass");
    assert!(fresh.model().is_err(), "a refused load left a model behind");
    fresh.load(&saved).unwrap();
}

#[test]
fn bad_kwargs_are_refused_naming_the_kwarg() {
    use pytorch_saver::sched::*;
    let sgd = sgd_groups();
    let cases: Vec<(&str, Value, &str)> = vec![
        (STEP_LR, json!({"step_size": 3, "gama": 0.5}), "gama"),
        (STEP_LR, json!({"gamma": 0.5}), "step_size"),
        (STEP_LR, json!({"step_size": "3"}), "step_size"),
        (STEP_LR, json!({"step_size": 3, "last_epoch": 1.5}), "last_epoch"),
        (MULTI_STEP_LR, json!({"milestones": [1, 2.5]}), "milestones"),
        (EXPONENTIAL_LR, json!({}), "gamma"),
        (CONSTANT_LR, json!({"factor": 1.5}), "factor"),
        (LINEAR_LR, json!({"start_factor": 0.0}), "start_factor"),
        (LINEAR_LR, json!({"start_factor": 1.5}), "start_factor"),
        (LINEAR_LR, json!({"end_factor": -0.5}), "end_factor"),
        (COSINE_ANNEALING_LR, json!({"eta_min": 0.1}), "T_max"),
        (COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 0}), "T_0"),
        (COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 10.0}), "T_0"),
        (
            COSINE_ANNEALING_WARM_RESTARTS,
            json!({"T_0": 10, "T_mult": 0}),
            "T_mult",
        ),
        (ONE_CYCLE_LR, json!({"max_lr": 0.1}), "total_steps"),
        (ONE_CYCLE_LR, json!({"max_lr": 0.1, "epochs": 10}), "steps_per_epoch"),
        (ONE_CYCLE_LR, json!({"total_steps": 100}), "max_lr"),
        (ONE_CYCLE_LR, json!({"max_lr": 0.1, "total_steps": 0}), "total_steps"),
        (
            ONE_CYCLE_LR,
            json!({"max_lr": 0.1, "epochs": 0, "steps_per_epoch": 10}),
            "epochs",
        ),
        (
            ONE_CYCLE_LR,
            json!({"max_lr": [0.1, 0.2, 0.3], "total_steps": 100}),
            "max_lr",
        ),
        (
            ONE_CYCLE_LR,
            json!({"max_lr": 0.1, "total_steps": 100, "pct_start": 1}),
            "pct_start",
        ),
        (
            ONE_CYCLE_LR,
            json!({"max_lr": 0.1, "total_steps": 100, "pct_start": 1.5}),
            "pct_start",
        ),
        (
            ONE_CYCLE_LR,
            json!({"max_lr": 0.1, "total_steps": 100, "anneal_strategy": "exp"}),
            "anneal_strategy",
        ),
        (
            ONE_CYCLE_LR,
            json!({"max_lr": 0.1, "total_steps": 100, "base_momentum": [0.8]}),
            "base_momentum",
        ),
        // pct_start * total_steps == 1: PyTorch's initial step divides by zero.
        (
            ONE_CYCLE_LR,
            json!({"max_lr": 0.1, "total_steps": 10, "pct_start": 0.1}),
            "ZeroDivisionError",
        ),
        (REDUCE_LR_ON_PLATEAU, json!({"factor": 1.0}), "factor"),
        (REDUCE_LR_ON_PLATEAU, json!({"mode": "maximum"}), "mode"),
        (
            REDUCE_LR_ON_PLATEAU,
            json!({"threshold_mode": "relative"}),
            "threshold_mode",
        ),
        (REDUCE_LR_ON_PLATEAU, json!({"min_lr": [0.1]}), "min_lr"),
        (REDUCE_LR_ON_PLATEAU, json!({"last_epoch": 3}), "last_epoch"),
        (CYCLIC_LR, json!({"max_lr": 0.1}), "base_lr"),
        (CYCLIC_LR, json!({"base_lr": 0.01}), "max_lr"),
        (CYCLIC_LR, json!({"base_lr": [0.01], "max_lr": 0.1}), "base_lr"),
        (CYCLIC_LR, json!({"base_lr": 0.01, "max_lr": [0.1, 0.2, 0.3]}), "max_lr"),
        (
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "mode": "exp"}),
            "mode",
        ),
        (
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "scale_mode": "epoch"}),
            "scale_mode",
        ),
        (
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": "10"}),
            "step_size_up",
        ),
        (
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0, "step_size_down": 0}),
            "step_size_down",
        ),
        // step_size_up=0: PyTorch's initial step divides 0 by a step_ratio of 0.
        (
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0, "step_size_down": 10}),
            "ZeroDivisionError",
        ),
        (
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "max_momentum": [0.9]}),
            "max_momentum",
        ),
        (
            CYCLIC_LR,
            json!({"base_lr": 0.01, "max_lr": 0.1, "cycle_momentum": 1}),
            "cycle_momentum",
        ),
        (CYCLIC_LR, json!({"base_lr": 0.01, "max_lr": 0.1, "gama": 0.9}), "gama"),
    ];
    for (class, kw, key) in cases {
        assert_names_kwarg(build_err(class, kw, &sgd), class, key);
    }
}

#[test]
fn one_cycle_momentum_needs_momentum_or_betas() {
    let bare: Vec<ParamGroup> = LRS
        .iter()
        .enumerate()
        .map(|(i, &lr)| ParamGroup::new(vec![i], kwargs(json!({"lr": lr, "weight_decay": 0}))))
        .collect();
    let kw = json!({"max_lr": 0.1, "total_steps": 100});
    assert_names_kwarg(
        build_err(sched::ONE_CYCLE_LR, kw, &bare),
        sched::ONE_CYCLE_LR,
        "cycle_momentum",
    );
    // Without cycling, such groups are fine.
    let mut groups = bare.clone();
    let kw = kwargs(json!({"max_lr": 0.1, "total_steps": 100, "cycle_momentum": false}));
    let s = Scheduler::new(sched::ONE_CYCLE_LR, &kw, &mut groups).unwrap();
    assert!(!s.state_dict().contains_key("use_beta1"));
    assert_eq!(groups[0].f64("max_lr").unwrap(), 0.1);
}

#[test]
fn cyclic_refuses_a_custom_scale_fn_which_no_file_can_carry() {
    for f in [json!("lambda x: 0.5 ** x"), json!({"__callable__": "f"})] {
        let kw = json!({"base_lr": 0.01, "max_lr": 0.1, "scale_fn": f});
        let err = build_err(sched::CYCLIC_LR, kw, &sgd_groups());
        assert!(err.to_string().contains("callable"), "{err}");
        assert_names_kwarg(err, sched::CYCLIC_LR, "scale_fn");
    }
    // None is PyTorch's default.
    let mut groups = sgd_groups();
    let kw = kwargs(json!({"base_lr": 0.01, "max_lr": 0.1, "scale_fn": null}));
    let s = Scheduler::new(sched::CYCLIC_LR, &kw, &mut groups).unwrap();
    let state = s.state_dict();
    assert_eq!(state.keys().next_back().map(String::as_str), Some("_scale_fn_custom"));
    assert_eq!(state["_scale_fn_custom"], Value::Null);
}

#[test]
fn cyclic_momentum_needs_momentum_or_betas() {
    let bare: Vec<ParamGroup> = LRS
        .iter()
        .enumerate()
        .map(|(i, &lr)| ParamGroup::new(vec![i], kwargs(json!({"lr": lr, "weight_decay": 0}))))
        .collect();
    let kw = json!({"base_lr": 0.01, "max_lr": 0.1});
    assert_names_kwarg(
        build_err(sched::CYCLIC_LR, kw, &bare),
        sched::CYCLIC_LR,
        "cycle_momentum",
    );
    let mut groups = bare.clone();
    let kw = kwargs(json!({"base_lr": 0.01, "max_lr": 0.1, "cycle_momentum": false}));
    let s = Scheduler::new(sched::CYCLIC_LR, &kw, &mut groups).unwrap();
    let state = s.state_dict();
    for key in ["use_beta1", "base_momentums", "max_momentums"] {
        assert!(!state.contains_key(key), "{key} without cycle_momentum");
    }
    assert_eq!(groups[0].lr().unwrap(), 0.01);
    assert!(groups[0].get("max_momentum").is_none());
}

#[test]
fn cyclic_state_with_a_custom_scale_fn_does_not_load() {
    let (mut s, groups) = stepped(sched::CYCLIC_LR, json!({"base_lr": 0.01, "max_lr": 0.1}));
    let before = s.state_dict();
    let mut bad = before.clone();
    bad.insert("_scale_fn_custom".into(), json!({"factor": 0.5}));
    match s.load_state_dict(&bad, &groups) {
        Err(Error::InvalidState { what, reason }) => {
            assert!(what.contains("_scale_fn_custom"), "{what}");
            assert!(reason.contains("callable"), "{reason}");
        }
        r => panic!("expected InvalidState, got {r:?}"),
    }
    assert_eq!(s.state_dict(), before);
    let mut bad = before.clone();
    bad.insert("mode".into(), json!("exp"));
    assert!(matches!(
        s.load_state_dict(&bad, &groups),
        Err(Error::InvalidState { .. })
    ));
    // scale_mode follows mode on load, as PyTorch's _init_scale_fn does.
    let mut state = before.clone();
    state.insert("scale_mode".into(), json!("iterations"));
    s.load_state_dict(&state, &groups).unwrap();
    assert_eq!(s.state_dict(), before);
}

#[test]
fn resuming_with_last_epoch_needs_initial_lr() {
    use pytorch_saver::sched::*;
    for (class, kw) in [
        (STEP_LR, json!({"step_size": 3, "last_epoch": 4})),
        (COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 3, "last_epoch": 0})),
        (
            ONE_CYCLE_LR,
            json!({"max_lr": 0.1, "total_steps": 100, "last_epoch": 10}),
        ),
        (CYCLIC_LR, json!({"base_lr": 0.01, "max_lr": 0.1, "last_epoch": 10})),
    ] {
        assert_names_kwarg(build_err(class, kw, &sgd_groups()), class, "initial_lr");
    }
}

#[test]
fn groups_without_lr_are_refused_unchanged() {
    let groups = vec![
        ParamGroup::new(vec![0], kwargs(json!({"lr": 0.1, "momentum": 0.9}))),
        ParamGroup::new(vec![1], kwargs(json!({"momentum": 0.9}))),
    ];
    for class in sched::names() {
        let kw = match *class {
            sched::STEP_LR => json!({"step_size": 2}),
            sched::MULTI_STEP_LR => json!({"milestones": [2]}),
            sched::EXPONENTIAL_LR => json!({"gamma": 0.5}),
            sched::COSINE_ANNEALING_LR => json!({"T_max": 2}),
            sched::COSINE_ANNEALING_WARM_RESTARTS => json!({"T_0": 2}),
            sched::ONE_CYCLE_LR => json!({"max_lr": 0.1, "total_steps": 10, "cycle_momentum": false}),
            sched::CYCLIC_LR => json!({"base_lr": 0.01, "max_lr": 0.1}),
            sched::SEQUENTIAL_LR => json!({"schedulers": [child(sched::STEP_LR, json!({"step_size": 2}))],
                                           "milestones": []}),
            sched::CHAINED_SCHEDULER => json!({"schedulers": [child(sched::STEP_LR, json!({"step_size": 2}))]}),
            _ => json!({}),
        };
        match build_err(class, kw, &groups) {
            Error::InvalidState { what, .. } => assert!(what.contains("\"lr\""), "{class}: {what}"),
            e => panic!("{class}: expected InvalidState about lr, got {e:?}"),
        }
    }
}

#[test]
fn step_and_step_with_metric_are_not_interchangeable() {
    let mut groups = sgd_groups();
    let mut plateau = Scheduler::new(sched::REDUCE_LR_ON_PLATEAU, &Map::new(), &mut groups).unwrap();
    let before = plateau.state_dict();
    assert!(matches!(plateau.step(&mut groups), Err(Error::Usage(_))));
    assert_eq!(plateau.state_dict(), before);
    plateau.step_with_metric(&mut groups, 0.5).unwrap();

    let mut step = Scheduler::new(sched::STEP_LR, &kwargs(json!({"step_size": 2})), &mut groups).unwrap();
    let before = step.state_dict();
    assert!(matches!(step.step_with_metric(&mut groups, 0.5), Err(Error::Usage(_))));
    assert_eq!(step.state_dict(), before);
    step.step(&mut groups).unwrap();
}

#[test]
fn one_cycle_past_total_steps_is_an_error_that_changes_nothing() {
    let mut groups = sgd_groups();
    let kw = kwargs(json!({"max_lr": 0.1, "total_steps": 5}));
    let mut s = Scheduler::new(sched::ONE_CYCLE_LR, &kw, &mut groups).unwrap();
    for _ in 0..5 {
        s.step(&mut groups).unwrap();
    }
    let (state, options) = (s.state_dict(), groups.clone());
    match s.step(&mut groups) {
        Err(Error::Usage(m)) => assert!(m.contains("total steps is 5"), "{m}"),
        r => panic!("expected Usage, got {r:?}"),
    }
    assert_eq!(s.state_dict(), state);
    assert_eq!(groups, options);
}

#[test]
fn a_different_group_count_at_step_is_an_error() {
    let mut groups = sgd_groups();
    let mut s = Scheduler::new(sched::EXPONENTIAL_LR, &kwargs(json!({"gamma": 0.5})), &mut groups).unwrap();
    let mut three = sgd_groups();
    three.push(three[0].clone());
    assert!(matches!(s.step(&mut three), Err(Error::Usage(_))));
}

/// A valid state to corrupt: each scheduler after a few steps.
fn stepped(class: &str, kw: Value) -> (Scheduler, Vec<ParamGroup>) {
    let mut groups = if class == sched::ONE_CYCLE_LR {
        scenario(sched::ONE_CYCLE_LR, json!({})).adam().groups()
    } else {
        sgd_groups()
    };
    let mut s = Scheduler::new(class, &kwargs(kw), &mut groups).unwrap();
    for i in 0..3 {
        if s.needs_metric() {
            s.step_with_metric(&mut groups, 1.0 / (i + 1) as f64).unwrap();
        } else {
            s.step(&mut groups).unwrap();
        }
    }
    (s, groups)
}

#[test]
fn load_state_dict_refuses_bad_states_and_changes_nothing() {
    use pytorch_saver::sched::*;
    let all = [
        (STEP_LR, json!({"step_size": 2})),
        (MULTI_STEP_LR, json!({"milestones": [2, 5]})),
        (EXPONENTIAL_LR, json!({"gamma": 0.5})),
        (CONSTANT_LR, json!({})),
        (LINEAR_LR, json!({})),
        (POLYNOMIAL_LR, json!({})),
        (COSINE_ANNEALING_LR, json!({"T_max": 10})),
        (COSINE_ANNEALING_WARM_RESTARTS, json!({"T_0": 2})),
        (ONE_CYCLE_LR, json!({"max_lr": 0.1, "total_steps": 100})),
        (REDUCE_LR_ON_PLATEAU, json!({})),
        (CYCLIC_LR, json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2})),
        (
            CYCLIC_LR,
            json!({"base_lr": [0.01, 0], "max_lr": 1, "mode": "exp_range", "gamma": 0.9}),
        ),
    ];
    for (class, kw) in all {
        let (mut s, groups) = stepped(class, kw);
        let good = s.state_dict();
        let expect_refused = |s: &mut Scheduler, bad: Map<String, Value>, key: &str, case: &str| {
            let before = s.state_dict();
            match s.load_state_dict(&bad, &groups) {
                Err(Error::InvalidState { what, .. }) => {
                    assert!(
                        what.contains(&format!("{key:?}")),
                        "{class} {case}: {what} does not name {key}"
                    )
                }
                r => panic!("{class} {case}: expected InvalidState naming {key}, got {r:?}"),
            }
            assert_eq!(s.state_dict(), before, "{class} {case}: state changed");
        };

        // A state from a fresh scheduler of the same class, so that a
        // successful load would change something.
        let mut fresh_groups = groups.clone();
        let mut other = Scheduler::new(class, s.kwargs(), &mut fresh_groups).unwrap();
        assert_ne!(other.state_dict(), good);

        for key in good.keys() {
            // Older PyTorch versions did not write these two.
            if key != "_is_initial" && key != "_get_lr_called_within_step" {
                let mut bad = good.clone();
                bad.remove(key);
                expect_refused(&mut other, bad, key, "missing key");
            }
            let mut bad = good.clone();
            bad.insert(key.clone(), json!("wrong"));
            expect_refused(&mut other, bad, key, "wrong type");
        }
        for key in ["base_lrs", "_last_lr", "min_lrs"] {
            if let Some(Value::Array(items)) = good.get(key) {
                let mut bad = good.clone();
                bad.insert(key.into(), Value::Array(items[..1].to_vec()));
                expect_refused(&mut other, bad, key, "one value for two groups");
            }
        }
        let mut bad = good.clone();
        bad.insert("T_extra".into(), json!(1));
        expect_refused(&mut other, bad, "T_extra", "unknown key");

        // The good state loads, and reads back as it was.
        other.load_state_dict(&good, &groups).unwrap();
        assert_eq!(other.state_dict(), good, "{class}: state_dict after load_state_dict");
        let mut legacy = good.clone();
        legacy.insert("verbose".into(), json!(false));
        legacy.remove("_is_initial");
        other.load_state_dict(&legacy, &groups).unwrap();
        assert_eq!(
            other.state_dict(),
            good,
            "{class}: a pre-2.13 state (verbose, no _is_initial)"
        );
        s.load_state_dict(&good, &groups).unwrap();
    }
}

#[test]
fn load_state_dict_checks_what_pytorch_checks_on_load() {
    let (mut s, groups) = stepped(sched::REDUCE_LR_ON_PLATEAU, json!({"mode": "max"}));
    let mut bad = s.state_dict();
    bad.insert("threshold_mode".into(), json!("relative"));
    match s.load_state_dict(&bad, &groups) {
        Err(Error::InvalidState { what, .. }) => assert!(what.contains("threshold_mode"), "{what}"),
        r => panic!("expected InvalidState, got {r:?}"),
    }
    // mode_worse is recomputed from mode, as PyTorch's load does.
    let mut state = s.state_dict();
    state.insert("mode_worse".into(), json!(0.0));
    s.load_state_dict(&state, &groups).unwrap();
    assert_eq!(s.state_dict()["mode_worse"], json!({"__float__": "-inf"}));

    let (mut s, groups) = stepped(sched::MULTI_STEP_LR, json!({"milestones": [2, 5]}));
    let mut bad = s.state_dict();
    bad.insert("milestones".into(), json!({"two": 1}));
    assert!(matches!(
        s.load_state_dict(&bad, &groups),
        Err(Error::InvalidState { .. })
    ));

    let (mut s, groups) = stepped(sched::ONE_CYCLE_LR, json!({"max_lr": 0.1, "total_steps": 100}));
    let mut bad = s.state_dict();
    bad.insert("_anneal_func_type".into(), json!("exp"));
    assert!(matches!(
        s.load_state_dict(&bad, &groups),
        Err(Error::InvalidState { .. })
    ));
    let mut bad = s.state_dict();
    bad.insert("_schedule_phases".into(), json!([]));
    assert!(matches!(
        s.load_state_dict(&bad, &groups),
        Err(Error::InvalidState { .. })
    ));
}

// ------------------------------------------------------------ composites

/// PyTorch's checks of SequentialLR and ChainedScheduler, each naming the
/// kwarg; the groups unchanged.
#[test]
fn composite_kwargs_are_checked_naming_the_kwarg() {
    use pytorch_saver::sched::*;
    let linear = || child(LINEAR_LR, json!({}));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            SEQUENTIAL_LR,
            json!({"schedulers": [], "milestones": []}),
            "at least one scheduler",
        ),
        (CHAINED_SCHEDULER, json!({"schedulers": []}), "at least one scheduler"),
        (SEQUENTIAL_LR, json!({"milestones": []}), "schedulers"),
        (SEQUENTIAL_LR, json!({"schedulers": [linear()]}), "milestones"),
        (
            SEQUENTIAL_LR,
            json!({"schedulers": [linear(), linear()], "milestones": []}),
            "milestones",
        ),
        (
            SEQUENTIAL_LR,
            json!({"schedulers": [linear()], "milestones": [3]}),
            "milestones",
        ),
        (
            SEQUENTIAL_LR,
            json!({"schedulers": [linear()], "milestones": [], "last_epoch": 1.5}),
            "last_epoch",
        ),
        (
            SEQUENTIAL_LR,
            json!({"schedulers": [{"class": LINEAR_LR, "kwargs": {}}], "milestones": []}),
            "schedulers",
        ),
        (
            SEQUENTIAL_LR,
            json!({"schedulers": linear(), "milestones": []}),
            "schedulers",
        ),
        (
            SEQUENTIAL_LR,
            json!({"schedulers": [linear(), child(REDUCE_LR_ON_PLATEAU, json!({}))], "milestones": [3]}),
            "ReduceLROnPlateau",
        ),
        (
            CHAINED_SCHEDULER,
            json!({"schedulers": [child(REDUCE_LR_ON_PLATEAU, json!({}))]}),
            "ReduceLROnPlateau",
        ),
        (
            CHAINED_SCHEDULER,
            json!({"schedulers": [linear()], "optimizer": null}),
            "optimizer",
        ),
        (
            CHAINED_SCHEDULER,
            json!({"schedulers": [linear()], "milestones": []}),
            "milestones",
        ),
        // A child's own kwargs: named with the child's index and class.
        (
            SEQUENTIAL_LR,
            json!({"schedulers": [linear(), child(STEP_LR, json!({"gamma": 0.5}))], "milestones": [3]}),
            "schedulers[1] (torch.optim.lr_scheduler.StepLR): missing required kwarg \"step_size\"",
        ),
    ];
    for (class, kw, key) in cases {
        assert_names_kwarg(build_err(class, kw, &sgd_groups()), class, key);
    }
}

/// A composite's step is all or nothing: where PyTorch raises (a
/// composite child reached at a SequentialLR milestone has no get_lr(),
/// PyTorch's NotImplementedError), the scheduler and groups are unchanged.
#[test]
fn a_composite_child_at_a_milestone_is_an_error_that_changes_nothing() {
    use pytorch_saver::sched::*;
    let kw = json!({"schedulers": [child(LINEAR_LR, json!({})),
                                   child(CHAINED_SCHEDULER, json!({"schedulers": [child(EXPONENTIAL_LR, json!({"gamma": 0.9}))]}))],
                    "milestones": [3]});
    let mut groups = sgd_groups();
    let mut s = Scheduler::new(SEQUENTIAL_LR, &kwargs(kw), &mut groups).unwrap();
    assert!(!s.needs_metric());
    s.step(&mut groups).unwrap();
    s.step(&mut groups).unwrap();
    let (state, before) = (s.state_dict(), groups.clone());
    match s.step(&mut groups) {
        Err(Error::Usage(m)) => assert!(m.contains("NotImplementedError"), "{m}"),
        r => panic!("expected a Usage error, got {r:?}"),
    }
    assert_eq!(s.state_dict(), state);
    assert_eq!(groups, before);
    assert!(s.step_with_metric(&mut groups, 1.0).is_err());
}

/// A composite's state: each child's entry of `_schedulers` is checked as
/// that child checks its own state; a wrong count, a bad milestone list or
/// a bad child entry is InvalidState naming the key, and nothing changes.
#[test]
fn composite_load_state_dict_refuses_bad_states_and_changes_nothing() {
    use pytorch_saver::sched::*;
    let kw = json!({"schedulers": [child(LINEAR_LR, json!({"start_factor": 0.1, "total_iters": 5})),
                                   child(COSINE_ANNEALING_LR, json!({"T_max": 95}))],
                    "milestones": [5]});
    let (mut s, groups) = stepped(SEQUENTIAL_LR, kw.clone());
    let good = s.state_dict();
    let edit = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut m = good.clone();
        f(&mut m);
        m
    };
    let cases: Vec<(Map<String, Value>, &str)> = vec![
        (edit(&|m| drop(m.remove("_schedulers"))), "_schedulers"),
        (
            edit(&|m| m["_schedulers"].as_array_mut().unwrap().truncate(1)),
            "_schedulers",
        ),
        (edit(&|m| m["_schedulers"][1] = json!([])), "_schedulers"),
        (
            edit(&|m| drop(m["_schedulers"][1].as_object_mut().unwrap().remove("T_max"))),
            "T_max",
        ),
        (edit(&|m| m["_schedulers"][0]["base_lrs"] = json!([0.1])), "base_lrs"),
        (edit(&|m| m["_milestones"] = json!([5, 10])), "_milestones"),
        (edit(&|m| m["_milestones"] = json!(["5"])), "_milestones"),
        (edit(&|m| m["last_epoch"] = json!(1.5)), "last_epoch"),
        (edit(&|m| drop(m.insert("extra".into(), json!(1)))), "extra"),
    ];
    for (state, key) in cases {
        match s.load_state_dict(&state, &groups) {
            Err(Error::InvalidState { what, reason }) => {
                assert!(what.contains(key) || reason.contains(key), "{key}: {what}: {reason}")
            }
            r => panic!("{key}: expected InvalidState, got {r:?}"),
        }
        assert_eq!(s.state_dict(), good, "{key}: the scheduler changed");
    }
    // A good state of another point in the schedule loads whole.
    let (mut other, _) = stepped(SEQUENTIAL_LR, kw);
    other.step(&mut groups.clone()).unwrap();
    s.load_state_dict(&other.state_dict(), &groups).unwrap();
    assert_eq!(s.state_dict(), other.state_dict());
}
