//! The optimizers against torch.optim itself: the same parameters and
//! gradients, 200 steps, in Rust and in PyTorch (driven from here through
//! tests/python/optim_reference.py), then parameters, per-parameter state
//! and param_groups compared.

mod common;

use pytorch_saver::optim::{
    Optimizer, OptimizerState, ADADELTA, ADAFACTOR, ADAGRAD, ADAM, ADAMAX, ADAMW, ASGD, LBFGS, MUON, NADAM, RADAM,
    RMSPROP, RPROP, SGD, SPARSE_ADAM,
};
use pytorch_saver::Error;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

const STEPS: usize = 200;
/// The parameters of optim_reference.py, in its order.
const NAMES: [&str; 6] = ["a.weight", "a.bias", "b.weight", "c", "d", "e"];
/// Its 2-D parameters: the ones a Muon scenario optimizes (Muon refuses
/// the others, as PyTorch's does).
const NAMES_2D: [&str; 2] = ["a.weight", "b.weight"];

/// The parameters a scenario of `class` optimizes.
fn scenario_params(class: &str) -> &'static [&'static str] {
    if class == MUON {
        &NAMES_2D
    } else {
        &NAMES
    }
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().expect("kwargs object").clone()
}

fn scenarios() -> Vec<(&'static str, Value)> {
    vec![
        (SGD, json!({"lr": 0.1})),
        (SGD, json!({"lr": 0.05, "momentum": 0.9})),
        (
            SGD,
            json!({"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
        ),
        (
            SGD,
            json!({"lr": 0.01, "momentum": 0.8, "nesterov": true, "maximize": true, "weight_decay": 0.001}),
        ),
        (ADAM, json!({})),
        (ADAM, json!({"lr": 0.01, "amsgrad": true, "weight_decay": 0.01})),
        (
            ADAM,
            json!({"lr": 0.002, "betas": [0.8, 0.99], "eps": 1e-6, "maximize": true}),
        ),
        (
            ADAM,
            json!({"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": true}),
        ),
        (ADAMW, json!({})),
        (ADAMW, json!({"lr": 0.01, "amsgrad": true, "weight_decay": 0.05})),
        (RMSPROP, json!({})),
        (
            RMSPROP,
            json!({"lr": 0.001, "centered": true, "momentum": 0.9, "weight_decay": 0.01}),
        ),
        (RMSPROP, json!({"alpha": 0.9, "maximize": true})),
        (ADAGRAD, json!({})),
        (
            ADAGRAD,
            json!({"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.01}),
        ),
        (ADAMAX, json!({})),
        (
            ADAMAX,
            json!({"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.01, "maximize": true}),
        ),
        (NADAM, json!({})),
        (NADAM, json!({"lr": 0.01, "weight_decay": 0.01, "momentum_decay": 0.01})),
        (
            NADAM,
            json!({"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": true}),
        ),
        (
            NADAM,
            json!({"lr": 0.005, "betas": [0.8, 0.99], "eps": 1e-6, "maximize": true}),
        ),
        (RADAM, json!({})),
        (RADAM, json!({"lr": 0.01, "weight_decay": 0.01, "betas": [0.8, 0.99]})),
        (
            RADAM,
            json!({"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": true, "maximize": true}),
        ),
        (ADADELTA, json!({})),
        (
            ADADELTA,
            json!({"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.01, "maximize": true}),
        ),
        (RPROP, json!({})),
        (
            RPROP,
            json!({"lr": 0.05, "etas": [0.3, 1.5], "step_sizes": [1e-4, 0.2], "maximize": true}),
        ),
        (ASGD, json!({})),
        (
            ASGD,
            json!({"lr": 0.05, "lambd": 0.01, "alpha": 0.5, "t0": 20.0, "weight_decay": 0.01}),
        ),
        (ASGD, json!({"lr": 0.02, "t0": 0.0, "maximize": true})),
        (ADAFACTOR, json!({})),
        (
            ADAFACTOR,
            json!({"lr": 0.05, "beta2_decay": -0.5, "eps": [1e-30, 1e-3], "d": 2.0, "weight_decay": 0.01}),
        ),
        (ADAFACTOR, json!({"lr": 0.005, "maximize": true, "eps": [null, 1e-2]})),
        // eps1 null takes the machine epsilon of the group's first
        // parameter (float64 "d" here) for the whole group, as PyTorch does.
        (
            ADAFACTOR,
            json!({"param_groups": [
                {"params": ["d", "a.weight", "c"]},
                {"params": ["b.weight", "a.bias", "e"], "lr": 0.02, "weight_decay": 0.1},
            ]}),
        ),
        (MUON, json!({})),
        (
            MUON,
            json!({"lr": 0.02, "momentum": 0.9, "nesterov": false, "weight_decay": 0.01, "adjust_lr_fn": "match_rms_adamw"}),
        ),
        (
            MUON,
            json!({"ns_steps": 3, "ns_coefficients": [3.0, -3.2, 1.2], "eps": 1e-6, "adjust_lr_fn": "original"}),
        ),
        (
            ADAM,
            json!({"lr": 0.01, "param_groups": [
                {"params": ["b.weight", "c"], "lr": 0.05, "betas": [0.5, 0.9]},
                {"params": ["a.weight", "a.bias", "d", "e"], "amsgrad": true},
            ]}),
        ),
        (
            SGD,
            json!({"lr": 0.01, "momentum": 0.9, "param_groups": [
                {"params": ["e", "d", "c"], "nesterov": true},
                {"params": ["b.weight", "a.bias", "a.weight"], "momentum": 0.5, "lr": 0.1},
            ]}),
        ),
    ]
}

/// The layout PyTorch's `state_dict()` has besides the state: the
/// param_groups and the parameter names.
fn assert_groups_and_names(sd: &OptimizerState, reference: &Value, label: &str) {
    let groups: Vec<Value> = sd.param_groups.iter().map(|g| g.to_json()).collect();
    assert_eq!(Value::Array(groups), reference["param_groups"], "{label}: param_groups");
    assert_eq!(json!(sd.param_names), reference["param_names"], "{label}: param_names");
}

#[test]
fn optimizers_match_torch_optim_over_200_steps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reference.safetensors");
    let scenarios = scenarios();
    let spec = json!({
        "seed": 1234,
        "steps": STEPS,
        "out": out,
        "scenarios": scenarios
            .iter()
            .map(|(c, k)| json!({"class": c, "kwargs": k, "params": scenario_params(c)}))
            .collect::<Vec<_>>(),
    });
    let reference: Vec<Value> = serde_json::from_value(common::run_python("optim_reference.py", &spec)).unwrap();
    let tensors = common::read_safetensors(&out);

    let mut worst = (0.0f64, String::new());
    let mut identical = 0;
    let mut compared = 0;
    for (s, (class, kw)) in scenarios.iter().enumerate() {
        let params: Vec<(String, Tensor)> = scenario_params(class)
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    tensors[&format!("init.{n}")].copy().set_requires_grad(true),
                )
            })
            .collect();
        let mut opt = Optimizer::new(
            class,
            &kwargs(kw.clone()),
            params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
        )
        .unwrap_or_else(|e| panic!("{class} {kw}: {e}"));
        for step in 0..STEPS {
            opt.zero_grad().unwrap();
            for (n, p) in &params {
                if let Some(g) = tensors.get(&format!("grad.{step}.{n}")) {
                    (p * g).sum(p.kind()).backward();
                }
            }
            opt.step().unwrap();
        }
        let label = format!("{class} {kw}");
        // The layout: param_groups and parameter names as PyTorch's.
        let sd = opt.state_dict().unwrap();
        assert_groups_and_names(&sd, &reference[s], &label);
        let expected_keys: Vec<String> = tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("state.{s}.")).map(str::to_owned))
            .collect();
        let mut our_keys = Vec::new();
        for (i, state) in &sd.state {
            for (key, t) in state {
                let name = format!("{i}.{key}");
                let theirs = &tensors[&format!("state.{s}.{name}")];
                let d = common::max_rel_diff(t, theirs);
                compared += 1;
                identical += usize::from(common::bit_equal(t, theirs));
                if d > worst.0 {
                    worst = (d, format!("{label} state {name}"));
                }
                our_keys.push(name);
            }
        }
        our_keys.sort();
        let mut expected_keys = expected_keys;
        expected_keys.sort();
        assert_eq!(our_keys, expected_keys, "{label}: state keys");
        for (n, p) in &params {
            let theirs = &tensors[&format!("final.{s}.{n}")];
            let d = common::max_rel_diff(p, theirs);
            compared += 1;
            identical += usize::from(common::bit_equal(&p.detach(), theirs));
            if d > worst.0 {
                worst = (d, format!("{label} param {n}"));
            }
        }
    }
    println!(
        "{} scenarios x {STEPS} steps: {identical}/{compared} tensors bit-identical to torch.optim; worst relative difference {:e} ({})",
        scenarios.len(),
        worst.0,
        if worst.1.is_empty() { "none" } else { &worst.1 }
    );
    assert!(
        worst.0 <= 1e-6,
        "worst relative difference {:e} at {}",
        worst.0,
        worst.1
    );
}

fn two_params() -> Vec<(String, Tensor)> {
    vec![
        (
            "w".into(),
            Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
        ),
        (
            "b".into(),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
        ),
    ]
}

#[test]
fn unknown_names_and_bad_kwargs_are_errors_naming_them() {
    let err = Optimizer::new("torch.optim.Lion", &Map::new(), two_params()).unwrap_err();
    assert!(matches!(err, Error::UnknownName { kind: "optimizer", .. }), "{err}");
    assert!(
        err.to_string().contains("torch.optim.Adam"),
        "lists the known names: {err}"
    );

    let cases = [
        (
            ADAM,
            json!({"learning_rate": 0.1}),
            "unexpected kwarg \"learning_rate\"",
        ),
        (ADAM, json!({"lr": -1.0}), "\"lr\""),
        (ADAM, json!({"betas": [0.9, 1.0]}), "betas[1]"),
        (ADAM, json!({"betas": 0.9}), "\"betas\""),
        (
            ADAMW,
            json!({"decoupled_weight_decay": false}),
            "unexpected kwarg \"decoupled_weight_decay\"",
        ),
        (SGD, json!({"momentum": "high"}), "\"momentum\""),
        (SGD, json!({"nesterov": true}), "Nesterov"),
        (RMSPROP, json!({"centered": 1}), "\"centered\""),
        (
            ADAGRAD,
            json!({"initial_accumulator_value": -0.1}),
            "\"initial_accumulator_value\"",
        ),
        (ADAMAX, json!({"betas": [1.0, 0.9]}), "betas[0]"),
        (NADAM, json!({"momentum_decay": -0.1}), "\"momentum_decay\""),
        (RADAM, json!({"amsgrad": true}), "unexpected kwarg \"amsgrad\""),
        (ADADELTA, json!({"rho": 1.5}), "\"rho\""),
        (RPROP, json!({"etas": [0.5, 0.9]}), "0 < a < 1 < b"),
        (RPROP, json!({"etas": [0.0, 1.2]}), "\"etas\""),
        (RPROP, json!({"step_sizes": [1e-6]}), "\"step_sizes\""),
        (ASGD, json!({"t0": "soon"}), "\"t0\""),
        (ASGD, json!({"weight_decay": -1.0}), "\"weight_decay\""),
        (ADAFACTOR, json!({"beta2_decay": 0.5}), "\"beta2_decay\""),
        (ADAFACTOR, json!({"d": 0.5}), "\"d\""),
        (ADAFACTOR, json!({"eps": [-1.0, 1e-3]}), "eps[0]"),
        (ADAFACTOR, json!({"eps": [null, -1.0]}), "eps[1]"),
        (ADAFACTOR, json!({"eps": 1e-3}), "\"eps\""),
        (ADAFACTOR, json!({"amsgrad": true}), "unexpected kwarg \"amsgrad\""),
        (MUON, json!({"adjust_lr_fn": "cosine"}), "\"adjust_lr_fn\""),
        (MUON, json!({"ns_steps": 100}), "\"ns_steps\""),
        (MUON, json!({"ns_steps": 2.5}), "\"ns_steps\""),
        (MUON, json!({"ns_coefficients": [3.0, -4.0]}), "\"ns_coefficients\""),
        (MUON, json!({"momentum": -0.9}), "\"momentum\""),
        (MUON, json!({"foreach": false}), "unexpected kwarg \"foreach\""),
        (
            SGD,
            json!({"param_groups": [{"params": ["w"]}]}),
            "\"b\" is in no group",
        ),
        (
            SGD,
            json!({"param_groups": [{"params": ["w", "b"]}, {"params": ["w"]}]}),
            "\"w\" is in more than one group",
        ),
        (
            SGD,
            json!({"param_groups": [{"params": ["w", "b", "x"]}]}),
            "\"x\", which is not a parameter",
        ),
        (
            SGD,
            json!({"param_groups": [{"params": ["w", "b"], "lr": -2}]}),
            "param_groups[0]",
        ),
        (
            SGD,
            json!({"param_groups": [{"params": ["w", "b"], "betas": [0.1, 0.2]}]}),
            "unexpected kwarg \"betas\"",
        ),
    ];
    for (class, kw, needle) in cases {
        let err = Optimizer::new(class, &kwargs(kw.clone()), two_params()).unwrap_err();
        assert!(matches!(err, Error::InvalidKwargs { .. }), "{class} {kw}: {err:?}");
        assert!(
            err.to_string().contains(needle),
            "{class} {kw}: {err} should mention {needle}"
        );
    }
}

/// Muon takes 2-D parameters only, refused at construction with PyTorch's
/// reason and the parameter's name; SparseAdam is refused by name, saying
/// why (it needs sparse gradients), not as an unknown optimizer.
#[test]
fn muon_refuses_non_2d_parameters_and_sparse_adam_is_refused_by_name() {
    let err = Optimizer::new(MUON, &Map::new(), two_params()).unwrap_err();
    assert!(matches!(err, Error::InvalidKwargs { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("Muon only supports 2D parameters"), "{message}");
    assert!(message.contains("[2]") && message.contains("\"b\""), "{message}");
    let only_w = two_params().into_iter().take(1).collect();
    Optimizer::new(MUON, &Map::new(), only_w).unwrap();

    let err = Optimizer::new(SPARSE_ADAM, &Map::new(), two_params()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedClass { kind: "optimizer", name, .. } if name == SPARSE_ADAM),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(SPARSE_ADAM) && message.contains("sparse gradients"),
        "{message}"
    );
}

/// Adafactor keeps `row_var` (last dimension 1) and `col_var`
/// (second-to-last 1) for a matrix and `variance` for a vector: a loaded
/// state is checked against those shapes, and a factored state missing a
/// factor is refused, each naming the parameter.
#[test]
fn adafactor_state_has_factored_shapes_and_loads_checked() {
    let build = |params| Optimizer::new(ADAFACTOR, &Map::new(), params).unwrap();
    let params = two_params();
    let mut opt = build(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect());
    for _ in 0..3 {
        opt.zero_grad().unwrap();
        (&params[0].1 * &params[0].1).sum(Kind::Float).backward();
        (&params[1].1 * 3.0).sum(Kind::Float).backward();
        opt.step().unwrap();
    }
    let sd = opt.state_dict().unwrap();
    let keys = |i: usize| sd.state[&i].keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(0), ["col_var", "row_var", "step"]);
    assert_eq!(keys(1), ["step", "variance"]);
    assert_eq!(sd.state[&0]["row_var"].size(), [2, 1]);
    assert_eq!(sd.state[&0]["col_var"].size(), [1, 3]);
    assert_eq!(sd.state[&1]["variance"].size(), [2]);
    assert_eq!(sd.state[&0]["step"].double_value(&[]), 3.0);

    let mut fresh = build(two_params());
    fresh.load_state_dict(opt.state_dict().unwrap()).unwrap();
    for (key, t) in &sd.state[&0] {
        assert!(common::bit_equal(&fresh.state(0).unwrap()[key], t), "{key}");
    }

    let ones = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, tch::Device::Cpu));
    let cases: [(usize, &str, Option<Tensor>, &str, &str); 5] = [
        (
            0,
            "row_var",
            Some(ones(&[2, 3])),
            "w",
            "\"row_var\" has shape [2, 3], expected [2, 1]",
        ),
        (0, "col_var", Some(ones(&[2, 1])), "w", "expected [1, 3]"),
        (0, "variance", Some(ones(&[2, 3])), "w", "at most one dimension"),
        (1, "row_var", Some(ones(&[2, 1])), "b", "two or more dimensions"),
        (0, "col_var", None, "w", "lacks \"col_var\""),
    ];
    for (index, key, tensor, name, needle) in cases {
        let mut bad = opt.state_dict().unwrap();
        let state = bad.state.get_mut(&index).unwrap();
        match tensor {
            Some(t) => state.insert(key.into(), t),
            None => state.remove(key),
        };
        let err = fresh.load_state_dict(bad).unwrap_err();
        assert!(
            matches!(&err, Error::StateMismatch { tensor, .. } if tensor == name),
            "{key}: {err:?}"
        );
        assert!(err.to_string().contains(needle), "{key}: {err} should mention {needle}");
    }
}

