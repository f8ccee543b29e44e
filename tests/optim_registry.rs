//! A user's own optimizer class through the registry: built by name with
//! kwargs checked like a built-in's, stepped by the container, changed by
//! a scheduler, saved with its class, kwargs and state, and resumed in a
//! fresh process bit for bit; an unregistered name, a foreign state key
//! and a state of the wrong shape are typed errors that change nothing.

mod common;

use std::sync::{Arc, Mutex};

use common::train_batches as train;
use pytorch_saver::format::{Checkpoint, MemberName};
use pytorch_saver::optim::{OptimizerClass, ParamGroup, ParamState, StateKey, ADAM};
use pytorch_saver::{models, sched, ContainerSpec, Error, ModelContainer, Registry, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

const SIGN_MOMENTUM: &str = "my_project.SignMomentum";
/// Sign descent on a momentum buffer, its step size decaying as
/// `lr / sqrt(step)`: a momentum buffer of the parameter's shape and a
/// rank-0 step counter, both of which a resume must carry exactly.
struct SignMomentum;

impl OptimizerClass for SignMomentum {
    fn hyperparameters(&self) -> Vec<(String, Value)> {
        vec![("lr".into(), json!(0.01)), ("beta".into(), json!(0.9))]
    }

    fn state_layout(&self) -> Vec<StateKey> {
        vec![StateKey::like_param("momentum_buffer"), StateKey::rank0("step")]
    }

    fn check_group(&self, group: &ParamGroup) -> Result<(), String> {
        match group.f64("beta").map_err(|e| e.to_string())? {
            b if (0.0..1.0).contains(&b) => Ok(()),
            b => Err(format!("beta must be in [0, 1), got {b}")),
        }
    }

    fn step(
        &self,
        group: &ParamGroup,
        param: &mut Tensor,
        grad: &Tensor,
        state: &mut ParamState,
    ) -> pytorch_saver::Result<()> {
        let (lr, beta) = (group.lr()?, group.f64("beta")?);
        if state.is_empty() {
            state.insert("step".into(), Tensor::f_zeros([], (Kind::Float, Device::Cpu))?);
            state.insert("momentum_buffer".into(), param.f_zeros_like()?);
        }
        let step = state.get_mut("step").expect("created above");
        let _ = step.f_add_scalar_(1)?;
        let t = step.f_double_value(&[])?;
        let buf = state.get_mut("momentum_buffer").expect("created above");
        let _ = buf.f_mul_scalar_(beta)?;
        let _ = buf.f_add_(&grad.f_mul_scalar(1.0 - beta)?)?;
        let _ = param.f_sub_(&buf.f_sign()?.f_mul_scalar(lr / t.sqrt())?)?;
        Ok(())
    }
}

/// libtorch's generator is global and the tests run on several threads:
/// whatever draws from it (seeding, initializing a model, the data) holds
/// this lock, so that every run draws the same numbers.
static RNG: Mutex<()> = Mutex::new(());

fn with_rng<T>(f: impl FnOnce() -> T) -> T {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

fn data() -> (Tensor, Tensor) {
    with_rng(common::batch_data)
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_optimizer(SIGN_MOMENTUM, SignMomentum).unwrap();
    r
}

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

fn spec(opt_kw: &Value) -> ContainerSpec {
    ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
        .optimizer(SIGN_MOMENTUM, kw(opt_kw.clone()))
        .scheduler(sched::STEP_LR, kw(json!({"step_size": 20, "gamma": 0.5})))
}

fn fresh(opt_kw: &Value) -> ModelContainer {
    let mut c = ModelContainer::with_registry(registry());
    with_rng(|| {
        tch::manual_seed(11);
        c.initialize(spec(opt_kw)).unwrap();
    });
    c
}

/// The model's parameters and the optimizer's state tensors, by name.
fn tensors(c: &ModelContainer) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = c.model().unwrap().state_dict().into_iter().collect();
    let sd = c.optimizer().unwrap().state_dict().unwrap();
    for (i, s) in &sd.state {
        out.extend(s.iter().map(|(k, t)| (format!("state.{i}.{k}"), t.shallow_clone())));
    }
    out
}

fn assert_bit_identical(a: &ModelContainer, b: &ModelContainer) {
    let (a_t, b_t) = (tensors(a), tensors(b));
    assert_eq!(
        a_t.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b_t.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((n, x), (_, y)) in a_t.iter().zip(&b_t) {
        assert!(common::bit_equal(x, y), "{n} differs");
    }
    let groups = |c: &ModelContainer| -> Vec<Value> {
        c.optimizer()
            .unwrap()
            .param_groups()
            .iter()
            .map(|g| Value::Object(g.options.clone()))
            .collect()
    };
    assert_eq!(groups(a), groups(b));
    assert_eq!(a.scheduler().unwrap().state_dict(), b.scheduler().unwrap().state_dict());
}

/// What a child process runs: load a checkpoint with the same registry,
/// train 50 more steps, save. Without the role variable it does nothing.
#[test]
fn child_process_role() {
    common::resume_child(ModelContainer::with_registry(registry()), 50, |c, start, steps| {
        train(c, &data(), start, steps);
    });
}

#[test]
fn a_registered_optimizer_resumes_in_a_fresh_process_bit_for_bit() {
    let opt_kw = json!({"lr": 0.02, "beta": 0.8});
    let data = data();
    let mut straight = fresh(&opt_kw);
    train(&mut straight, &data, 0, 100);
    // The scheduler halved the lr the class reads, every 20 steps.
    assert_eq!(straight.lrs().unwrap(), vec![0.02 * 0.5f64.powi(5)]);

    let dir = tempfile::tempdir().unwrap();
    let mut first = fresh(&opt_kw);
    train(&mut first, &data, 0, 50);
    let ckpt = first
        .save(dir.path(), "half", &UserMetadata::new().with("step", 50).unwrap())
        .unwrap();

    // The file names the class and its kwargs, and holds its state in
    // PyTorch's layout.
    let file = Checkpoint::open(&ckpt).unwrap();
    let saved = file.metadata().optimizer.as_ref().unwrap();
    assert_eq!(saved.class, SIGN_MOMENTUM);
    assert_eq!(Value::Object(saved.kwargs.clone()), opt_kw);
    assert_eq!(
        Value::Object(saved.param_groups[0].options.clone()),
        json!({"lr": 0.02 * 0.5f64.powi(2), "beta": 0.8, "initial_lr": 0.02})
    );
    let names: Vec<String> = file
        .tensors(MemberName::Optimizer)
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert!(names.contains(&"state.0.momentum_buffer".to_owned()), "{names:?}");
    assert!(names.contains(&"state.0.step".to_owned()), "{names:?}");
    drop(file);

    let resumed_path = common::spawn_resume(&ckpt, dir.path());
    let mut resumed = ModelContainer::with_registry(registry());
    let meta = resumed.load(&resumed_path).unwrap();
    assert_eq!(meta["step"], 100);
    assert_eq!(meta["optim_kwargs"], opt_kw);
    assert_eq!(resumed.optimizer().unwrap().class(), SIGN_MOMENTUM);
    let step = resumed.optimizer().unwrap().state(0).unwrap()["step"].double_value(&[]);
    assert_eq!(step, 100.0);
    assert_bit_identical(&straight, &resumed);
}

#[test]
fn kwargs_are_checked_as_a_built_in_optimizers_are() {
    let build = |opt_kw: Value| {
        let mut c = ModelContainer::with_registry(registry());
        with_rng(|| c.initialize(spec(&opt_kw)).map(|_| ()))
    };
    let defaults = fresh(&json!({}));
    assert_eq!(
        Value::Object(defaults.optimizer().unwrap().param_groups()[0].options.clone()),
        json!({"lr": 0.01, "beta": 0.9, "initial_lr": 0.01})
    );
    let err = build(json!({"lr": 0.1, "momentum": 0.9})).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidKwargs { class, reason } if class == SIGN_MOMENTUM && reason.contains("momentum")),
        "{err}"
    );
    let err = build(json!({"beta": "high"})).unwrap_err();
    assert!(err.to_string().contains("\"beta\""), "{err}");
    let err = build(json!({"beta": 1.5})).unwrap_err();
    assert!(err.to_string().contains("beta must be in [0, 1)"), "{err}");

    // param_groups: each group its own overrides, over the shared kwargs.
    let mut c = ModelContainer::with_registry(registry());
    with_rng(|| {
        c.initialize(
            ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3}))).optimizer(
                SIGN_MOMENTUM,
                kw(json!({"beta": 0.5, "param_groups": [
                    {"params": ["fc1.weight", "fc1.bias"], "lr": 0.1},
                    {"params": ["hidden_layers.0.weight", "hidden_layers.0.bias", "hidden_layers.2.weight",
                                "hidden_layers.2.bias", "hidden_layers.4.weight", "hidden_layers.4.bias"]}
                ]})),
            ),
        )
    })
    .unwrap();
    let groups = c.optimizer().unwrap().param_groups();
    assert_eq!(
        Value::Object(groups[0].options.clone()),
        json!({"lr": 0.1, "beta": 0.5})
    );
    assert_eq!(
        Value::Object(groups[1].options.clone()),
        json!({"lr": 0.01, "beta": 0.5})
    );
    train(&mut c, &data(), 0, 3);
    assert_eq!(c.optimizer().unwrap().state(3).unwrap()["step"].double_value(&[]), 3.0);
}

