//! The checkpoint manager (FORMAT.md section 12) on real files: retention
//! after every save equals the pure function over the committed list,
//! under random policies, pins and foreign files; resuming skips damaged
//! checkpoints; background saves write the state as it was at the call;
//! the lock; a directory that disappears.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::Rng;
use pytorch_saver::format::Checkpoint;
use pytorch_saver::manager::retention::{self, Candidate, Rule};
use pytorch_saver::manager::{CheckpointManager, Mode, Policy};
use pytorch_saver::optim::ADAM;
use pytorch_saver::{models, ContainerSpec, Error, LoadOptions, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::Tensor;

fn linear(in_features: i64, out_features: i64) -> ModelContainer {
    let mut c = ModelContainer::new();
    let kw = json!({"in_features": in_features, "out_features": out_features});
    c.initialize(ContainerSpec::model(models::LINEAR, kw.as_object().unwrap().clone()).optimizer(ADAM, Map::new()))
        .unwrap();
    c
}

fn names_on_disk(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn random_policy(rng: &mut Rng) -> Policy {
    let maybe = |rng: &mut Rng, lo: u64, hi: u64| (rng.below(3) > 0).then(|| lo + rng.below(hi - lo + 1));
    let keep_best = maybe(rng, 1, 3).map(|k| k as usize);
    let metric = (keep_best.is_some() || rng.below(2) == 0).then(|| "loss".to_owned());
    Policy {
        prefix: "run".into(),
        keep_last: maybe(rng, 1, 4).map(|n| n as usize),
        keep_best,
        metric,
        mode: if rng.below(2) == 0 { Mode::Min } else { Mode::Max },
        keep_every_steps: maybe(rng, 2, 5),
    }
}

/// Files in the directory that are not the series': another manager's
/// checkpoint under the same prefix, another prefix's checkpoint, a
/// `.zip` that is no checkpoint (named as one of the series), another.
fn foreign_files(dir: &Path, c: &ModelContainer, rng: &mut Rng) -> BTreeMap<PathBuf, Vec<u8>> {
    let elsewhere = tempfile::tempdir().unwrap();
    let mut other = CheckpointManager::open(elsewhere.path(), Policy::new("run")).unwrap();
    let theirs = other
        .save(c, 5, &UserMetadata::new().with("loss", 0.0).unwrap())
        .unwrap();
    other.close().unwrap();
    let same_prefix = dir.join("run_checkpoint_1.zip");
    std::fs::copy(&theirs, &same_prefix).unwrap();
    let other_prefix = c.save(dir, "other", &UserMetadata::new()).unwrap();
    let noise: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    let fake = dir.join("run_checkpoint_2.zip");
    std::fs::write(&fake, &noise).unwrap();
    let random_zip = dir.join("random.zip");
    std::fs::write(&random_zip, &noise[..1000]).unwrap();
    [same_prefix, other_prefix, fake, random_zip]
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn retention_after_every_save_is_the_pure_function_of_the_committed_list() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut c = linear(3, 2);
    let mut saves = 0;
    for sequence in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        let foreign = foreign_files(dir.path(), &c, &mut rng);
        let policy = random_policy(&mut rng);
        let mut manager = CheckpointManager::open(dir.path(), policy.clone()).unwrap();
        // What the series holds, by file name, as the test computes it.
        let mut committed: Vec<Candidate> = Vec::new();
        let mut pinned: BTreeSet<String> = BTreeSet::new();
        let mut step = 0u64;
        for _ in 0..25 {
            // Steps mostly grow; sometimes repeat (ties by timestamp, name).
            step += rng.below(3);
            let loss = (rng.below(1000) as f64) / 100.0;
            let meta = UserMetadata::new()
                .with("loss", loss)
                .unwrap()
                .with("epoch", rng.below(10))
                .unwrap()
                .with("note", "not a metric")
                .unwrap();
            common::train_step(&mut c);
            let path = match rng.below(2) {
                0 => manager.save(&c, step, &meta).unwrap(),
                _ => {
                    manager.save_async(&c, step, &meta).unwrap();
                    manager.wait().unwrap().expect("a save was in flight")
                }
            };
            saves += 1;
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // Retention may delete the new file at once: with a repeated
            // step and timestamp, "newest" goes by name bytes ("-10" < "-9").
            let timestamp = match Checkpoint::open(&path) {
                Ok(file) => {
                    let record = file.metadata().manager.clone().unwrap();
                    assert_eq!(record.id, manager.id());
                    assert_eq!(record.step, step);
                    file.metadata().timestamp
                }
                Err(_) => {
                    assert!(!path.exists());
                    let stem = name.trim_start_matches("run_checkpoint_").trim_end_matches(".zip");
                    stem.split('-').next().unwrap().parse().unwrap()
                }
            };
            let metrics: Map<String, Value> = [("loss", json!(loss)), ("epoch", meta.as_map()["epoch"].clone())]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            if let Ok(file) = Checkpoint::open(&path) {
                assert_eq!(
                    file.metadata().manager.as_ref().unwrap().metrics,
                    metrics,
                    "only numbers are metrics"
                );
            }
            committed.push(Candidate {
                name: name.clone(),
                step,
                timestamp,
                metrics,
                pinned: false,
            });
            for cand in &mut committed {
                cand.pinned = pinned.contains(&cand.name);
            }
            let rules = retention::decide(&committed, &policy);
            let newest = committed
                .iter()
                .max_by(|a, b| retention::newer(a, b))
                .unwrap()
                .name
                .clone();
            committed = committed
                .into_iter()
                .zip(&rules)
                .filter(|(_, r)| !r.is_empty())
                .map(|(c, _)| c)
                .collect();
            let expected: BTreeSet<String> = committed.iter().map(|c| c.name.clone()).collect();
            let ours: BTreeSet<String> = names_on_disk(dir.path())
                .into_iter()
                .filter(|n| n.starts_with("run_checkpoint_") && !foreign.contains_key(&dir.path().join(n)))
                .collect();
            assert_eq!(ours, expected, "sequence {sequence}, policy {policy:?}");
            assert!(ours.contains(&newest), "the newest checkpoint {newest} was deleted");
            for (path, bytes) in &foreign {
                assert_eq!(&std::fs::read(path).unwrap(), bytes, "{} was touched", path.display());
            }
            // list() reports the same checkpoints with the rules that keep them.
            let listed = manager.list().unwrap();
            let listed_names: BTreeSet<String> = listed
                .iter()
                .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(listed_names, expected);
            assert!(listed
                .windows(2)
                .all(|w| (w[0].step, w[0].timestamp) <= (w[1].step, w[1].timestamp)));
            assert!(listed.last().unwrap().kept_by.contains(&Rule::Latest));
            assert!(listed.iter().all(|i| !i.kept_by.is_empty()));
            assert_eq!(
                manager
                    .latest()
                    .unwrap()
                    .unwrap()
                    .path
                    .file_name()
                    .unwrap()
                    .to_string_lossy(),
                newest
            );
            // Pin or unpin now and then (retention applies at the next save).
            match rng.below(10) {
                0 => {
                    let pick = &listed[rng.index(listed.len())];
                    manager.pin(&pick.path).unwrap();
                    pinned.insert(pick.path.file_name().unwrap().to_string_lossy().into_owned());
                }
                1 if !pinned.is_empty() => {
                    let pick = pinned.iter().nth(rng.index(pinned.len())).unwrap().clone();
                    manager.unpin(&pick).unwrap();
                    pinned.remove(&pick);
                }
                _ => {}
            }
        }
        // The state file holds the pins, and a new manager sees them.
        manager.close().unwrap();
        let reopened = CheckpointManager::open(dir.path(), policy.clone()).unwrap();
        for info in reopened.list().unwrap() {
            let name = info.path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(info.kept_by.contains(&Rule::Pinned), pinned.contains(&name));
        }
    }
    assert_eq!(saves, 12 * 25);
}

#[test]
fn best_follows_the_metric_and_mode_and_a_save_without_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = linear(2, 2);
    let policy = Policy {
        keep_best: Some(2),
        metric: Some("acc".into()),
        mode: Mode::Max,
        ..Policy::new("best")
    };
    let mut m = CheckpointManager::open(dir.path(), policy).unwrap();
    for (step, acc) in [(1u64, 0.5), (2, 0.9), (3, 0.7), (4, 0.9), (5, 0.1)] {
        m.save(&c, step, &UserMetadata::new().with("acc", acc).unwrap())
            .unwrap();
    }
    let steps: Vec<u64> = m.list().unwrap().iter().map(|i| i.step).collect();
    assert_eq!(steps, [2, 4, 5], "the two best (0.9, 0.9) and the latest");
    assert_eq!(m.best().unwrap().unwrap().step, 4, "ties go to the newer");
    let before = names_on_disk(dir.path());
    for bad in [UserMetadata::new(), UserMetadata::new().with("acc", "high").unwrap()] {
        match m.save(&c, 6, &bad) {
            Err(Error::InvalidMetadata { key, .. }) => assert_eq!(key, "acc"),
            other => panic!("expected InvalidMetadata for acc, got {other:?}"),
        }
        assert!(m.save_async(&c, 6, &bad).is_err());
    }
    assert_eq!(names_on_disk(dir.path()), before, "a refused save wrote nothing");
}

