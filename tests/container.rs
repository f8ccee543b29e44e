//! ModelContainer on real libtorch tensors: round trips bit for bit, the
//! built-in models' PyTorch names, and the typed errors of bad input.

mod common;

use std::path::Path;

use common::{bytes_of, registry, ALL_DTYPES};

use pytorch_saver::format::{Checkpoint, MemberName};
use pytorch_saver::{models, ContainerSpec, Error, Kwargs, ModelContainer, Registry, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{nn, Kind, Tensor};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// A container holding `torch.nn.Linear(2, 2, bias)`.
fn linear(bias: bool) -> ModelContainer {
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(
        models::LINEAR,
        obj(json!({"in_features": 2, "out_features": 2, "bias": bias})),
    ))
    .unwrap();
    c
}

fn assert_same_state(a: &ModelContainer, b: &ModelContainer) {
    let sa = a.model().unwrap().state_dict();
    let sb = b.model().unwrap().state_dict();
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (name, ta) in &sa {
        let tb = &sb[name];
        assert_eq!(ta.kind(), tb.kind(), "{name}");
        assert_eq!(ta.size(), tb.size(), "{name}");
        assert_eq!(bytes_of(ta), bytes_of(tb), "{name} differs");
    }
}

#[test]
fn every_dtype_and_user_metadata_round_trip_bit_exact() {
    tch::manual_seed(1);
    let dir = tempfile::tempdir().unwrap();
    let mut saved = ModelContainer::with_registry(registry());
    saved
        .initialize(ContainerSpec::model(ALL_DTYPES, obj(json!({"n": 4}))))
        .unwrap();
    let meta = UserMetadata::new()
        .with("loss", 0.55)
        .unwrap()
        .with("epoch", 5)
        .unwrap()
        .with("note", "ünïcode ✓")
        .unwrap()
        .with("history", json!([1.5, 2, {"nested": [true, null]}]))
        .unwrap()
        .with("big", u64::MAX)
        .unwrap()
        .with("tiny", 5e-324)
        .unwrap();
    let path = saved.save(dir.path(), "rt", &meta).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("rt_checkpoint_") && name.ends_with(".zip"), "{name}");

    tch::manual_seed(2); // the rebuilt model starts from other values
    let mut loaded = ModelContainer::with_registry(registry());
    let metadata = loaded.load(&path).unwrap();
    assert_same_state(&saved, &loaded);
    for (k, v) in meta.as_map() {
        assert_eq!(&metadata[k], v, "{k}");
    }
    assert_eq!(metadata["model_kwargs"], json!({"n": 4}));
    assert!(metadata["timestamp"].as_u64().unwrap() > 1_700_000_000);
    assert!(name.contains(&metadata["timestamp"].to_string()));
    assert!(
        !metadata.contains_key("__pytorch_saver__"),
        "internals stay out of the flat metadata"
    );
    assert!(!metadata.contains_key("optim_kwargs"), "only the kwargs that exist");
}

#[test]
fn mlp_has_pytorch_state_dict_names_and_forward_survives_round_trip() {
    tch::manual_seed(3);
    let dir = tempfile::tempdir().unwrap();
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(
        models::MLP,
        obj(json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 3})),
    ))
    .unwrap();
    let names: Vec<String> = c.model().unwrap().state_dict().into_keys().collect();
    assert_eq!(
        names,
        [
            "fc1.bias",
            "fc1.weight",
            "hidden_layers.0.bias",
            "hidden_layers.0.weight",
            "hidden_layers.2.bias",
            "hidden_layers.2.weight",
            "hidden_layers.4.bias",
            "hidden_layers.4.weight"
        ]
    );
    let sd = c.model().unwrap().state_dict();
    assert_eq!(sd["fc1.weight"].size(), [8, 4]);
    assert_eq!(sd["hidden_layers.4.weight"].size(), [3, 8]);
    let x = Tensor::randn([5, 4], (Kind::Float, tch::Device::Cpu));
    let y = c.model().unwrap().forward(&x).unwrap();
    assert_eq!(y.size(), [5, 3]);

    let path = c.save_inference(dir.path(), "", &UserMetadata::new()).unwrap();
    assert!(path.file_name().unwrap().to_str().unwrap().starts_with("inference_"));
    let mut l = ModelContainer::new();
    l.load(&path).unwrap();
    let y2 = l.model().unwrap().forward(&x).unwrap();
    assert_eq!(bytes_of(&y), bytes_of(&y2));
    assert_eq!(Checkpoint::open(&path).unwrap().metadata().kind.as_str(), "inference");
}

