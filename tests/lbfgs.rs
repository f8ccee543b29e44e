//! LBFGS through the container: its step takes a closure; its state
//! (global, under the first parameter, with numbers and stacked lists:
//! FORMAT.md 5) saves and loads so that a run resumed in a fresh process
//! equals an uninterrupted one bit for bit, from Rust and from PyTorch; a
//! state that does not fit is refused naming the key.

mod common;

use std::collections::BTreeMap;

use pytorch_saver::optim::{Optimizer, ADAM, LBFGS};
use pytorch_saver::{models, ContainerSpec, Error, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

fn optim_kwargs() -> Value {
    json!({"line_search_fn": "strong_wolfe", "history_size": 4, "max_iter": 6})
}

fn fresh() -> ModelContainer {
    tch::manual_seed(11);
    let mut c = ModelContainer::new();
    c.initialize(
        ContainerSpec::model(
            models::MLP,
            kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3, "n_layers": 2})),
        )
        .optimizer(LBFGS, kw(optim_kwargs())),
    )
    .unwrap();
    c
}

/// Steps `start..start + steps` with the closure tests/python/lbfgs_resume.py
/// runs: gradients zeroed in place, MSE of batch `step % 8`, backward.
/// Returns each step's first loss.
fn train(c: &mut ModelContainer, (x, y): &(Tensor, Tensor), start: usize, steps: usize) -> Vec<f64> {
    let mut losses = Vec::new();
    for step in start..start + steps {
        let b = (step % 8) as i64;
        let (x, y) = (x.narrow(0, b * 8, 8), y.narrow(0, b * 8, 8));
        let parts = c.parts_mut().unwrap();
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
        losses.push(parts.optimizer.unwrap().step_with_closure(&mut closure).unwrap());
    }
    losses
}

/// Everything a resume must reproduce: parameters, the optimizer's
/// tensors, its JSON values and param_groups.
fn snapshot(c: &ModelContainer) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>, Value) {
    let sd = c.optimizer().unwrap().state_dict().unwrap();
    let tensors = sd
        .state
        .iter()
        .flat_map(|(i, s)| s.iter().map(move |(k, t)| (format!("{i}.{k}"), t.shallow_clone())))
        .collect();
    let groups: Vec<Value> = sd.param_groups.iter().map(|g| g.to_json()).collect();
    (
        c.model().unwrap().state_dict(),
        tensors,
        json!({"values": sd.values, "groups": groups}),
    )
}

fn assert_bit_identical(a: &ModelContainer, b: &ModelContainer, label: &str) {
    let (pa, ta, ja) = snapshot(a);
    let (pb, tb, jb) = snapshot(b);
    assert_eq!(ja, jb, "{label}: values and param_groups");
    assert_eq!(pa.keys().collect::<Vec<_>>(), pb.keys().collect::<Vec<_>>(), "{label}");
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "{label}");
    for (n, t) in pa.iter().chain(&ta) {
        let other = pb.get(n).or(tb.get(n)).unwrap();
        assert!(common::bit_equal(t, other), "{label}: {n} differs");
    }
}

/// What a child process runs: load a checkpoint knowing nothing else,
/// train 5 more steps, save. Without the role variable it does nothing.
#[test]
fn child_process_role() {
    common::resume_child(ModelContainer::new(), 5, |c, start, steps| {
        train(c, &common::batch_data(), start, steps);
    });
}

