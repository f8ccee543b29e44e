//! The checkpoint manager on an object store (FORMAT.md 12.6) against a
//! real S3 API server (moto's, on a loopback port; tests/common/s3.rs):
//! retention deletes objects, the lock object keeps a second manager out
//! and is taken over once stale, latest/best/pins, resuming skips a
//! corrupt object, and `pytorch-saver ls` lists a series at a URL. The
//! objects are checked through boto3, not through the library.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::bytes_of;
use common::s3::{list_keys, moto, prefix, BUCKET};
use pytorch_saver::format::{LazyCheckpoint, MemberName};
use pytorch_saver::manager::{list_series, series_prefixes, CheckpointManager, ManagerOptions, Mode, Policy, Rule};
use pytorch_saver::optim::ADAM;
use pytorch_saver::{models, ContainerSpec, Error, LoadOptions, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};

fn linear() -> ModelContainer {
    let mut c = ModelContainer::new();
    let kw = json!({"in_features": 4, "out_features": 3});
    c.initialize(ContainerSpec::model(models::LINEAR, kw.as_object().unwrap().clone()).optimizer(ADAM, Map::new()))
        .unwrap();
    c
}

fn loss(v: f64) -> UserMetadata {
    UserMetadata::new().with("loss", v).unwrap()
}

/// Runs `script` with `c` a boto3 client of the test server and `B` the
/// bucket, the arguments in `sys.argv[1:]`; its stdout.
fn boto(script: &str, args: &[&str]) -> String {
    let prelude = "import boto3,sys,json\n\
         c=boto3.client('s3',endpoint_url=sys.argv[1],aws_access_key_id='testing',aws_secret_access_key='testing',region_name='us-east-1')\n\
         B=sys.argv[2]\n\
         sys.argv=sys.argv[2:]\n";
    let out = Command::new(common::python())
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .args([moto().endpoint.as_str(), BUCKET])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Writes `bytes` as object `key` (unconditionally).
fn put_object(key: &str, bytes: &[u8]) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    boto(
        "c.put_object(Bucket=B,Key=sys.argv[1],Body=bytes.fromhex(sys.argv[2]))",
        &[key, &hex],
    );
}

/// The bytes of object `key`, or `None` when there is none.
fn get_object(key: &str) -> Option<Vec<u8>> {
    let hex = boto(
        "try:\n    print(c.get_object(Bucket=B,Key=sys.argv[1])['Body'].read().hex())\n\
         except c.exceptions.NoSuchKey:\n    print('-')",
        &[key],
    );
    let hex = hex.trim();
    (hex != "-").then(|| {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    })
}

fn lock_of(key: &str) -> Value {
    serde_json::from_slice(&get_object(key).expect("a lock object")).unwrap()
}

fn keys(test: &str) -> BTreeSet<String> {
    list_keys(&moto().endpoint, &format!("{test}/"))
        .into_iter()
        .map(|k| k.trim_start_matches(&format!("{test}/")).to_owned())
        .collect()
}

fn key_of(url: &std::path::Path) -> String {
    url.to_str()
        .unwrap()
        .trim_start_matches(&format!("s3://{BUCKET}/"))
        .to_owned()
}