#[test]
fn linear_matches_pytorch_names_and_kwargs() {
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(
        models::LINEAR,
        obj(json!({"in_features": 3, "out_features": 2})),
    ))
    .unwrap();
    let names: Vec<String> = c.model().unwrap().state_dict().into_keys().collect();
    assert_eq!(names, ["bias", "weight"]);
    c.initialize(ContainerSpec::model(
        models::LINEAR,
        obj(json!({"in_features": 3, "out_features": 2, "bias": false})),
    ))
    .unwrap();
    let names: Vec<String> = c.model().unwrap().state_dict().into_keys().collect();
    assert_eq!(names, ["weight"]);
}

#[test]
fn restore_loads_into_the_existing_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ModelContainer::new();
    let kwargs = obj(json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3}));
    c.initialize(ContainerSpec::model(models::MLP, kwargs.clone())).unwrap();
    let path = c.save(dir.path(), "r", &UserMetadata::new()).unwrap();
    let mut other = ModelContainer::new();
    other.initialize(ContainerSpec::model(models::MLP, kwargs)).unwrap();
    let held = other.model().unwrap().state_dict()["fc1.weight"].shallow_clone();
    other.restore(&path).unwrap();
    assert_same_state(&c, &other);
    let want = bytes_of(&c.model().unwrap().state_dict()["fc1.weight"]);
    assert_eq!(
        bytes_of(&held),
        want,
        "the tensor the caller holds sees the loaded values"
    );
}

#[test]
fn unknown_model_name_is_a_typed_error() {
    let mut c = ModelContainer::new();
    let e = c
        .initialize(ContainerSpec::model("my.Missing", Map::new()))
        .unwrap_err();
    assert!(
        matches!(&e, Error::UnknownName { name, .. } if name == "my.Missing"),
        "{e}"
    );
    assert!(e.to_string().contains(models::MLP), "lists what is registered: {e}");
}

#[test]
fn a_file_naming_an_unregistered_class_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ModelContainer::with_registry(registry());
    c.initialize(ContainerSpec::model(ALL_DTYPES, Map::new())).unwrap();
    let path = c.save(dir.path(), "x", &UserMetadata::new()).unwrap();
    let mut plain = ModelContainer::new();
    plain
        .initialize(ContainerSpec::model(
            models::LINEAR,
            obj(json!({"in_features": 1, "out_features": 1})),
        ))
        .unwrap();
    let e = plain.load(&path).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownName { name, .. } if name == ALL_DTYPES),
        "{e}"
    );
    assert_eq!(plain.model().unwrap().class(), models::LINEAR, "the held model is kept");
}

#[test]
fn bad_kwargs_are_typed_errors_naming_the_kwarg() {
    let mut c = ModelContainer::new();
    let cases = [
        (
            json!({"in_dim": 4, "hidden_dim": 8}),
            "missing required kwarg \"n_classes\"",
        ),
        (
            json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 2, "dropout": 0.1}),
            "unexpected kwarg \"dropout\"",
        ),
        (
            json!({"in_dim": "four", "hidden_dim": 8, "n_classes": 2}),
            "kwarg \"in_dim\" must be an integer",
        ),
        (
            json!({"in_dim": -1, "hidden_dim": 8, "n_classes": 2}),
            "kwarg \"in_dim\" must be at least 1",
        ),
        (
            json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 2, "n_layers": 0}),
            "\"n_layers\" must be at least 1",
        ),
    ];
    for (kwargs, needle) in cases {
        let e = c
            .initialize(ContainerSpec::model(models::MLP, obj(kwargs)))
            .unwrap_err();
        assert!(matches!(e, Error::InvalidKwargs { .. }), "{e}");
        assert!(e.to_string().contains(needle), "{e} should contain {needle}");
    }
}

