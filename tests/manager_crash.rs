//! The checkpoint manager with real processes: a child saving in a loop
//! (synchronously or in the background) is killed with SIGKILL at many
//! points, and a fresh manager always resumes; the lock keeps a second
//! process out and dies with its holder; a background save whose writes
//! fail (a file-size limit stands in for a full disk) reports it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::Rng;
use pytorch_saver::format::Checkpoint;
use pytorch_saver::manager::{CheckpointManager, Policy};
use pytorch_saver::{models, ContainerSpec, Error, LoadOptions, ModelContainer, UserMetadata};
use serde_json::json;

const PREFIX: &str = "crash";

fn mlp(hidden: i64) -> ModelContainer {
    let mut c = ModelContainer::new();
    let kwargs = json!({"in_dim": hidden, "hidden_dim": hidden, "n_classes": 4});
    c.initialize(ContainerSpec::model(models::MLP, kwargs.as_object().unwrap().clone()))
        .unwrap();
    c
}

fn policy() -> Policy {
    Policy {
        keep_last: Some(2),
        ..Policy::new(PREFIX)
    }
}

/// The code the child processes run; without the role variable (a normal
/// test run) it has nothing to do.
#[test]
fn child_process_role() {
    let Some((role, dir)) = common::child_role() else {
        return;
    };
    match role.as_str() {
        "save-loop" | "save-loop-async" => {
            let c = mlp(256);
            let mut m = CheckpointManager::open(&dir, policy()).unwrap();
            let start = m.latest().unwrap().map_or(0, |i| i.step + 1);
            for step in start.. {
                let meta = UserMetadata::new().with("loss", 1.0 / (step + 1) as f64).unwrap();
                match role.as_str() {
                    "save-loop" => drop(m.save(&c, step, &meta).unwrap()),
                    _ => m.save_async(&c, step, &meta).unwrap(),
                }
            }
        }
        "hold-lock" => {
            let _m = CheckpointManager::open(&dir, policy()).unwrap();
            println!("HOLDING");
            std::thread::sleep(Duration::from_secs(600));
        }
        "try-lock" => match CheckpointManager::open(&dir, policy()) {
            Err(e) => println!("LOCK-ERROR: {}: {e}", e.kind()),
            Ok(_) => println!("LOCK-TAKEN"),
        },
        "async-over-limit" => {
            // SAFETY: plain libc calls on this process's own settings.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: 1 << 20,
                    rlim_max: 1 << 20,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            }
            let c = mlp(1024); // ~16 MiB
            let mut m = CheckpointManager::open(&dir, policy()).unwrap();
            m.save_async(&c, 1, &UserMetadata::new()).unwrap();
            let err = m.wait().unwrap_err();
            println!("WAIT-ERROR: {}: {err}", err.kind());
            m.save_async(&c, 2, &UserMetadata::new()).unwrap();
            let err = m.save(&mlp(4), 3, &UserMetadata::new()).unwrap_err();
            println!("NEXT-SAVE-ERROR: {}: {err}", err.kind());
        }
        other => panic!("unknown role {other}"),
    }
}

fn series_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with('.') && name.ends_with(".zip")
        })
        .collect();
    v.sort();
    v
}

fn kill_during_saves(role: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed);
    let mut resumed = 0;
    for i in 0..16 {
        let mut child = common::spawn_child(role, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Random points over start-up, snapshot, writing, fsync, publish
        // and retention.
        std::thread::sleep(Duration::from_millis(150 + rng.below(900)));
        child.kill().unwrap();
        child.wait().unwrap();

        let files = series_files(dir.path());
        for f in &files {
            Checkpoint::open(f).unwrap_or_else(|e| panic!("{role} kill {i}: {} is partial: {e}", f.display()));
        }
        // A fresh manager: the lock died with the child.
        let m = CheckpointManager::open(dir.path(), policy()).unwrap();
        let listed = m.list().unwrap();
        assert_eq!(
            listed.len(),
            files.len(),
            "{role} kill {i}: every visible file is the series'"
        );
        assert!(
            listed.len() <= 3,
            "{role} kill {i}: keep_last=2 plus at most one saved before retention ran: {files:?}"
        );
        match m.load_latest(&LoadOptions::default()).unwrap() {
            Some(loaded) => {
                assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
                assert_eq!(loaded.path, listed.last().unwrap().path);
                resumed += 1;
            }
            None => assert!(files.is_empty(), "{role} kill {i}: checkpoints exist but none loaded"),
        }
    }
    assert!(
        resumed >= 8,
        "{role}: the children committed checkpoints before most kills ({resumed} of 16)"
    );
    // Retention converges at the next save.
    let mut m = CheckpointManager::open(dir.path(), policy()).unwrap();
    let step = m.latest().unwrap().map_or(0, |i| i.step + 1);
    m.save(&mlp(256), step, &UserMetadata::new()).unwrap();
    assert_eq!(m.list().unwrap().len(), 2);
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".zip") || name.ends_with(".tmp") || name == ".crash.lock" || name == ".crash.manager.json"
        }),
        "only checkpoints, the manager's files and a killed writer's hidden temporary files"
    );
}

#[test]
fn sigkill_during_synchronous_saves_always_resumes() {
    kill_during_saves("save-loop", 0x00c0_ffee_0000_0001);
}

#[test]
fn sigkill_during_background_saves_always_resumes() {
    kill_during_saves("save-loop-async", 0x00c0_ffee_0000_0002);
}

fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

#[test]
fn the_lock_keeps_other_processes_out_and_dies_with_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = common::spawn_child("hold-lock", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The test harness prints its own lines first.
    let mut line = first_line(&mut holder);
    while !line.contains("HOLDING") && !line.is_empty() {
        line = first_line(&mut holder);
    }
    assert!(line.contains("HOLDING"), "{line}");
    match CheckpointManager::open(dir.path(), policy()) {
        Err(Error::Locked { dir: d, prefix, .. }) => {
            assert_eq!(d, dir.path());
            assert_eq!(prefix, PREFIX);
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let out = common::spawn_child("try-lock", dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("LOCK-ERROR: Locked: "), "{stdout}");
    assert!(stdout.contains(&dir.path().display().to_string()), "{stdout}");

    holder.kill().unwrap();
    holder.wait().unwrap();
    let m = CheckpointManager::open(dir.path(), policy()).expect("a killed holder releases the lock");
    let out = common::spawn_child("try-lock", dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("LOCK-ERROR: Locked"));
    m.close().unwrap();
    let out = common::spawn_child("try-lock", dir.path()).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("LOCK-TAKEN"),
        "after close"
    );
}

#[test]
fn a_background_save_whose_writes_fail_reports_it_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::spawn_child("async-over-limit", dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = |tag: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(tag).map(|(_, e)| e.to_owned()))
            .unwrap_or_else(|| panic!("no {tag} in {stdout}"))
    };
    for tag in ["WAIT-ERROR: ", "NEXT-SAVE-ERROR: "] {
        let err = line(tag);
        assert!(
            err.starts_with("Io: ") && err.contains("cannot write") && err.contains("File too large"),
            "{tag}{err}"
        );
    }
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "a failed save left {left:?}");
}
