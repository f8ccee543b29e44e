//! Sharded checkpoints written by real Python ranks (4 gloo processes,
//! FSDP2, `bindings/python/tests/sharded_ranks.py`), read from Rust: every
//! tensor of the index equals what the ranks held, and the consolidated
//! file loads in Rust and Python with the forward outputs of the sharded
//! model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use pytorch_saver::format::{Checkpoint, MemberName};
use pytorch_saver::sharded::{consolidate, ShardedCheckpoint};
use pytorch_saver::ModelContainer;
use serde_json::{json, Value};

/// Runs the 4 ranks' `train_save` into a new directory; its `train.json`.
fn trained() -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bindings/python/tests/sharded_ranks.py");
    let status = Command::new(common::python())
        .arg(&script)
        .args(["train_save", "--world", "4", "--out"])
        .arg(dir.path())
        .env("OMP_NUM_THREADS", "1")
        .status()
        .expect("run the Python ranks");
    assert!(status.success(), "the Python ranks failed (their stderr is above)");
    let run: Value = serde_json::from_slice(&std::fs::read(dir.path().join("train.json")).unwrap()).unwrap();
    (dir, run)
}

fn str_of<'a>(run: &'a Value, key: &str) -> &'a str {
    run[key].as_str().unwrap_or_else(|| panic!("train.json has no {key}"))
}

#[test]
fn rust_reads_what_python_ranks_wrote_and_serves_the_consolidated_model() {
    let (dir, run) = trained();
    let index = str_of(&run, "index");
    let sharded = ShardedCheckpoint::open(index).unwrap();
    sharded.verify().unwrap();
    assert_eq!(sharded.index().world_size, 4);
    assert_eq!(sharded.index().shards.len(), 4);

    // Every tensor, assembled, is byte for byte what the ranks held
    // (gathered whole by Python into a weights file).
    let expected = Checkpoint::open(str_of(&run, "expected")).unwrap();
    let entries = expected.tensors(MemberName::Model);
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(sharded.tensor_names(), names);
    assert!(names.iter().any(|n| n.starts_with("optimizer.state.")));
    for entry in entries {
        let mut want = vec![0u8; entry.byte_len() as usize];
        expected.read_tensor_into(entry, &mut want).unwrap();
        assert_eq!(sharded.read_tensor(&entry.name).unwrap(), want, "{}", entry.name);
        let (dtype, shape) = sharded.tensor_info(&entry.name).unwrap();
        assert_eq!(dtype, entry.dtype, "{}", entry.name);
        assert_eq!(
            shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
            entry.shape,
            "{}",
            entry.name
        );
    }

    // One ordinary checkpoint file, which Rust and Python load and run.
    let out: PathBuf = dir.path().join("consolidated.zip");
    consolidate(index, out.to_str().unwrap()).unwrap();
    let mut container = ModelContainer::new();
    let metadata = container.load(&out).unwrap();
    assert_eq!(metadata["step"], json!(4));
    assert!(
        container.optimizer().is_some(),
        "the consolidated checkpoint holds the optimizer"
    );
    let input: Vec<Vec<f32>> = serde_json::from_value(run["input"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(run["output"].clone()).unwrap();
    let rows = input.len() as i64;
    let flat: Vec<f32> = input.iter().flatten().copied().collect();
    let xs = tch::Tensor::from_slice(&flat).view([rows, -1]);
    let ys = tch::no_grad(|| container.model().unwrap().forward(&xs)).unwrap();
    let got: Vec<f32> = Vec::<f32>::try_from(ys.contiguous().view([-1])).unwrap();
    let want_flat: Vec<f32> = want.iter().flatten().copied().collect();
    assert_close(&got, &want_flat, "Rust forward");

    let python = common::run_python(
        "sharded_consolidated_forward.py",
        &json!({"path": out.to_str().unwrap(), "input": run["input"]}),
    );
    assert_eq!(python["step"], json!(4));
    let from_python: Vec<Vec<f32>> = serde_json::from_value(python["output"].clone()).unwrap();
    assert_close(
        &from_python.into_iter().flatten().collect::<Vec<_>>(),
        &want_flat,
        "Python forward",
    );
}

/// The sharded model's forward ran FSDP2's all-gathered parameters through
/// the same kernels; a consolidated model's may block its sums otherwise.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}: output {i}: {g} vs {w}"
        );
    }
}
