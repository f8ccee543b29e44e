//! The checkpoint manager killed at each exact point of one
//! save-then-retain (built with the `fault-injection` feature, whose
//! `PTS_KILL_AT=POINT:N` makes the N-th arrival at POINT SIGKILL the
//! process; `make test` runs it). A series of five checkpoints kept in
//! full is saved once more with `keep_last=1`, synchronously and in the
//! background, and killed while the temporary file's data is written,
//! before its fsync, before the link that publishes it, before the
//! directory's fsync, and before the first, a middle and the last
//! deletion of retention. Afterwards the older checkpoints are untouched
//! or deleted (never changed), no final name is partial, and a fresh
//! manager resumes from the newest committed checkpoint.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use pytorch_saver::format::Checkpoint;
use pytorch_saver::manager::{CheckpointManager, Policy};
use pytorch_saver::{models, ContainerSpec, LoadOptions, ModelContainer, UserMetadata};
use serde_json::json;

const PREFIX: &str = "kill";

fn mlp() -> ModelContainer {
    let mut c = ModelContainer::new();
    let kwargs = json!({"in_dim": 64, "hidden_dim": 64, "n_classes": 4});
    c.initialize(ContainerSpec::model(models::MLP, kwargs.as_object().unwrap().clone()))
        .unwrap();
    c
}

fn series(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("kill_checkpoint_"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// The child: one save at step 5 with keep_last=1, sync or async.
#[test]
fn child_process_role() {
    let Some((role, dir)) = common::child_role() else {
        return;
    };
    let policy = Policy {
        keep_last: Some(1),
        ..Policy::new(PREFIX)
    };
    let mut m = CheckpointManager::open(dir, policy).unwrap();
    let c = mlp();
    let meta = UserMetadata::new();
    match role.as_str() {
        "sync" => drop(m.save(&c, 5, &meta).unwrap()),
        _ => {
            m.save_async(&c, 5, &meta).unwrap();
            m.wait().unwrap();
        }
    }
    println!("SURVIVED");
}

#[test]
fn a_kill_at_each_point_of_save_then_retain_leaves_a_resumable_series() {
    let points = [
        ("write.data", 1),
        ("write.data", 3),
        ("write.fsync", 1),
        ("write.link", 1),
        ("write.dir_fsync", 1),
        ("manager.unlink", 1),
        ("manager.unlink", 3),
        ("manager.unlink", 5),
    ];
    for role in ["sync", "async"] {
        for (point, nth) in points {
            let label = format!("{role} {point}:{nth}");
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("run");
            {
                let mut keep_all = CheckpointManager::open(&dir, Policy::new(PREFIX)).unwrap();
                let c = mlp();
                for step in 0..5 {
                    keep_all.save(&c, step, &UserMetadata::new()).unwrap();
                }
            }
            let before = series(&dir);
            assert_eq!(before.len(), 5, "{label}");
            let out = common::spawn_child(role, &dir)
                .env("PTS_KILL_AT", format!("{point}:{nth}"))
                .output()
                .unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "{label}: the child was not killed at its point: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let after = series(&dir);
            let new: Vec<_> = after.keys().filter(|n| !before.contains_key(*n)).collect();
            assert!(new.len() <= 1, "{label}: {new:?}");
            for (name, bytes) in &after {
                if let Some(old) = before.get(name) {
                    assert_eq!(bytes, old, "{label}: {name} changed");
                }
                Checkpoint::open(dir.join(name)).unwrap_or_else(|e| panic!("{label}: {name}: {e}"));
            }
            let m = CheckpointManager::open(&dir, Policy::new(PREFIX)).unwrap();
            let latest = m.latest().unwrap().expect("a committed checkpoint");
            let expected = if new.is_empty() { 4 } else { 5 };
            assert_eq!(latest.step, expected, "{label}");
            let loaded = m.load_latest(&LoadOptions::default()).unwrap().expect("resumable");
            assert!(loaded.skipped.is_empty(), "{label}: {:?}", loaded.skipped);
            assert_eq!(loaded.path, latest.path, "{label}");
        }
    }
}