#[test]
fn lbfgs_trains_with_a_closure_and_resumes_in_a_fresh_process_bit_for_bit() {
    let data = common::batch_data();
    let mut straight = fresh();
    let losses = train(&mut straight, &data, 0, 10);
    // The last step (batch 1) reduced the loss of its batch.
    let (x, y) = (data.0.narrow(0, 8, 8), data.1.narrow(0, 8, 8));
    let after = (straight.model().unwrap().forward_t(&x, true).unwrap() - y)
        .square()
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(
        after < losses[9] * 0.9,
        "loss {} before the step, {after} after",
        losses[9]
    );

    let dir = tempfile::tempdir().unwrap();
    let mut first = fresh();
    train(&mut first, &data, 0, 5);
    let sd = first.optimizer().unwrap().state_dict().unwrap();
    // The layout: numbers in JSON, lists stacked (history_size 4 rolled over).
    let values = &sd.values[&0];
    assert!(values["func_evals"].as_i64().unwrap() >= values["n_iter"].as_i64().unwrap());
    let n = sd.state[&0]["old_dirs"].size()[0];
    assert!((1..=4).contains(&n), "{n} history entries");
    assert_eq!(sd.state[&0]["ro"].size(), [n]);
    assert_eq!(sd.state[&0]["al"].size(), [n]);
    let ckpt = first
        .save(dir.path(), "half", &UserMetadata::new().with("step", 5).unwrap())
        .unwrap();
    let resumed_path = common::spawn_resume(&ckpt, dir.path());
    let mut resumed = ModelContainer::new();
    let meta = resumed.load(&resumed_path).unwrap();
    assert_eq!(meta["step"], 10);
    assert_eq!(meta["optim_kwargs"], optim_kwargs());
    assert_bit_identical(&straight, &resumed, "resumed in a fresh process");
}

/// A change made to a state dict.
type Edit<'a> = dyn Fn(&mut pytorch_saver::optim::OptimizerState) + 'a;

/// The state in the file is checked before anything changes: each bad
/// shape or value is refused naming its key.
#[test]
fn an_lbfgs_state_that_does_not_fit_is_refused_naming_the_key() {
    let data = common::batch_data();
    let mut c = fresh();
    train(&mut c, &data, 0, 3);
    let numel: i64 = c
        .model()
        .unwrap()
        .parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let ones = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, tch::Device::Cpu));
    let cases: Vec<(&str, Box<Edit<'_>>)> = vec![
        (
            "old_dirs",
            Box::new(move |s| {
                drop(
                    s.state
                        .get_mut(&0)
                        .unwrap()
                        .insert("old_dirs".into(), ones(&[2, numel + 1])),
                )
            }),
        ),
        (
            "old_dirs",
            Box::new(move |s| {
                drop(
                    s.state
                        .get_mut(&0)
                        .unwrap()
                        .insert("old_dirs".into(), ones(&[5, numel])),
                )
            }),
        ),
        (
            "ro",
            Box::new(|s| drop(s.state.get_mut(&0).unwrap().insert("ro".into(), ones(&[7])))),
        ),
        (
            "al",
            Box::new(|s| drop(s.state.get_mut(&0).unwrap().insert("al".into(), ones(&[5])))),
        ),
        (
            "d",
            Box::new(move |s| drop(s.state.get_mut(&0).unwrap().insert("d".into(), ones(&[numel - 1])))),
        ),
        (
            "t",
            Box::new(|s| drop(s.state.get_mut(&0).unwrap().insert("t".into(), ones(&[2])))),
        ),
        (
            "n_iter",
            Box::new(|s| drop(s.values.get_mut(&0).unwrap().insert("n_iter".into(), json!("three")))),
        ),
        (
            "momentum",
            Box::new(|s| drop(s.values.get_mut(&0).unwrap().insert("momentum".into(), json!(0.9)))),
        ),
    ];
    let before = snapshot(&c);
    for (key, edit) in cases {
        let mut bad = c.optimizer().unwrap().state_dict().unwrap();
        edit(&mut bad);
        let err = c.optimizer_mut().unwrap().load_state_dict(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidState { .. }), "{key}: {err:?}");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let after = snapshot(&c);
    assert_eq!(before.2, after.2, "nothing changed");

    // Through a file: a checkpoint whose optimizer state is another
    // optimizer's JSON values is refused, naming the key.
    let mut adam = ModelContainer::new();
    adam.initialize(
        ContainerSpec::model(
            models::MLP,
            kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3, "n_layers": 2})),
        )
        .optimizer(ADAM, Map::new()),
    )
    .unwrap();
    let mut state = c.optimizer().unwrap().state_dict().unwrap();
    state.state.clear();
    let err = adam.optimizer_mut().unwrap().load_state_dict(state).unwrap_err();
    assert!(err.to_string().contains("func_evals"), "{err}");
}