#[test]
fn policies_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        Policy::new(""),
        Policy::new(".hidden"),
        Policy::new("a/b"),
        Policy {
            keep_last: Some(0),
            ..Policy::default()
        },
        Policy {
            keep_best: Some(1),
            ..Policy::default()
        },
        Policy {
            keep_every_steps: Some(0),
            ..Policy::default()
        },
    ];
    for policy in bad {
        let err = CheckpointManager::open(dir.path().join("x"), policy.clone()).unwrap_err();
        assert_eq!(err.kind(), "Usage", "{policy:?}: {err}");
    }
    assert!(!dir.path().join("x").exists(), "a refused policy creates nothing");
}

fn flip_byte_in_tensor_data(path: &Path) {
    let file = Checkpoint::open(path).unwrap();
    let entry = file.tensor(pytorch_saver::format::MemberName::Model, "weight").unwrap();
    let at = entry.start as usize;
    drop(file);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn resuming_skips_damaged_checkpoints_and_reports_them() {
    for damage in ["truncate", "flip"] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = linear(4, 3);
        let mut m = CheckpointManager::open(dir.path(), Policy::new("r")).unwrap();
        assert!(
            m.load_latest(&LoadOptions::default()).unwrap().is_none(),
            "nothing to load"
        );
        let mut paths = Vec::new();
        let mut weights = Vec::new();
        for step in 1..=3u64 {
            common::train_step(&mut c);
            weights.push(c.model().unwrap().state_dict()["weight"].copy());
            paths.push(m.save(&c, step, &UserMetadata::new()).unwrap());
        }
        let newest = paths[2].clone();
        match damage {
            "truncate" => {
                let len = std::fs::metadata(&newest).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&newest)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
            _ => flip_byte_in_tensor_data(&newest),
        }
        let loaded = m.load_latest(&LoadOptions::default()).unwrap().unwrap();
        assert_eq!(loaded.path, paths[1], "{damage}");
        assert_eq!(loaded.skipped.len(), 1, "{damage}: {:?}", loaded.skipped);
        assert_eq!(loaded.skipped[0].0, newest);
        let kind = loaded.skipped[0].1.kind();
        let expected = if damage == "flip" { "CrcMismatch" } else { "NoEndRecord" };
        assert_eq!(kind, expected, "{damage}: {}", loaded.skipped[0].1);
        let w = &loaded.container.model().unwrap().state_dict()["weight"];
        assert!(w.equal(&weights[1]));

        let mut target = linear(4, 3);
        let restored = m.restore_latest(&mut target, &LoadOptions::default()).unwrap().unwrap();
        assert_eq!(restored.path, paths[1]);
        assert_eq!(restored.skipped.len(), 1);
        assert!(target.model().unwrap().state_dict()["weight"].equal(&weights[1]));
        // The damaged file is neither deleted by retention nor listed.
        m.save(&c, 4, &UserMetadata::new()).unwrap();
        assert!(newest.exists());
        let listed: Vec<PathBuf> = m.list().unwrap().into_iter().map(|i| i.path).collect();
        assert_eq!(listed.contains(&newest), damage == "flip", "metadata-only listing");
    }
}