#[test]
fn a_file_naming_an_unregistered_optimizer_is_refused_listing_the_registered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = fresh(&json!({"lr": 0.02}));
    train(&mut c, &data(), 0, 2);
    let ckpt = c.save(dir.path(), "ckpt", &UserMetadata::new()).unwrap();

    struct Other;
    impl OptimizerClass for Other {
        fn hyperparameters(&self) -> Vec<(String, Value)> {
            vec![("lr".into(), json!(1.0))]
        }
        fn state_layout(&self) -> Vec<StateKey> {
            Vec::new()
        }
        fn step(&self, _: &ParamGroup, _: &mut Tensor, _: &Tensor, _: &mut ParamState) -> pytorch_saver::Result<()> {
            Ok(())
        }
    }
    let mut other = Registry::new();
    other.register_optimizer("my_project.Other", Other).unwrap();
    let mut loader = ModelContainer::with_registry(other);
    let err = loader.load(&ckpt).unwrap_err();
    match &err {
        Error::UnknownName { kind, name, known } => {
            assert_eq!(*kind, "optimizer");
            assert_eq!(name, SIGN_MOMENTUM);
            assert!(known.contains("my_project.Other"), "{known}");
            assert!(known.contains(ADAM), "{known}");
        }
        e => panic!("expected UnknownName, got {e}"),
    }
    assert!(loader.model().is_err(), "nothing was installed");
}