#[test]
fn step_needs_a_closure_and_other_optimizers_call_it_once() {
    let mut c = fresh();
    let err = c.step().unwrap_err();
    assert!(
        matches!(&err, Error::Usage(m) if m.contains("LBFGS needs a closure")),
        "{err:?}"
    );

    let params = || {
        vec![(
            "w".to_string(),
            Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
        )]
    };
    let (a, b) = (params(), params());
    let mut with_closure = Optimizer::new(
        ADAM,
        &kw(json!({"lr": 0.1})),
        a.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
    )
    .unwrap();
    let mut plain = Optimizer::new(
        ADAM,
        &kw(json!({"lr": 0.1})),
        b.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
    )
    .unwrap();
    let mut calls = 0;
    let loss = with_closure
        .step_with_closure(&mut || {
            calls += 1;
            let l = (&a[0].1 * &a[0].1).sum(Kind::Float);
            l.backward();
            Ok(l.double_value(&[]))
        })
        .unwrap();
    assert_eq!((calls, loss), (1, 3.0));
    (&b[0].1 * &b[0].1).sum(Kind::Float).backward();
    plain.step().unwrap();
    assert!(common::bit_equal(&a[0].1.detach(), &b[0].1.detach()));

    // A closure's error ends the step and comes back as it is.
    let err = c
        .step_with_closure(&mut || Err(Error::Usage("the data loader is empty".into())))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Usage(m) if m == "the data loader is empty"),
        "{err:?}"
    );

    let two_groups = json!({"param_groups": [{"params": ["w"]}, {"params": ["v"]}]});
    let two = vec![
        params().remove(0),
        ("v".into(), Tensor::ones([1], (Kind::Float, tch::Device::Cpu))),
    ];
    let err = Optimizer::new(LBFGS, &kw(two_groups), two).unwrap_err();
    assert!(
        err.to_string().contains("LBFGS doesn't support per-parameter options"),
        "{err}"
    );
    let err = Optimizer::new(LBFGS, &kw(json!({"lr": -1.0})), params()).unwrap_err();
    assert!(err.to_string().contains("\"lr\""), "{err}");
    let opt = Optimizer::new(LBFGS, &kw(json!({"max_iter": 8})), params()).unwrap();
    assert_eq!(opt.param_groups()[0].get("max_eval"), Some(&json!(10)));
}

/// PyTorch (the Python package, torch.optim.LBFGS) trains and saves; Rust
/// loads that file and continues: bit-identical to PyTorch continuing.
#[test]
fn a_pytorch_lbfgs_checkpoint_resumes_in_rust_as_in_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = common::batch_data();
    let data = dir.path().join("data.safetensors");
    Tensor::write_safetensors(&[("X", &x), ("Y", &y)], &data).unwrap();
    let out = common::run_python(
        "lbfgs_resume.py",
        &json!({"mode": "train", "data": data, "out": dir.path(), "steps": 5, "total": 10,
            "optim_kwargs": optim_kwargs()}),
    );
    let mut theirs = ModelContainer::new();
    theirs.load(out["whole"].as_str().unwrap()).unwrap();
    let mut ours = ModelContainer::new();
    let meta = ours.load(out["half"].as_str().unwrap()).unwrap();
    assert_eq!(meta["step"], 5);
    train(&mut ours, &(x, y), 5, 5);
    assert_bit_identical(&ours, &theirs, "PyTorch's checkpoint resumed in Rust");
}

/// Rust trains and saves; the Python package loads that file into
/// torch.optim.LBFGS and continues: bit-identical to Rust continuing.
#[test]
fn a_rust_lbfgs_checkpoint_resumes_in_pytorch_as_in_rust() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::batch_data();
    let path = dir.path().join("data.safetensors");
    Tensor::write_safetensors(&[("X", &data.0), ("Y", &data.1)], &path).unwrap();
    let mut straight = fresh();
    train(&mut straight, &data, 0, 10);
    let mut half = fresh();
    train(&mut half, &data, 0, 5);
    let ckpt = half
        .save(dir.path(), "rust_half", &UserMetadata::new().with("step", 5).unwrap())
        .unwrap();
    let out = common::run_python(
        "lbfgs_resume.py",
        &json!({"mode": "resume", "checkpoint": ckpt, "data": path, "out": dir.path(), "start": 5, "steps": 5}),
    );
    let mut theirs = ModelContainer::new();
    theirs.load(out["resumed"].as_str().unwrap()).unwrap();
    assert_bit_identical(&straight, &theirs, "Rust's checkpoint resumed in PyTorch");
}