#[test]
fn constructor_ranges_include_what_pytorch_accepts() {
    // Adadelta's rho may be 1 (PyTorch checks 0 <= rho <= 1); ASGD does
    // not check lambd, alpha or t0.
    for (class, kw) in [
        (ADADELTA, json!({"rho": 1.0})),
        (ADADELTA, json!({"rho": 0.0})),
        (ASGD, json!({"lambd": -1.0, "alpha": -0.5, "t0": -3})),
        (RPROP, json!({"step_sizes": [5, 1]})),
        (
            ADAFACTOR,
            json!({"beta2_decay": 0.0, "d": 1.0, "eps": [0.0, 0.0], "lr": 0.0}),
        ),
    ] {
        Optimizer::new(class, &kwargs(kw.clone()), two_params()).unwrap_or_else(|e| panic!("{class} {kw}: {e}"));
    }
}

/// NAdam's `mu_product` and ASGD's `eta` and `mu` are rank-0 state: they
/// load as one element whatever the parameter's shape, cast to the
/// parameter's dtype as PyTorch's load_state_dict does; another shape is
/// refused naming the parameter.
#[test]
fn rank_0_state_loads_as_one_element_and_other_shapes_are_refused() {
    for (class, key) in [(NADAM, "mu_product"), (ASGD, "eta"), (ASGD, "mu")] {
        let build = |params| Optimizer::new(class, &Map::new(), params).unwrap();
        let params = two_params();
        let mut opt = build(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect());
        (&params[0].1 * 2.0).sum(Kind::Float).backward();
        (&params[1].1 * 3.0).sum(Kind::Float).backward();
        opt.step().unwrap();
        let sd = opt.state_dict().unwrap();
        assert_eq!(sd.state[&0][key].size(), Vec::<i64>::new(), "{class} {key}");
        assert_eq!(sd.state[&0][key].kind(), Kind::Float, "{class} {key}");

        let mut fresh = build(two_params());
        fresh.load_state_dict(opt.state_dict().unwrap()).unwrap();
        let loaded = fresh.state(0).unwrap();
        assert!(common::bit_equal(&loaded[key], &sd.state[&0][key]), "{class} {key}");

        let mut bad = opt.state_dict().unwrap();
        let wrong = Tensor::ones([2], (Kind::Float, tch::Device::Cpu));
        bad.state.get_mut(&1).unwrap().insert(key.into(), wrong);
        let err = fresh.load_state_dict(bad).unwrap_err();
        assert!(
            matches!(&err, Error::StateMismatch { tensor, .. } if tensor == "b"),
            "{class} {key}: {err:?}"
        );
        assert!(err.to_string().contains(key), "{class}: {err}");
    }
}