fn file_name(url: &std::path::Path) -> String {
    url.file_name().unwrap().to_str().unwrap().to_owned()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn retention_deletes_objects_and_the_lock_object_lives_while_the_manager_is_open() {
    let test = "mgr_retention";
    let url = prefix(test);
    let policy = Policy {
        keep_last: Some(2),
        ..Policy::new("run")
    };
    let mut c = linear();
    let mut m = CheckpointManager::open(&url, policy.clone()).unwrap();
    assert_eq!(m.directory().to_str(), Some(url.as_str()));
    assert_eq!(
        keys(test),
        BTreeSet::from([".run.lock".into(), ".run.manager.json".into()])
    );
    let lock = lock_of(&format!("{test}/.run.lock"));
    let owner = lock["owner"].as_str().unwrap();
    let parts: Vec<&str> = owner.split(':').collect();
    assert_eq!(parts.len(), 3, "{owner}");
    assert_eq!(parts[1], std::process::id().to_string());
    assert!(
        parts[2].len() == 32 && parts[2].bytes().all(|b| b.is_ascii_hexdigit()),
        "{owner}"
    );
    assert_eq!(lock["lease_seconds"], json!(900));
    assert!(lock["timestamp"].as_i64().unwrap() > 0);
    let state: Value = serde_json::from_slice(&get_object(&format!("{test}/.run.manager.json")).unwrap()).unwrap();
    assert_eq!(state["id"], json!(m.id()));
    assert_eq!(state["pinned"], json!([]));

    let mut saved = Vec::new();
    for step in 1..=2u64 {
        common::train_step(&mut c);
        saved.push(m.save(&c, step, &loss(1.0 / step as f64)).unwrap());
    }
    // In the background too: the thread deletes as the foreground does.
    for step in 3..=4u64 {
        common::train_step(&mut c);
        m.save_async(&c, step, &loss(1.0 / step as f64)).unwrap();
        saved.push(m.wait().unwrap().expect("a save was in flight"));
    }
    for url in &saved {
        assert!(url
            .to_str()
            .unwrap()
            .starts_with(&format!("{}/run_checkpoint_", prefix(test))));
    }
    let kept: BTreeSet<String> = saved[2..].iter().map(|p| file_name(p)).collect();
    let mut expected = kept.clone();
    expected.extend([".run.lock".to_owned(), ".run.manager.json".to_owned()]);
    assert_eq!(keys(test), expected, "exactly the two newest, the state and the lock");

    let listed = m.list().unwrap();
    assert_eq!(listed.iter().map(|i| i.step).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(listed[1].kept_by, [Rule::Latest, Rule::Last]);
    assert_eq!(listed[1].path, saved[3]);
    assert_eq!(
        listed,
        list_series(&url, &policy).unwrap(),
        "the lock-free listing agrees"
    );

    m.close().unwrap();
    let mut expected = kept;
    expected.insert(".run.manager.json".to_owned());
    assert_eq!(keys(test), expected, "close deleted the lock object, nothing else");

    // A later manager reuses the series' id.
    let again = CheckpointManager::open(&url, policy).unwrap();
    assert_eq!(again.id(), state["id"].as_str().unwrap());
    assert_eq!(again.latest().unwrap().unwrap().step, 4);
    drop(again);
    assert!(
        !keys(test).contains(".run.lock"),
        "dropping a manager deletes its lock too"
    );
}

#[test]
fn latest_best_and_pins_on_s3() {
    let test = "mgr_best";
    let url = prefix(test);
    let policy = Policy {
        keep_last: Some(1),
        keep_best: Some(1),
        metric: Some("loss".into()),
        mode: Mode::Min,
        ..Policy::new("run")
    };
    let c = linear();
    let mut m = CheckpointManager::open(&url, policy.clone()).unwrap();
    assert!(m.latest().unwrap().is_none());
    assert!(m.best().unwrap().is_none());
    let mut saved = Vec::new();
    for (step, l) in [(1u64, 0.9), (2, 0.2), (3, 0.5)] {
        saved.push(m.save(&c, step, &loss(l)).unwrap());
    }
    // 1 fell to retention; 2 is the best, 3 the latest.
    assert_eq!(m.latest().unwrap().unwrap().path, saved[2]);
    let best = m.best().unwrap().unwrap();
    assert_eq!((best.step, best.path.clone()), (2, saved[1].clone()));
    assert_eq!(best.kept_by, [Rule::Best]);

    m.pin(&saved[2]).unwrap();
    let state: Value = serde_json::from_slice(&get_object(&format!("{test}/.run.manager.json")).unwrap()).unwrap();
    assert_eq!(state["pinned"], json!([file_name(&saved[2])]));
    m.save(&c, 4, &loss(0.7)).unwrap();
    let steps: Vec<u64> = m.list().unwrap().iter().map(|i| i.step).collect();
    assert_eq!(steps, [2, 3, 4], "the pinned one stays");
    let err = m.pin(format!("{url}/run_checkpoint_1.zip")).unwrap_err();
    assert_eq!(err.kind(), "Usage", "{err}");
    m.unpin(&saved[2]).unwrap();
    let state: Value = serde_json::from_slice(&get_object(&format!("{test}/.run.manager.json")).unwrap()).unwrap();
    assert_eq!(state["pinned"], json!([]));
    m.close().unwrap();

    // The list as a new manager of the series reads it.
    let m = CheckpointManager::open(&url, policy.clone()).unwrap();
    assert_eq!(m.list().unwrap(), list_series(&url, &policy).unwrap());
    m.close().unwrap();
}

#[test]
fn load_latest_skips_corrupt_objects_and_loads_the_previous_step_bit_for_bit() {
    let test = "mgr_resume";
    let url = prefix(test);
    let mut c = linear();
    let mut m = CheckpointManager::open(&url, Policy::new("run")).unwrap();
    common::train_step(&mut c);
    m.save(&c, 1, &loss(0.5)).unwrap();
    common::train_step(&mut c);
    let good = m.save(&c, 2, &loss(0.4)).unwrap();
    let expected: Vec<(String, Vec<u8>)> = c
        .model()
        .unwrap()
        .state_dict()
        .iter()
        .map(|(k, t)| (k.clone(), bytes_of(t)))
        .collect();

    // The same checkpoint with one byte of a tensor flipped, under a name
    // of the series that sorts newer (collision number 9): its metadata
    // lists it as the latest; only a full, verified read finds it bad.
    let mut bytes = get_object(&key_of(&good)).unwrap();
    let lazy = LazyCheckpoint::open(&good).unwrap();
    let offset = lazy.tensors(MemberName::Model)[0].start as usize;
    bytes[offset] ^= 0x40;
    let stem = file_name(&good).trim_end_matches(".zip").to_owned();
    let flipped = format!("{url}/{}-9.zip", stem.split('-').next().unwrap());
    put_object(&key_of(std::path::Path::new(&flipped)), &bytes);
    // Garbage under a newer name of the series: not even listed.
    let garbage = format!("{url}/run_checkpoint_{}.zip", now() + 1000);
    put_object(&key_of(std::path::Path::new(&garbage)), b"not a checkpoint at all");

    assert_eq!(m.latest().unwrap().unwrap().path.to_str(), Some(flipped.as_str()));
    let loaded = m
        .load_latest(&LoadOptions::default())
        .unwrap()
        .expect("a checkpoint loads");
    assert_eq!(loaded.path, good);
    assert_eq!(loaded.metadata["loss"], json!(0.4));
    let skipped: Vec<(String, &str)> = loaded
        .skipped
        .iter()
        .map(|(p, e)| (p.to_str().unwrap().to_owned(), e.kind()))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.contains(&(flipped.clone(), "CrcMismatch")), "{skipped:?}");
    assert!(skipped.iter().any(|(p, _)| *p == garbage), "{skipped:?}");
    let got = loaded.container.model().unwrap().state_dict();
    for (name, bytes) in &expected {
        assert_eq!(&bytes_of(&got[name]), bytes, "{name}");
    }

    // Into existing objects too.
    let mut target = linear();
    let restored = m.restore_latest(&mut target, &LoadOptions::default()).unwrap().unwrap();
    assert_eq!(restored.path, good);
    let got = target.model().unwrap().state_dict();
    for (name, bytes) in &expected {
        assert_eq!(&bytes_of(&got[name]), bytes, "{name}");
    }
    m.close().unwrap();
    // Neither bad object was deleted: the manager deletes only what
    // retention decides, of the series' readable checkpoints.
    let now_keys = keys(test);
    assert!(now_keys.contains(flipped.rsplit('/').next().unwrap()), "{now_keys:?}");
    assert!(now_keys.contains(garbage.rsplit('/').next().unwrap()), "{now_keys:?}");
}

#[test]
fn a_second_manager_is_locked_out_and_a_stale_lock_is_taken_over() {
    let test = "mgr_lock";
    let url = prefix(test);
    let lock_key = format!("{test}/.run.lock");
    let first = CheckpointManager::open(&url, Policy::new("run")).unwrap();
    let owner = lock_of(&lock_key)["owner"].as_str().unwrap().to_owned();
    match CheckpointManager::open(&url, Policy::new("run")) {
        Err(e @ Error::Locked { .. }) => {
            assert_eq!(e.kind(), "Locked");
            let text = e.to_string();
            assert!(
                text.contains(&url) && text.contains("\"run\"") && text.contains(&owner),
                "{text}"
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // Another prefix is another series, with a lock of its own.
    CheckpointManager::open(&url, Policy::new("other"))
        .unwrap()
        .close()
        .unwrap();
    first.close().unwrap();
    assert!(get_object(&lock_key).is_none());

    // A lock whose lease is still running, from another host.
    let fresh = json!({"owner": "elsewhere:1:00ff", "timestamp": now(), "lease_seconds": 900});
    put_object(&lock_key, fresh.to_string().as_bytes());
    let err = CheckpointManager::open(&url, Policy::new("run")).unwrap_err();
    assert!(
        matches!(err, Error::Locked { .. }) && err.to_string().contains("elsewhere:1:00ff"),
        "{err}"
    );
    assert_eq!(lock_of(&lock_key), fresh, "a live lock is left as it is");

    // A stale one (written at time 0) is taken over.
    let stale = json!({"owner": "elsewhere:1:00ff", "timestamp": 0, "lease_seconds": 900});
    put_object(&lock_key, stale.to_string().as_bytes());
    let options = ManagerOptions { lock_lease_seconds: 5 };
    let taken = CheckpointManager::open_with(&url, Policy::new("run"), options).unwrap();
    let now_held = lock_of(&lock_key);
    assert_ne!(now_held["owner"], json!("elsewhere:1:00ff"));
    assert!(now_held["timestamp"].as_i64().unwrap() > 0);
    assert_eq!(now_held["lease_seconds"], json!(5));
    taken.close().unwrap();
    assert!(get_object(&lock_key).is_none());

    // Something that is not a lock is never taken over.
    put_object(&lock_key, b"{}");
    let err = CheckpointManager::open(&url, Policy::new("run")).unwrap_err();
    assert_eq!(err.kind(), "Locked", "{err}");

    let err =
        CheckpointManager::open_with(&url, Policy::new("x"), ManagerOptions { lock_lease_seconds: 0 }).unwrap_err();
    assert_eq!(err.kind(), "Usage", "{err}");
}

#[test]
fn a_lost_lock_fails_the_next_save_before_anything_is_uploaded() {
    let test = "mgr_lost";
    let url = prefix(test);
    let lock_key = format!("{test}/.run.lock");
    let c = linear();
    let mut m = CheckpointManager::open(&url, Policy::new("run")).unwrap();
    m.save(&c, 1, &loss(0.5)).unwrap();
    let before = keys(test);
    // Another manager took the lock over (as it does once the lease ran out).
    let thief = json!({"owner": "elsewhere:2:beef", "timestamp": now(), "lease_seconds": 900});
    put_object(&lock_key, thief.to_string().as_bytes());
    let err = m.save(&c, 2, &loss(0.4)).unwrap_err();
    assert!(
        matches!(err, Error::Locked { .. }) && err.to_string().contains("elsewhere:2:beef"),
        "{err}"
    );
    let err = m.save_async(&c, 2, &loss(0.4)).unwrap_err();
    assert_eq!(err.kind(), "Locked", "{err}");
    assert_eq!(keys(test), before, "nothing uploaded");
    m.close().unwrap();
    assert_eq!(lock_of(&lock_key), thief, "the new holder's lock is left alone");
}

#[test]
fn ls_lists_a_series_at_a_url_while_its_manager_holds_it() {
    let test = "mgr_ls";
    let url = prefix(test);
    let c = linear();
    let mut m = CheckpointManager::open(
        &url,
        Policy {
            keep_last: Some(2),
            ..Policy::new("run")
        },
    )
    .unwrap();
    let saved: Vec<_> = (1..=3u64).map(|s| m.save(&c, s, &loss(s as f64)).unwrap()).collect();
    assert_eq!(series_prefixes(&url).unwrap(), ["run"]);

    let out = Command::new(env!("CARGO_BIN_EXE_pytorch-saver"))
        .args(["ls", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        table.contains(&format!("series run in {url} (id {}): 2 checkpoints", m.id())),
        "{table}"
    );
    for p in &saved[1..] {
        assert!(table.contains(&file_name(p)), "{table}");
    }
    assert!(!table.contains(&file_name(&saved[0])), "{table}");

    let out = Command::new(env!("CARGO_BIN_EXE_pytorch-saver"))
        .args(["ls", &url, "--keep-last", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = doc["series"][0]["checkpoints"].as_array().unwrap();
    let steps: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 3]);
    assert_eq!(rows[0]["kept_by"], json!([]), "--keep-last 1 would delete step 2");
    assert_eq!(rows[1]["path"], json!(saved[2].to_str().unwrap()));
    let size = get_object(&key_of(&saved[2])).unwrap().len() as u64;
    assert_eq!(rows[1]["size"], json!(size));
    // ls took no lock and wrote nothing.
    assert!(keys(test).contains(".run.lock"));
    m.close().unwrap();
}

#[test]
fn python_and_rust_managers_share_one_series_on_s3() {
    let test = "mgr_interop";
    let url = prefix(test);
    let spec = |saves: &[u64]| json!({"dir": url, "prefix": "run", "keep_last": 2, "saves": saves});
    let steps = |v: &Value| -> Vec<u64> {
        v["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["step"].as_u64().unwrap())
            .collect()
    };
    let policy = Policy {
        keep_last: Some(2),
        ..Policy::new("run")
    };

    // Python starts the series: steps 1, 2, 3 with keep_last=2 leave 2 and 3.
    let py = common::run_python("manager_series_s3.py", &spec(&[1, 2, 3]));
    assert_eq!(steps(&py), [2, 3]);
    assert!(!keys(test).contains(".run.lock"), "Python's close deleted its lock");

    // Rust opens it: the same id and checkpoints; Python is locked out
    // while Rust holds it, by Rust's lock object.
    let mut m = CheckpointManager::open(&url, policy).unwrap();
    assert_eq!(m.id(), py["id"].as_str().unwrap());
    assert_eq!(m.list().unwrap().iter().map(|i| i.step).collect::<Vec<_>>(), [2, 3]);
    let loaded = m.load_latest(&LoadOptions::default()).unwrap().unwrap();
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    assert_eq!(loaded.metadata["loss"], json!(0.25));
    let locked = common::run_python("manager_series_s3.py", &spec(&[9]));
    assert!(locked["locked"].is_string(), "{locked}");

    // Rust continues it: step 4 deletes Python's step 2.
    m.save(&linear(), 4, &loss(0.2)).unwrap();
    m.close().unwrap();

    // Python sees Rust's step 4 as its newest, and step 5 deletes step 3.
    let py2 = common::run_python("manager_series_s3.py", &spec(&[5]));
    assert_eq!(py2["id"], py["id"]);
    assert_eq!(steps(&py2), [4, 5]);
    assert_eq!(py2["loaded_loss"], json!(1.0 / 6.0));
}