#[test]
fn a_panicking_factory_is_a_typed_error() {
    let mut r = Registry::new();
    r.register_model(
        "tests.Panics",
        |_p: nn::Path<'_>, _k: &Kwargs<'_>| -> pytorch_saver::Result<pytorch_saver::BoxedModel> {
            panic!("boom in factory")
        },
    )
    .unwrap();
    let e = r
        .register_model("tests.Panics", |_p: nn::Path<'_>, _k: &Kwargs<'_>| unreachable!())
        .unwrap_err();
    assert!(matches!(e, Error::DuplicateName { .. }), "{e}");
    let mut c = ModelContainer::with_registry(r);
    let e = c
        .initialize(ContainerSpec::model("tests.Panics", Map::new()))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Factory { reason, .. } if reason.contains("boom in factory")),
        "{e}"
    );
}

#[test]
fn reserved_and_non_json_metadata_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let c = linear(true);
    for key in [
        "model_kwargs",
        "optim_kwargs",
        "scheduler_kwargs",
        "timestamp",
        "__pytorch_saver__",
    ] {
        let meta = UserMetadata::new().with(key, 1).unwrap();
        let e = c.save(dir.path(), "x", &meta).unwrap_err();
        assert!(matches!(&e, Error::ReservedMetadataKey(k) if k == key), "{e}");
    }
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = UserMetadata::new().with("loss", bad).unwrap_err();
        assert!(matches!(&e, Error::InvalidMetadata { key, .. } if key == "loss"), "{e}");
        assert!(e.to_string().contains("not representable in JSON"), "{e}");
    }
    let e = UserMetadata::new().with("loss", f32::NAN).unwrap_err();
    assert!(matches!(e, Error::InvalidMetadata { .. }));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

#[test]
fn save_before_initialize_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = ModelContainer::new()
        .save(dir.path(), "x", &UserMetadata::new())
        .unwrap_err();
    assert!(matches!(e, Error::NotInitialized), "{e}");
}

#[test]
fn state_that_does_not_fit_is_refused_and_the_model_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut small = ModelContainer::new();
    small
        .initialize(ContainerSpec::model(
            models::MLP,
            obj(json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})),
        ))
        .unwrap();
    let path = small.save(dir.path(), "s", &UserMetadata::new()).unwrap();
    let mut big = ModelContainer::new();
    big.initialize(ContainerSpec::model(
        models::MLP,
        obj(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})),
    ))
    .unwrap();
    let before: Vec<Vec<u8>> = big.model().unwrap().state_dict().values().map(bytes_of).collect();
    let e = big.restore(&path).unwrap_err();
    assert!(matches!(&e, Error::StateMismatch { .. }), "{e}");
    assert!(e.to_string().contains("shape"), "{e}");
    let after: Vec<Vec<u8>> = big.model().unwrap().state_dict().values().map(bytes_of).collect();
    assert_eq!(before, after, "nothing half-loaded");
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let with_bias = linear(true).save(dir.path(), "b", &UserMetadata::new()).unwrap();
    let without_bias = linear(false).save(dir.path(), "nb", &UserMetadata::new()).unwrap();
    let e = linear(false).restore(&with_bias).unwrap_err();
    assert!(
        matches!(&e, Error::StateMismatch { tensor, .. } if tensor == "bias"),
        "{e}"
    );
    assert!(
        e.to_string().contains("in the file but not in model torch.nn.Linear"),
        "{e}"
    );
    let e = linear(true).restore(&without_bias).unwrap_err();
    assert!(
        e.to_string().contains("\"bias\"") && e.to_string().contains("not in the file"),
        "{e}"
    );
}

#[test]
fn model_tensors_are_in_model_safetensors_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(
        models::MLP,
        obj(json!({"in_dim": 2, "hidden_dim": 3, "n_classes": 1, "n_layers": 1})),
    ))
    .unwrap();
    let path = c.save(dir.path(), "n", &UserMetadata::new()).unwrap();
    let ckpt = Checkpoint::open(Path::new(&path)).unwrap();
    let mut names: Vec<&str> = ckpt
        .tensors(MemberName::Model)
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "fc1.bias",
            "fc1.weight",
            "hidden_layers.0.bias",
            "hidden_layers.0.weight"
        ]
    );
    assert_eq!(ckpt.metadata().model.as_ref().unwrap().class, models::MLP);
}

