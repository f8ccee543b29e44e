//! Zero-copy loads: the loaded tensors live in a private mapping of the
//! file, training on them never changes the file and computes exactly
//! what a copying load computes; verify on and off; restore; and the
//! inference model that many threads run at once.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{batch_data, bit_equal, train_batches};
use pytorch_saver::format::{Checkpoint, FormatError, MemberName};
use pytorch_saver::{
    models, optim, sched, ContainerSpec, Error, InferenceModel, LoadOptions, ModelContainer, Registry,
};
use pytorch_saver::{Forward, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// A net with BatchNorm (buffers that a train-mode forward updates in
/// place) and a Linear head, over the same 4 inputs and 3 outputs as
/// `batch_data`.
fn sequential_spec() -> ContainerSpec {
    let layers = json!([
        {"type": "Linear", "in_features": 4, "out_features": 16},
        {"type": "BatchNorm1d", "num_features": 16},
        {"type": "ReLU"},
        {"type": "Linear", "in_features": 16, "out_features": 3},
    ]);
    ContainerSpec::model(models::SEQUENTIAL, kw(json!({ "layers": layers })))
        .optimizer(optim::ADAM, kw(json!({"lr": 0.01})))
        .scheduler(sched::STEP_LR, kw(json!({"step_size": 3})))
}

fn mlp_spec() -> ContainerSpec {
    ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
        .optimizer(optim::ADAMW, kw(json!({"lr": 0.01})))
}

/// A trained checkpoint of `spec` in `dir`.
fn trained(dir: &Path, spec: ContainerSpec) -> PathBuf {
    let data = batch_data();
    let mut c = ModelContainer::new();
    c.initialize(spec).unwrap();
    train_batches(&mut c, &data, 0, 5);
    c.save(dir, "zc", &UserMetadata::new()).unwrap()
}

/// The address ranges of this process's mappings of `path`.
fn mappings_of(path: &Path) -> Vec<(usize, usize)> {
    let path = std::fs::canonicalize(path).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.ends_with(path.to_str().unwrap()))
        .map(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            )
        })
        .collect()
}

fn in_file_mapping(t: &Tensor, maps: &[(usize, usize)]) -> bool {
    let p = t.data_ptr() as usize;
    maps.iter().any(|&(a, b)| a <= p && p < b)
}

/// Every model and optimizer tensor, by name, for comparisons.
fn state(c: &ModelContainer) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = c.model().unwrap().state_dict().into_iter().collect();
    if let Some(opt) = c.optimizer() {
        for (i, s) in opt.state_dict().unwrap().state {
            for (k, t) in s {
                out.push((format!("state.{i}.{k}"), t));
            }
        }
    }
    out
}

#[test]
fn training_after_a_zero_copy_load_never_changes_the_file_and_equals_a_copying_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = batch_data();
    for spec in [mlp_spec(), sequential_spec()] {
        let path = trained(dir.path(), spec);
        let before = std::fs::read(&path).unwrap();

        let mut mapped = ModelContainer::new();
        mapped.load(&path).unwrap();
        let maps = mappings_of(&path);
        assert!(!maps.is_empty(), "the file is mapped while its tensors are in use");
        for (name, t) in state(&mapped) {
            assert!(in_file_mapping(&t, &maps), "{name} points into the file's mapping");
        }
        let mut copied = ModelContainer::new();
        copied.load_with(&path, &LoadOptions::new().with_copy(true)).unwrap();
        for (name, t) in state(&copied) {
            assert!(
                !in_file_mapping(&t, &maps),
                "{name} of a copying load has memory of its own"
            );
        }

        train_batches(&mut mapped, &data, 5, 10);
        train_batches(&mut copied, &data, 5, 10);
        for ((name, a), (_, b)) in state(&mapped).iter().zip(state(&copied).iter()) {
            assert!(bit_equal(a, b), "{name} differs between a mapped and a copying load");
        }
        assert_eq!(mapped.lrs().unwrap(), copied.lrs().unwrap());
        drop(mapped);
        let after = std::fs::read(&path).unwrap();
        assert_eq!(crc32fast::hash(&before), crc32fast::hash(&after));
        assert!(
            before == after,
            "training on a zero-copy load changed {}",
            path.display()
        );
        Checkpoint::open(&path).expect("the file is still valid");
    }
}

#[test]
fn verify_checks_tensor_crcs_and_can_be_skipped_but_never_the_structure() {
    let dir = tempfile::tempdir().unwrap();
    let path = trained(dir.path(), mlp_spec());
    let mut bytes = std::fs::read(&path).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    let last = ckpt.tensors(MemberName::Model).last().unwrap().clone();
    drop(ckpt);
    bytes[last.end as usize - 1] ^= 0x40;
    let flipped = dir.path().join("flipped.zip");
    std::fs::write(&flipped, &bytes).unwrap();

    let err = ModelContainer::new().load(&flipped).unwrap_err();
    assert!(
        matches!(err, Error::Format(FormatError::CrcMismatch { ref member, .. }) if member == "model.safetensors"),
        "{err}"
    );
    let err = ModelContainer::new()
        .restore_with(&flipped, &LoadOptions::new())
        .unwrap_err();
    assert!(matches!(err, Error::Format(_)), "{err}");
    let mut c = ModelContainer::new();
    c.load_with(&flipped, &LoadOptions::new().with_verify(false))
        .expect("an unverified load does not compute tensor CRCs");

    // A broken header is refused either way.
    let mut broken = std::fs::read(&path).unwrap();
    let model_start = Checkpoint::open(&path)
        .unwrap()
        .member(MemberName::Model)
        .unwrap()
        .data_start as usize;
    broken[model_start + 8] = b'[';
    let broken_path = dir.path().join("broken.zip");
    std::fs::write(&broken_path, &broken).unwrap();
    for options in [LoadOptions::new(), LoadOptions::new().with_verify(false)] {
        let err = ModelContainer::new().load_with(&broken_path, &options).unwrap_err();
        assert!(matches!(err, Error::Format(_)), "{err}");
    }
}