#[test]
fn registering_is_checked() {
    let mut r = Registry::new();
    let err = r
        .register_optimizer("torch.optim.SignMomentum", SignMomentum)
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateName { kind: "optimizer", .. }), "{err}");
    let err = r.register_optimizer(ADAM, SignMomentum).unwrap_err();
    assert!(matches!(err, Error::DuplicateName { kind: "optimizer", .. }), "{err}");
    r.register_optimizer(SIGN_MOMENTUM, SignMomentum).unwrap();
    let err = r.register_optimizer(SIGN_MOMENTUM, SignMomentum).unwrap_err();
    assert!(matches!(err, Error::DuplicateName { kind: "optimizer", .. }), "{err}");
    assert_eq!(r.optimizer_names().collect::<Vec<_>>(), vec![SIGN_MOMENTUM]);

    struct NoLr;
    impl OptimizerClass for NoLr {
        fn hyperparameters(&self) -> Vec<(String, Value)> {
            vec![("eta".into(), json!(0.1))]
        }
        fn state_layout(&self) -> Vec<StateKey> {
            vec![StateKey::rank0("a.b")]
        }
        fn step(&self, _: &ParamGroup, _: &mut Tensor, _: &Tensor, _: &mut ParamState) -> pytorch_saver::Result<()> {
            Ok(())
        }
    }
    let err = r.register_optimizer("my_project.NoLr", NoLr).unwrap_err();
    assert!(err.to_string().contains("\"lr\""), "{err}");
    assert!(!r.has_optimizer("my_project.NoLr"));
}

#[test]
fn a_state_of_the_wrong_shape_or_an_undeclared_key_is_refused_naming_it() {
    let mut c = fresh(&json!({"lr": 0.02}));
    train(&mut c, &data(), 0, 3);
    let before = tensors(&c);
    let opt = c.optimizer_mut().unwrap();

    let mut saved = opt.state_dict().unwrap();
    let buf = saved.state.get_mut(&0).unwrap();
    buf.insert(
        "momentum_buffer".into(),
        Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)),
    );
    let err = opt.load_state_dict(saved).unwrap_err();
    match &err {
        Error::StateMismatch { tensor, reason } => {
            assert_eq!(tensor, "fc1.weight");
            assert!(reason.contains("\"momentum_buffer\""), "{reason}");
        }
        e => panic!("expected StateMismatch, got {e}"),
    }

    let mut saved = opt.state_dict().unwrap();
    saved
        .state
        .get_mut(&1)
        .unwrap()
        .insert("exp_avg".into(), Tensor::zeros([16], (Kind::Float, Device::Cpu)));
    let err = opt.load_state_dict(saved).unwrap_err();
    assert!(err.to_string().contains("\"exp_avg\""), "{err}");

    let mut saved = opt.state_dict().unwrap();
    saved.state.get_mut(&2).unwrap().remove("step");
    let err = opt.load_state_dict(saved).unwrap_err();
    assert!(err.to_string().contains("\"step\""), "{err}");

    // Nothing changed on error.
    for ((n, x), (_, y)) in before.iter().zip(&tensors(&c)) {
        assert!(common::bit_equal(x, y), "{n} changed");
    }
}

