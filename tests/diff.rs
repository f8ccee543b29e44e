//! `pytorch-saver diff` and `pytorch_saver::diff` on real files: two saves
//! of the same state, two checkpoints of a real training run 5 steps
//! apart, files with a renamed and a reshaped tensor, an unreadable file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{batch_data, raw, train_batches, RawTensor};
use pytorch_saver::diff::{diff_paths, TensorChange};
use pytorch_saver::format::{
    write_checkpoint, Checkpoint, Dtype, FileKind, MemberName, Metadata, TensorMember, TensorSource, WriteOptions,
};
use pytorch_saver::optim::ADAM;
use pytorch_saver::sched::STEP_LR;
use pytorch_saver::{models, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};

fn cli_diff(a: &Path, b: &Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pytorch-saver"));
    cmd.arg("diff").arg(a).arg(b);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// An MLP trained by Adam under StepLR.
fn mlp_with_adam() -> ModelContainer {
    tch::manual_seed(3);
    let mut c = ModelContainer::new();
    c.initialize(
        ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
            .optimizer(ADAM, kw(json!({"lr": 0.01})))
            .scheduler(STEP_LR, kw(json!({"step_size": 3, "gamma": 0.5}))),
    )
    .unwrap();
    c
}

/// Waits until the clock's second is past `timestamp`, so that the next
/// save has another timestamp.
fn next_second(timestamp: u64) {
    while SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() <= timestamp {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn timestamp(path: &Path) -> u64 {
    Checkpoint::open(path).unwrap().metadata().timestamp
}

#[test]
fn two_saves_of_the_same_state_differ_only_in_their_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = mlp_with_adam();
    train_batches(&mut c, &batch_data(), 0, 2);
    let meta = UserMetadata::new().with("epoch", 1).unwrap();
    let a = c.save(dir.path(), "a", &meta).unwrap();
    next_second(timestamp(&a));
    let b = c.save(dir.path(), "b", &meta).unwrap();

    let out = cli_diff(&a, &b, false);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("timestamp: "), "{text}");
    assert!(text.contains("(not counted)"), "{text}");
    assert!(text.trim_end().ends_with("identical"), "{text}");

    let report = diff_paths(&a, &b).unwrap();
    assert!(report.identical);
    assert_eq!(report.differences, 0);
    let paths: Vec<&str> = report.metadata.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(paths, ["timestamp"]);
    assert!(!report.metadata[0].counted);
    // Every tensor of the model and the optimizer, each equal.
    assert!(report.tensors.len() > 8);
    assert!(
        report.tensors.iter().all(|t| t.change.is_equal()),
        "{:?}",
        report.tensors
    );
}

#[test]
fn checkpoints_five_training_steps_apart_differ_in_every_parameter_and_the_step_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = batch_data();
    let mut c = mlp_with_adam();
    train_batches(&mut c, &data, 0, 3);
    let a = c
        .save(dir.path(), "before", &UserMetadata::new().with("loss", 0.5).unwrap())
        .unwrap();
    train_batches(&mut c, &data, 3, 5);
    let b = c
        .save(dir.path(), "after", &UserMetadata::new().with("loss", 0.25).unwrap())
        .unwrap();

    let out = cli_diff(&a, &b, false);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("loss: 0.5 -> 0.25"), "{text}");
    assert!(text.contains("max abs diff"), "{text}");
    assert!(text.trim_end().ends_with("differences"), "{text}");

    let out = cli_diff(&a, &b, true);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identical"], false);
    assert_eq!(v["a"], a.to_str().unwrap());
    let metadata = v["metadata"].as_array().unwrap();
    let value_of = |path: &str| {
        metadata
            .iter()
            .find(|m| m["path"] == path)
            .unwrap_or_else(|| panic!("{path} not reported in {metadata:?}"))
    };
    let loss = value_of("loss");
    assert_eq!(
        (&loss["a"], &loss["b"], &loss["counted"]),
        (&json!(0.5), &json!(0.25), &json!(true))
    );
    // The scheduler's epoch count and the optimizer's step count moved by 5.
    let epoch = value_of("__pytorch_saver__.scheduler.state.last_epoch");
    assert_eq!((epoch["a"].as_i64(), epoch["b"].as_i64()), (Some(3), Some(8)));
    // StepLR(step_size=3, gamma=0.5) halved the learning rate: 0.01 -> 0.0025.
    assert!(metadata
        .iter()
        .any(|m| m["path"].as_str().unwrap().ends_with(".lr") && m["b"] == json!(0.0025)));
    let tensors = v["tensors"].as_array().unwrap();
    let model: Vec<&Value> = tensors.iter().filter(|t| t["member"] == "model.safetensors").collect();
    let optim: Vec<&Value> = tensors
        .iter()
        .filter(|t| t["member"] == "optimizer.safetensors")
        .collect();
    assert_eq!(
        model.len(),
        Checkpoint::open(&a).unwrap().tensors(MemberName::Model).len()
    );
    assert!(!optim.is_empty());
    for t in model.iter().chain(&optim) {
        let name = t["name"].as_str().unwrap();
        // Adam's `step` lives in the state tensors too: 3.0 -> 8.0.
        assert_eq!(t["change"], "values", "{t}");
        let abs = t["max_abs_diff"].as_f64().unwrap();
        let rel = t["max_rel_diff"].as_f64().unwrap();
        assert!(abs > 0.0 && abs.is_finite(), "{name}: {abs}");
        assert!(rel > 0.0 && rel <= 2.0, "{name}: {rel}");
        assert!(t["elements_differing"].as_u64().unwrap() >= 1, "{t}");
        if name.ends_with(".step") {
            assert_eq!(abs, 5.0, "{t}");
        }
    }
    let counted = metadata.iter().filter(|m| m["counted"] == true).count();
    assert_eq!(
        v["differences"].as_u64().unwrap() as usize,
        counted + model.len() + optim.len()
    );
}