#[test]
fn restore_copies_into_the_existing_tensors_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = trained(dir.path(), sequential_spec());
    let mut c = ModelContainer::new();
    c.initialize(sequential_spec()).unwrap();
    let held = c.model().unwrap().state_dict();
    let ptrs: Vec<usize> = held.values().map(|t| t.data_ptr() as usize).collect();
    c.restore(&path).unwrap();
    let mut reference = ModelContainer::new();
    reference.load_with(&path, &LoadOptions::new().with_copy(true)).unwrap();
    for ((name, t), (_, r)) in state(&c).iter().zip(state(&reference).iter()) {
        assert!(bit_equal(t, r), "{name} restored");
    }
    let after: Vec<usize> = c
        .model()
        .unwrap()
        .state_dict()
        .values()
        .map(|t| t.data_ptr() as usize)
        .collect();
    assert_eq!(ptrs, after, "restore keeps the tensors' storage");
    assert!(mappings_of(&path).is_empty(), "nothing maps the file after a restore");

    // A file whose last tensor is corrupt leaves everything as it was.
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.len() - 200;
    let ckpt = Checkpoint::open(&path).unwrap();
    let last = ckpt.tensors(MemberName::Optimizer).last().unwrap().end as usize;
    drop(ckpt);
    assert!(last < end);
    bytes[last - 1] ^= 1;
    let bad = dir.path().join("bad.zip");
    std::fs::write(&bad, &bytes).unwrap();
    let mut fresh = ModelContainer::new();
    fresh.initialize(sequential_spec()).unwrap();
    let before = state(&fresh);
    fresh.restore(&bad).unwrap_err();
    for ((name, a), (_, b)) in before.iter().zip(state(&fresh).iter()) {
        assert!(bit_equal(a, b), "{name} untouched by a failed restore");
    }
}

#[test]
fn an_inference_model_serves_many_threads_at_once_with_the_sequential_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = trained(dir.path(), sequential_spec());
    let (model, metadata) = InferenceModel::load(&path, &Registry::new(), &LoadOptions::new()).unwrap();
    assert!(metadata.contains_key("model_kwargs"));
    assert!(model.is_concurrent(), "the built-in Sequential runs concurrently");
    assert_eq!(model.class(), models::SEQUENTIAL);
    let model = Arc::new(model);
    let inputs: Vec<Tensor> = (0..64)
        .map(|i| {
            tch::manual_seed(i);
            Tensor::randn([5, 4], (Kind::Float, tch::Device::Cpu))
        })
        .collect();
    let sequential: Vec<Tensor> = inputs.iter().map(|x| model.forward(x).unwrap()).collect();
    let handles: Vec<_> = (0..8)
        .map(|thread| {
            let model = model.clone();
            // Each thread owns its inputs (tch tensors are Send, not Sync).
            let mine: Vec<(usize, Tensor)> = (thread..64).step_by(8).map(|i| (i, inputs[i].copy())).collect();
            std::thread::spawn(move || {
                mine.into_iter()
                    .map(|(i, x)| (i, model.forward(&x).unwrap()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for (i, out) in h.join().unwrap() {
            assert!(bit_equal(&out, &sequential[i]), "request {i}");
        }
    }
    // Eval mode: the running statistics did not move.
    let mut reference = ModelContainer::new();
    reference.load(&path).unwrap();
    for (name, t) in model.state_dict() {
        assert!(bit_equal(&t, &reference.model().unwrap().state_dict()[&name]), "{name}");
    }
}

/// A registered model that does not declare itself thread-safe is served
/// one call at a time.
#[test]
fn an_inference_model_serializes_models_not_declared_thread_safe() {
    #[derive(Debug)]
    struct Plain(Tensor);
    impl Forward for Plain {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> pytorch_saver::Result<Tensor> {
            Ok(xs.f_mul(&self.0)?)
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }
    let mut r = Registry::new();
    r.register_model("tests.Plain", |p, kw| {
        let w = pytorch_saver::registry::variable(&p, kw, "w", &[4], tch::nn::Init::Const(2.0))?;
        Ok(Box::new(Plain(w)) as pytorch_saver::BoxedModel)
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = ModelContainer::with_registry(r.clone());
    c.initialize(ContainerSpec::model("tests.Plain", Map::new())).unwrap();
    let path = c.save_inference(dir.path(), "plain", &UserMetadata::new()).unwrap();
    let (model, _) = InferenceModel::load(&path, &r, &LoadOptions::new()).unwrap();
    assert!(!model.is_concurrent());
    let out = model
        .forward(&Tensor::ones([4], (Kind::Float, tch::Device::Cpu)))
        .unwrap();
    assert_eq!(Vec::<f32>::try_from(&out).unwrap(), vec![2.0; 4]);
}