#[test]
fn zero_grad_sets_gradients_to_none_so_unused_parameters_are_skipped() {
    let params = two_params();
    let mut opt = Optimizer::new(
        ADAM,
        &Map::new(),
        params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
    )
    .unwrap();
    (&params[0].1 * 2.0).sum(Kind::Float).backward();
    (&params[1].1 * 3.0).sum(Kind::Float).backward();
    opt.step().unwrap();
    opt.zero_grad().unwrap();
    assert!(!params[0].1.grad().defined() && !params[1].1.grad().defined());
    let b_before = params[1].1.detach().copy();
    (&params[0].1 * 2.0).sum(Kind::Float).backward();
    opt.step().unwrap();
    // Only w had a gradient: b and its state did not move (as in PyTorch).
    assert!(params[1].1.detach().equal(&b_before));
    let sd = opt.state_dict().unwrap();
    assert_eq!(sd.state[&0]["step"].double_value(&[]), 2.0);
    assert_eq!(sd.state[&1]["step"].double_value(&[]), 1.0);
}

#[test]
fn groups_edited_out_of_shape_are_refused_not_a_panic() {
    let params = two_params();
    let mut opt = Optimizer::new(SGD, &Map::new(), params).unwrap();
    opt.param_groups_mut()[0].params.push(7);
    assert!(matches!(opt.step(), Err(Error::Usage(m)) if m.contains("index 7")));
    assert!(matches!(opt.state_dict(), Err(Error::Usage(_))));
    opt.param_groups_mut()[0].params = vec![0];
    assert!(matches!(opt.step(), Err(Error::Usage(m)) if m.contains("\"b\" is in no param group")));
    opt.param_groups_mut()[0].params = vec![0, 1];
    opt.step().unwrap();
}