#[test]
fn factories_learn_when_a_load_will_overwrite_their_init() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let seen = Arc::new(AtomicUsize::new(0)); // bit 0: built to train, bit 1: built to load
    let mut r = Registry::new();
    let s = seen.clone();
    r.register_model("tests.Flag", move |p: nn::Path<'_>, k: &Kwargs<'_>| {
        s.fetch_or(if k.loading() { 2 } else { 1 }, Ordering::SeqCst);
        let _ = p.add("w", Tensor::ones([2], (Kind::Float, p.device())), true);
        let dims = serde_json::json!({"in_dim": 1, "hidden_dim": 1, "n_classes": 1, "n_layers": 1});
        let dims = Kwargs::new(models::MLP, dims.as_object().unwrap(), k.loading());
        Ok(Box::new(models::Mlp::new(p, &dims)?) as pytorch_saver::BoxedModel)
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = ModelContainer::with_registry(r.clone());
    c.initialize(ContainerSpec::model("tests.Flag", Map::new())).unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let path = c.save(dir.path(), "f", &UserMetadata::new()).unwrap();
    let mut l = ModelContainer::with_registry(r);
    l.load(&path).unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_same_state(&c, &l);
}

/// The registration example of the README, verbatim.
#[test]
fn readme_registry_example_works() -> pytorch_saver::Result<()> {
    let mut registry = pytorch_saver::Registry::new(); // with the built-ins
    registry.register_model("mypkg.models.Net", |p, kw| {
        let width = kw.required_i64_at_least("width", 1)?; // errors name the kwarg
        Ok(Box::new(tch::nn::linear(p / "fc", width, 2, Default::default())))
    })?;
    let mut container = ModelContainer::with_registry(registry);
    container.initialize(ContainerSpec::model("mypkg.models.Net", obj(json!({"width": 3}))))?;
    let names: Vec<String> = container.model()?.state_dict().into_keys().collect();
    assert_eq!(names, ["fc.bias", "fc.weight"]);
    let e = container
        .initialize(ContainerSpec::model(
            "mypkg.models.Net",
            obj(json!({"width": 3, "depth": 2})),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("unexpected kwarg \"depth\""), "{e}");
    Ok(())
}

#[test]
fn saves_within_one_second_get_distinct_names() {
    let dir = tempfile::tempdir().unwrap();
    let c = linear(true);
    let paths: Vec<_> = (0..3)
        .map(|_| c.save(dir.path(), "same", &UserMetadata::new()).unwrap())
        .collect();
    let mut names: Vec<_> = paths.iter().map(|p| p.file_name().unwrap().to_owned()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3, "{paths:?}");
    for p in &paths {
        Checkpoint::open(p).unwrap();
    }
    // Three saves take far less than two seconds: at least two shared a
    // timestamp, and the later one got the "-1" suffix.
    assert!(
        paths.iter().any(|p| p.to_string_lossy().ends_with("-1.zip")),
        "{paths:?}"
    );
}

#[test]
fn the_producer_language_is_rust_unless_a_binding_names_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let language_of = |path: &std::path::Path| {
        let ckpt = Checkpoint::open(path).unwrap();
        ckpt.metadata().producer.language.clone()
    };
    let mut c = linear(true);
    let rust = c.save_inference(dir.path(), "rust", &UserMetadata::new()).unwrap();
    assert_eq!(language_of(&rust), "rust");
    c.set_producer_language("go").unwrap();
    let go = c.save_inference(dir.path(), "go", &UserMetadata::new()).unwrap();
    assert_eq!(language_of(&go), "go");
    for bad in ["", "objective c", "ü", &"x".repeat(33)] {
        let err = c.set_producer_language(bad).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{bad:?}: {err}");
    }
    // A refused language leaves the last one in place.
    let still_go = c.save(dir.path(), "go", &UserMetadata::new()).unwrap();
    assert_eq!(language_of(&still_go), "go");
}

/// A wrong input shape on a built-in model is an error from libtorch's
/// fallible call, never a caught panic: a server would print a panic
/// message and a C++ backtrace for every bad request.
#[test]
fn a_wrong_input_shape_on_a_builtin_model_is_an_error_not_a_panic() {
    use std::sync::{Arc, Mutex};
    let panicked = Arc::new(Mutex::new(Vec::new()));
    let seen = panicked.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.lock().unwrap().push(std::thread::current().id());
        previous(info);
    }));
    let models = [
        (models::LINEAR, json!({"in_features": 4, "out_features": 2})),
        (models::MLP, json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})),
        (
            models::SEQUENTIAL,
            json!({"layers": [{"type": "Linear", "in_features": 4, "out_features": 2}]}),
        ),
    ];
    let wrong = Tensor::zeros([2, 5], (Kind::Float, tch::Device::Cpu));
    for (class, kwargs) in models {
        let mut c = ModelContainer::new();
        c.initialize(ContainerSpec::model(class, obj(kwargs))).unwrap();
        let err = c.model().unwrap().forward(&wrong).unwrap_err();
        assert!(matches!(err, Error::Torch(_)), "{class}: {err:?}");
        assert!(err.to_string().contains("cannot be multiplied"), "{class}: {err}");
        assert!(!err.to_string().contains("Exception raised from"), "{class}: {err}");
    }
    let me = std::thread::current().id();
    assert!(!panicked.lock().unwrap().contains(&me), "a forward panicked");
}