/// The tensors of a small weights file.
fn weights(names: [&str; 3], shapes: [Vec<usize>; 3]) -> Vec<RawTensor> {
    let floats = |n: usize, scale: f32| -> Vec<u8> { (0..n).flat_map(|i| (i as f32 * scale).to_le_bytes()).collect() };
    let [w, b, e] = shapes;
    vec![
        raw(names[0], Dtype::F32, w.clone(), floats(w.iter().product(), 0.5)),
        raw(names[1], Dtype::F32, b.clone(), floats(b.iter().product(), -1.0)),
        raw(
            names[2],
            Dtype::I64,
            e.clone(),
            vec![7; 8 * e.iter().product::<usize>()],
        ),
    ]
}

fn write_weights(dir: &Path, stem: &str, tensors: &[RawTensor]) -> PathBuf {
    let mut meta = Metadata::from_json(common::metadata("inference", "torch.nn.Linear")).unwrap();
    meta.format_version = 2;
    meta.kind = FileKind::Weights;
    meta.model = None;
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: tensors.iter().map(|t| t as &dyn TensorSource).collect(),
    }];
    write_checkpoint(dir, stem, &meta, &members, &WriteOptions::default()).unwrap()
}

#[test]
fn a_renamed_and_a_reshaped_tensor_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_weights(
        dir.path(),
        "a",
        &weights(["fc.weight", "fc.bias", "embed"], [vec![3, 4], vec![3], vec![2, 3]]),
    );
    let b = write_weights(
        dir.path(),
        "b",
        &weights(["fc.weight", "head.bias", "embed"], [vec![4, 3], vec![3], vec![2, 3]]),
    );

    let out = cli_diff(&a, &b, false);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("renamed fc.bias -> head.bias"), "{text}");
    assert!(text.contains("fc.weight: shape changed [3, 4] -> [4, 3]"), "{text}");
    assert!(text.contains("2 differences"), "{text}");
    assert!(!text.contains("only in"), "{text}");

    let report = diff_paths(&a, &b).unwrap();
    assert_eq!(report.differences, 2);
    // In the file's order (by data offset); compared by name.
    let mut changes: Vec<(&str, &TensorChange)> = report.tensors.iter().map(|t| (t.name.as_str(), &t.change)).collect();
    changes.sort_by_key(|(name, _)| *name);
    assert_eq!(
        changes,
        [
            (
                "embed",
                &TensorChange::Equal {
                    dtype: "I64".into(),
                    shape: vec![2, 3]
                }
            ),
            (
                "fc.bias",
                &TensorChange::Renamed {
                    renamed_to: "head.bias".into(),
                    dtype: "F32".into(),
                    shape: vec![3]
                }
            ),
            (
                "fc.weight",
                &TensorChange::Shape {
                    dtype: "F32".into(),
                    shape_a: vec![3, 4],
                    shape_b: vec![4, 3]
                }
            ),
        ]
    );

    // A tensor whose bytes changed is no rename: one only in each file.
    let mut other = weights(["fc.weight", "head.bias", "embed"], [vec![3, 4], vec![3], vec![2, 3]]);
    other[1].data.to_mut()[0] ^= 1;
    let c = write_weights(dir.path(), "c", &other);
    let out = cli_diff(&a, &c, true);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let change = |name: &str| {
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["change"]
            .clone()
    };
    assert_eq!(change("fc.bias"), "only_in_a");
    assert_eq!(change("head.bias"), "only_in_b");
    assert_eq!(change("fc.weight"), "equal");
}

#[test]
fn an_unreadable_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_weights(
        dir.path(),
        "good",
        &weights(["w", "b", "e"], [vec![2, 2], vec![2], vec![1]]),
    );
    let bad = dir.path().join("bad.zip");
    std::fs::write(&bad, b"not a zip file at all").unwrap();
    for (a, b) in [(&good, &bad), (&bad, &good)] {
        let out = cli_diff(a, b, false);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(bad.to_str().unwrap()), "{err}");
        assert!(out.stdout.is_empty());
    }
    let missing = dir.path().join("missing.zip");
    let out = cli_diff(&good, &missing, true);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("missing.zip"));
    assert!(diff_paths(&good, &missing).is_err());
}