/// LBFGS's scenarios: its step takes a closure (the MSE of a 3-8-2 MLP on
/// fixed data, optim_reference.py's `mlp_loss`), so these run apart from
/// the fixed gradients above. A small history_size rolls the history over.
fn lbfgs_scenarios() -> Vec<Value> {
    vec![
        json!({}),
        json!({"line_search_fn": "strong_wolfe"}),
        json!({"line_search_fn": "strong_wolfe", "history_size": 3, "max_iter": 5}),
        json!({"lr": 0.5, "history_size": 3, "max_iter": 5}),
        json!({"lr": 0.8, "line_search_fn": "strong_wolfe", "history_size": 2, "max_eval": 4, "tolerance_change": 1e-12}),
    ]
}

/// The MLP parameters of optim_reference.py, in its order.
const MLP: [&str; 4] = ["w1", "b1", "w2", "b2"];

/// optim_reference.py's `mlp_loss`, op for op.
fn mlp_loss(p: &[Tensor], x: &Tensor, y: &Tensor) -> Tensor {
    let h = (x.matmul(&p[0].tr()) + &p[1]).tanh();
    let out = h.matmul(&p[2].tr()) + &p[3];
    (out - y).pow_tensor_scalar(2).mean(None::<Kind>)
}

#[test]
fn lbfgs_with_a_closure_matches_torch_optim_over_200_steps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reference.safetensors");
    let scenarios = lbfgs_scenarios();
    let spec = json!({
        "seed": 4321,
        "steps": STEPS,
        "out": out,
        "scenarios": scenarios
            .iter()
            .map(|k| json!({"class": LBFGS, "kwargs": k, "closure": true}))
            .collect::<Vec<_>>(),
    });
    let reference: Vec<Value> = serde_json::from_value(common::run_python("optim_reference.py", &spec)).unwrap();
    let tensors = common::read_safetensors(&out);
    let (x, y) = (&tensors["data.x"], &tensors["data.y"]);

    let (mut worst, mut identical, mut compared, mut evaluations) = (0.0f64, 0, 0, 0);
    for (s, kw) in scenarios.iter().enumerate() {
        let label = format!("LBFGS {kw}");
        let params: Vec<Tensor> = MLP
            .iter()
            .map(|n| tensors[&format!("init.mlp.{n}")].copy().set_requires_grad(true))
            .collect();
        let named = MLP.iter().zip(&params).map(|(n, t)| (n.to_string(), t.shallow_clone()));
        let mut opt = Optimizer::new(LBFGS, &kwargs(kw.clone()), named.collect()).unwrap();
        let mut closure = || -> pytorch_saver::Result<f64> {
            evaluations += 1;
            for p in &params {
                p.shallow_clone().zero_grad();
            }
            let loss = mlp_loss(&params, x, y);
            loss.backward();
            Ok(loss.double_value(&[]))
        };
        for _ in 0..STEPS {
            opt.step_with_closure(&mut closure)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
        }
        let sd = opt.state_dict().unwrap();
        assert_groups_and_names(&sd, &reference[s], &label);
        let values: Map<String, Value> = sd.values.iter().map(|(i, v)| (i.to_string(), json!(v))).collect();
        assert_eq!(
            Value::Object(values),
            reference[s]["state"],
            "{label}: non-tensor state"
        );
        let mut our_keys = Vec::new();
        for (i, state) in &sd.state {
            for (key, t) in state {
                let name = format!("{i}.{key}");
                let theirs = &tensors[&format!("state.{s}.{name}")];
                worst = worst.max(common::max_rel_diff(t, theirs));
                compared += 1;
                identical += usize::from(common::bit_equal(t, theirs));
                our_keys.push(name);
            }
        }
        our_keys.sort();
        let mut expected: Vec<String> = tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("state.{s}.")).map(str::to_owned))
            .collect();
        expected.sort();
        assert_eq!(our_keys, expected, "{label}: state keys");
        for (n, p) in MLP.iter().zip(&params) {
            let theirs = &tensors[&format!("final.{s}.{n}")];
            worst = worst.max(common::max_rel_diff(p, theirs));
            compared += 1;
            identical += usize::from(common::bit_equal(&p.detach(), theirs));
        }
    }
    println!(
        "LBFGS: {} scenarios x {STEPS} steps ({evaluations} closure calls): {identical}/{compared} tensors \
         bit-identical to torch.optim.LBFGS; worst relative difference {worst:e}",
        scenarios.len()
    );
    assert_eq!(identical, compared, "worst relative difference {worst:e}");
}