/// A step that leaves state its layout does not declare fails the step
/// (a save would write a file no load accepts).
#[test]
fn a_step_that_breaks_its_declared_layout_is_an_error() {
    struct Sloppy;
    impl OptimizerClass for Sloppy {
        fn hyperparameters(&self) -> Vec<(String, Value)> {
            vec![("lr".into(), json!(0.1))]
        }
        fn state_layout(&self) -> Vec<StateKey> {
            vec![StateKey::rank0("step")]
        }
        fn step(&self, _: &ParamGroup, p: &mut Tensor, _: &Tensor, s: &mut ParamState) -> pytorch_saver::Result<()> {
            s.insert("step".into(), p.f_zeros_like()?);
            Ok(())
        }
    }
    let mut r = Registry::new();
    r.register_optimizer("my_project.Sloppy", Sloppy).unwrap();
    let mut c = ModelContainer::with_registry(Arc::new(r));
    with_rng(|| {
        c.initialize(
            ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
                .optimizer("my_project.Sloppy", Map::new()),
        )
    })
    .unwrap();
    let (x, y) = data();
    c.zero_grad().unwrap();
    let loss = (c.model().unwrap().forward_t(&x, true).unwrap() - y)
        .square()
        .mean(Kind::Float);
    loss.backward();
    let err = c.step().unwrap_err();
    assert!(err.to_string().contains("\"step\""), "{err}");
    assert!(err.to_string().contains("rank-0"), "{err}");
}

/// The README's example (formatted): it registers, trains and saves its state.
#[test]
fn the_readme_example_trains() {
    use pytorch_saver::optim::{OptimizerClass, ParamGroup, ParamState, StateKey};

    struct SignMomentum;
    impl OptimizerClass for SignMomentum {
        fn hyperparameters(&self) -> Vec<(String, serde_json::Value)> {
            vec![("lr".into(), 0.01.into()), ("beta".into(), 0.9.into())] // kwargs and defaults
        }
        fn state_layout(&self) -> Vec<StateKey> {
            vec![StateKey::like_param("momentum_buffer")]
        }
        fn step(
            &self,
            g: &ParamGroup,
            p: &mut tch::Tensor,
            grad: &tch::Tensor,
            s: &mut ParamState,
        ) -> pytorch_saver::Result<()> {
            let (lr, beta) = (g.lr()?, g.f64("beta")?); // called under no_grad
            let m = s.entry("momentum_buffer".into()).or_insert_with(|| p.zeros_like());
            let _ = m.f_mul_scalar_(beta)?.f_add_(&grad.f_mul_scalar(1.0 - beta)?)?;
            let _ = p.f_sub_(&m.f_sign()?.f_mul_scalar(lr)?)?;
            Ok(())
        }
    }
    let mut registry = Registry::new();
    registry
        .register_optimizer("my_project.SignMomentum", SignMomentum)
        .unwrap();

    let mut c = ModelContainer::with_registry(registry);
    with_rng(|| {
        c.initialize(
            ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
                .optimizer(SIGN_MOMENTUM, Map::new()),
        )
        .map(|_| ())
    })
    .unwrap();
    let before = c.model().unwrap().state_dict()["fc1.weight"].copy();
    train(&mut c, &data(), 0, 2);
    assert!(!common::bit_equal(
        &before,
        &c.model().unwrap().state_dict()["fc1.weight"]
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = c.save(dir.path(), "readme", &UserMetadata::new()).unwrap();
    let file = Checkpoint::open(&path).unwrap();
    assert!(file
        .tensors(MemberName::Optimizer)
        .iter()
        .any(|e| e.name == "state.0.momentum_buffer"));
}