#[test]
fn a_background_save_holds_the_state_at_the_call_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    // Large enough that the write is still running during the steps.
    let mut c = linear(1024, 1024);
    for _ in 0..2 {
        common::train_step(&mut c);
    }
    let mut m = CheckpointManager::open(dir.path(), Policy::new("bg")).unwrap();
    for round in 0..3u64 {
        let before: BTreeMap<String, Tensor> = c
            .model()
            .unwrap()
            .state_dict()
            .into_iter()
            .map(|(k, t)| (k, t.copy()))
            .collect();
        // Copies: the optimizer's state tensors change in place.
        let opt_before: BTreeMap<(usize, String), Tensor> = c
            .optimizer()
            .unwrap()
            .state_dict()
            .unwrap()
            .state
            .iter()
            .flat_map(|(i, s)| s.iter().map(move |(k, t)| ((*i, k.clone()), t.copy())))
            .collect();
        m.save_async(&c, round, &UserMetadata::new().with("round", round).unwrap())
            .unwrap();
        for _ in 0..5 {
            common::train_step(&mut c);
        }
        let path = m.wait().unwrap().unwrap();
        assert!(m.wait().unwrap().is_none(), "collected once");
        let mut loaded = ModelContainer::new();
        loaded.load(&path).unwrap();
        let state = loaded.model().unwrap().state_dict();
        for (name, t) in &before {
            assert!(
                state[name].equal(t),
                "round {round}: {name} differs from the value at the call"
            );
            assert!(!c.model().unwrap().state_dict()[name].equal(t), "training moved on");
        }
        let opt_loaded = loaded.optimizer().unwrap().state_dict().unwrap();
        assert!(!opt_before.is_empty());
        for ((i, k), t) in &opt_before {
            assert!(opt_loaded.state[i][k].equal(t), "optimizer state.{i}.{k}");
        }
    }
}