// Extra training state (FORMAT.md 11.3): tracked objects.

mod extra {
    use super::*;
    use pytorch_saver::extra_state::{Counters, ExtraState, Rng, Stateful};
    use pytorch_saver::format::FORMAT_VERSION;

    /// A user object with a tensor and a non-JSON-native value in its
    /// state: a moving average of the weights, and its decay.
    struct Ema {
        shadow: Tensor,
        decay: f64,
        /// Refuse every state (to test all-or-nothing loading).
        refuse: bool,
    }

    impl Ema {
        fn new(value: f32) -> Self {
            Ema {
                shadow: Tensor::from_slice(&[value; 4]).reshape([2, 2]),
                decay: 0.99,
                refuse: false,
            }
        }
    }

    impl Stateful for Ema {
        fn class_name(&self) -> &str {
            "tests.Ema"
        }
        fn state(&self) -> pytorch_saver::Result<ExtraState> {
            let mut s = ExtraState::new(Value::Null);
            let tag = s.add_tensor("shadow", self.shadow.copy());
            s.value = json!({"shadow": tag, "decay": self.decay, "dims": {"__type__": "tuple", "items": [2, 2]}});
            Ok(s)
        }
        fn check_state(&self, state: &ExtraState) -> pytorch_saver::Result<()> {
            if self.refuse {
                return Err(state.invalid("shadow", "refused by the test".into()));
            }
            state.tensor_of(&state.value["shadow"], "shadow", Kind::Float, &[2, 2])?;
            state.value["decay"]
                .as_f64()
                .ok_or_else(|| state.invalid("decay", "not a number".into()))?;
            Ok(())
        }
        fn load_state(&mut self, state: &ExtraState) -> pytorch_saver::Result<()> {
            self.shadow = state.tensor(&state.value["shadow"], "shadow")?.copy();
            self.decay = state.value["decay"].as_f64().unwrap();
            Ok(())
        }
    }

    fn counters(c: &ModelContainer) -> Vec<(String, i64)> {
        let counters = c.tracked::<Counters>("counters").unwrap();
        counters.iter().map(|(n, v)| (n.to_owned(), v)).collect()
    }

    fn tracking(step: i64) -> ModelContainer {
        let mut c = linear(true);
        c.track("counters", Counters::new().with("step", step).with("epoch", 1))
            .unwrap();
        c.track("ema", Ema::new(step as f32)).unwrap();
        c
    }

