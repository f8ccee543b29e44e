//! One checkpoint series, managed from Python and from Rust in turn
//! (docs/FORMAT.md section 12): each language's manager lists the other's
//! checkpoints as its own series, applies the same retention to them and
//! resumes from the newest.

mod common;

use pytorch_saver::manager::{CheckpointManager, Policy};
use pytorch_saver::{models, optim, ContainerSpec, LoadOptions, ModelContainer, UserMetadata};
use serde_json::{json, Value};

fn policy() -> Policy {
    Policy {
        keep_last: Some(2),
        ..Policy::new("run")
    }
}

fn names(v: &Value) -> Vec<(String, u64)> {
    v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["step"].as_u64().unwrap()))
        .collect()
}

#[test]
fn python_and_rust_managers_share_one_series() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |saves: &[u64]| json!({"dir": dir.path(), "prefix": "run", "keep_last": 2, "saves": saves});

    // Python starts the series: steps 1, 2, 3 with keep_last=2 leave 2 and 3.
    let py = common::run_python("manager_series.py", &spec(&[1, 2, 3]));
    let steps: Vec<u64> = names(&py).into_iter().map(|(_, s)| s).collect();
    assert_eq!(steps, [2, 3]);
    let id = py["id"].as_str().unwrap().to_owned();

    // Rust opens the same series: same id, same checkpoints, same rules.
    let mut m = CheckpointManager::open(dir.path(), policy()).unwrap();
    assert_eq!(m.id(), id);
    let listed = m.list().unwrap();
    assert_eq!(listed.iter().map(|c| c.step).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(listed[1].metrics["loss"], json!(0.25));
    let loaded = m.load_latest(&LoadOptions::default()).unwrap().unwrap();
    assert!(loaded.skipped.is_empty());
    assert_eq!(loaded.metadata["loss"], json!(0.25));
    let w = loaded.container.model().unwrap().state_dict()["fc1.weight"].flatten(0, -1);
    let first: Vec<f32> = (0..4).map(|i| w.double_value(&[i]) as f32).collect();
    let recorded: Vec<f32> = py["weight"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(first, recorded);

    // Rust continues it: step 4 deletes Python's step 2, never step 3.
    let mut c = ModelContainer::new();
    c.initialize(
        ContainerSpec::model(
            models::MLP,
            json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})
                .as_object()
                .unwrap()
                .clone(),
        )
        .optimizer(optim::SGD, json!({"lr": 0.1}).as_object().unwrap().clone()),
    )
    .unwrap();
    let meta = UserMetadata::new().with("loss", 0.2).unwrap();
    m.save(&c, 4, &meta).unwrap();
    assert_eq!(m.list().unwrap().iter().map(|c| c.step).collect::<Vec<_>>(), [3, 4]);
    m.close().unwrap();

    // Python sees Rust's checkpoint as the newest of its series, and step 5
    // deletes step 3.
    let py = common::run_python("manager_series.py", &spec(&[5]));
    assert_eq!(py["id"], json!(id));
    let steps: Vec<u64> = names(&py).into_iter().map(|(_, s)| s).collect();
    assert_eq!(steps, [4, 5]);
}