#[test]
fn a_failed_background_save_surfaces_on_wait_and_on_the_next_save() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("series");
    let c = linear(8, 8);
    let mut m = CheckpointManager::open(&dir, Policy::new("f")).unwrap();
    m.save(&c, 0, &UserMetadata::new()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    m.save_async(&c, 1, &UserMetadata::new()).unwrap();
    let err = m.wait().unwrap_err();
    assert_eq!(err.kind(), "Io", "{err}");
    assert!(err.to_string().contains("cannot use directory"), "{err}");
    assert!(!dir.exists(), "a save never creates the directory again");

    m.save_async(&c, 2, &UserMetadata::new()).unwrap();
    let err = m.save(&c, 3, &UserMetadata::new()).unwrap_err();
    assert!(
        err.to_string().contains("cannot use directory"),
        "the uncollected error: {err}"
    );
    assert!(m.wait().unwrap().is_none(), "returned once");
    let err = m.save(&c, 3, &UserMetadata::new()).unwrap_err();
    assert_eq!(err.kind(), "Io", "a synchronous save into the missing directory: {err}");
    assert!(!dir.exists());

    m.save_async(&c, 4, &UserMetadata::new()).unwrap();
    assert!(m.close().is_err(), "close returns an uncollected error");
}

#[test]
fn a_second_manager_of_the_same_series_is_locked_out_until_close() {
    let dir = tempfile::tempdir().unwrap();
    let first = CheckpointManager::open(dir.path(), Policy::new("lk")).unwrap();
    match CheckpointManager::open(dir.path(), Policy::new("lk")) {
        Err(e @ Error::Locked { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&dir.path().display().to_string()) && text.contains("\"lk\""),
                "{text}"
            );
            assert_eq!(e.kind(), "Locked");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let other_prefix = CheckpointManager::open(dir.path(), Policy::new("lk2")).unwrap();
    let id = first.id().to_owned();
    first.close().unwrap();
    let again = CheckpointManager::open(dir.path(), Policy::new("lk")).unwrap();
    assert_eq!(again.id(), id, "the series id is kept in the state file");
    assert_ne!(other_prefix.id(), id);
    drop(again);
    CheckpointManager::open(dir.path(), Policy::new("lk")).unwrap();
}