    #[test]
    fn tracked_names_are_non_empty_and_unique() {
        let mut c = linear(true);
        let e = c.track("", Counters::new()).unwrap_err();
        assert_eq!(e.kind(), "Usage", "{e}");
        c.track("counters", Counters::new()).unwrap();
        let e = c.track("counters", Rng::new()).unwrap_err();
        assert!(
            matches!(&e, Error::DuplicateName { name, .. } if name == "counters"),
            "{e}"
        );
        assert_eq!(c.tracked_names(), ["counters"]);
        let e = c.tracked::<Rng>("counters").unwrap_err();
        assert!(
            e.to_string().contains("pytorch_saver.Counters") && e.to_string().contains("Rng"),
            "{e}"
        );
        let e = c.tracked::<Counters>("missing").unwrap_err();
        assert!(e.to_string().contains("\"missing\""), "{e}");
        c.tracked_mut::<Counters>("counters").unwrap().increment("step");
        assert_eq!(c.tracked::<Counters>("counters").unwrap().get("step"), Some(1));
        assert!(c.untrack("counters").is_some());
        assert!(c.tracked_names().is_empty());
    }

    #[test]
    fn a_checkpoint_carries_every_tracked_entry_and_an_inference_file_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = tracking(10);
        c.track("rng", Rng::new()).unwrap();
        let path = c.save(dir.path(), "x", &UserMetadata::new()).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        let meta = ckpt.metadata();
        assert_eq!(meta.format_version, FORMAT_VERSION);
        let extra = meta.extra.as_ref().unwrap();
        let names: Vec<(&str, &str)> = extra.iter().map(|e| (e.name.as_str(), e.class.as_str())).collect();
        assert_eq!(
            names,
            [
                ("counters", "pytorch_saver.Counters"),
                ("ema", "tests.Ema"),
                ("rng", "pytorch_saver.RNG")
            ]
        );
        assert_eq!(extra[0].state, json!({"step": 10, "epoch": 1}));
        assert_eq!(
            extra[1].state,
            json!({"shadow": {"__type__": "tensor", "name": "ema.shadow"}, "decay": 0.99,
                   "dims": {"__type__": "tuple", "items": [2, 2]}})
        );
        assert_eq!(
            extra[2].state,
            json!({"torch": {"cpu": {"__type__": "tensor", "name": "rng.torch.cpu"}}})
        );
        let members: Vec<MemberName> = ckpt.members().iter().map(|m| m.name).collect();
        assert_eq!(members.last(), Some(&MemberName::Extra));
        let tensors: Vec<&str> = ckpt
            .tensors(MemberName::Extra)
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(tensors, ["ema.shadow", "rng.torch.cpu"]);
        let shadow = ckpt.tensor(MemberName::Extra, "ema.shadow").unwrap();
        assert_eq!(ckpt.tensor_bytes(shadow), bytes_of(&Tensor::from_slice(&[10f32; 4])));

        let inference = c.save_inference(dir.path(), "x", &UserMetadata::new()).unwrap();
        let ckpt = Checkpoint::open(&inference).unwrap();
        assert!(ckpt.metadata().extra.is_none());
        assert!(ckpt.member(MemberName::Extra).is_none());
    }

    #[test]
    fn load_and_restore_fill_the_tracked_objects_and_leave_untracked_entries_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = tracking(30).save(dir.path(), "x", &UserMetadata::new()).unwrap();
        for restore in [false, true] {
            let mut c = linear(true);
            c.track("counters", Counters::new().with("stale", 5)).unwrap();
            match restore {
                true => c.restore(&path).unwrap(),
                false => c.load(&path).unwrap(),
            };
            assert_eq!(counters(&c), [("step".into(), 30), ("epoch".into(), 1)]);
            // "ema" is not tracked here: left in the file, visible there.
            let meta = Checkpoint::open(&path).unwrap().metadata().clone();
            assert_eq!(meta.extra.unwrap()[1].name, "ema");
        }
        let mut c = tracking(0);
        c.load(&path).unwrap();
        let ema = c.tracked::<Ema>("ema").unwrap();
        assert_eq!(
            bytes_of(&ema.shadow),
            bytes_of(&Tensor::from_slice(&[30f32; 4]).reshape([2, 2]))
        );
    }

    #[test]
    fn a_tracked_name_the_file_lacks_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut saver = linear(true);
        saver.track("counters", Counters::new().with("step", 3)).unwrap();
        let path = saver.save(dir.path(), "x", &UserMetadata::new()).unwrap();
        let inference = saver.save_inference(dir.path(), "x", &UserMetadata::new()).unwrap();

        let mut c = tracking(7);
        let before = c.model().unwrap().state_dict()["weight"].copy();
        // The checkpoint lacks "ema"; the inference file has no extra state.
        for (file, missing) in [(&path, "ema"), (&inference, "counters")] {
            let e = c.load(file).unwrap_err();
            assert_eq!(e.kind(), "StateMismatch", "{e}");
            assert!(
                e.to_string().contains(&format!("__pytorch_saver__.extra.{missing}")),
                "{e}"
            );
            assert!(e.to_string().contains("untrack"), "{e}");
        }
        assert!(c.restore(&path).is_err());
        assert_eq!(counters(&c), [("step".into(), 7), ("epoch".into(), 1)], "untouched");
        assert_eq!(bytes_of(&c.model().unwrap().state_dict()["weight"]), bytes_of(&before));
        // Untracked, the file loads.
        c.untrack("ema").unwrap();
        c.load(&path).unwrap();
        assert_eq!(counters(&c), [("step".into(), 3)]);
    }

    #[test]
    fn a_class_mismatch_names_the_entry_and_both_classes_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = tracking(30).save(dir.path(), "x", &UserMetadata::new()).unwrap();
        let mut c = linear(true);
        c.track("counters", Counters::new().with("step", 1)).unwrap();
        c.track("ema", Rng::new()).unwrap();
        let before = c.model().unwrap().state_dict()["weight"].copy();
        let e = c.load(&path).unwrap_err();
        assert!(matches!(e, Error::StateMismatch { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("__pytorch_saver__.extra.ema")
                && text.contains("tests.Ema")
                && text.contains("pytorch_saver.RNG"),
            "{text}"
        );
        assert_eq!(
            counters(&c),
            [("step".into(), 1)],
            "the entry checked first is untouched"
        );
        assert_eq!(bytes_of(&c.model().unwrap().state_dict()["weight"]), bytes_of(&before));
    }

    #[test]
    fn an_object_refusing_its_state_leaves_every_object_and_the_model_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = tracking(30).save(dir.path(), "x", &UserMetadata::new()).unwrap();
        let mut c = tracking(2);
        c.tracked_mut::<Ema>("ema").unwrap().refuse = true;
        let held = c.model().unwrap().state_dict()["weight"].shallow_clone();
        let before = bytes_of(&held);
        let e = c.restore(&path).unwrap_err();
        assert!(
            e.to_string().contains("__pytorch_saver__.extra.ema.state.shadow"),
            "{e}"
        );
        assert_eq!(counters(&c), [("step".into(), 2), ("epoch".into(), 1)]);
        assert_eq!(bytes_of(&held), before);
        assert_eq!(
            bytes_of(&c.tracked::<Ema>("ema").unwrap().shadow),
            bytes_of(&Ema::new(2.0).shadow)
        );
    }

    #[test]
    fn format_version_1_is_written_on_request_and_refuses_extra_state() {
        let dir = tempfile::tempdir().unwrap();
        let e = linear(true).with_format_version(3).err().unwrap();
        assert_eq!(e.kind(), "Usage", "{e}");
        let plain = linear(true).with_format_version(1).unwrap();
        let path = plain.save(dir.path(), "v1", &UserMetadata::new()).unwrap();
        assert_eq!(Checkpoint::open(&path).unwrap().metadata().format_version, 1);

        let mut c = linear(true).with_format_version(1).unwrap();
        c.track("counters", Counters::new().with("step", 1)).unwrap();
        let e = c.save(dir.path(), "refused", &UserMetadata::new()).unwrap_err();
        assert_eq!(e.kind(), "InvalidInput", "{e}");
        assert!(
            e.to_string().contains("version 1") && e.to_string().contains("counters"),
            "{e}"
        );
        let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(written.len(), 1, "no file created for the refused save");
        // An inference file carries no extra state: version 1 holds it.
        let inference = c.save_inference(dir.path(), "v1", &UserMetadata::new()).unwrap();
        assert_eq!(Checkpoint::open(&inference).unwrap().metadata().format_version, 1);
    }
}
