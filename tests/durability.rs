//! Saving is atomic and leaves nothing behind on failure, tested with real
//! processes: one killed with SIGKILL in the middle of saves, one whose
//! writes fail (a file-size limit stands in for a full disk).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pytorch_saver::format::Checkpoint;
use pytorch_saver::{models, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::json;

fn mlp(hidden: i64) -> ModelContainer {
    let mut c = ModelContainer::new();
    let kwargs = json!({"in_dim": hidden, "hidden_dim": hidden, "n_classes": 4});
    c.initialize(ContainerSpec::model(models::MLP, kwargs.as_object().unwrap().clone()))
        .unwrap();
    c
}

/// The code the child processes run; without the role variable (a normal
/// test run) it has nothing to do.
#[test]
fn child_process_role() {
    let Some((role, dir)) = common::child_role() else {
        return;
    };
    match role.as_str() {
        "save-forever" => {
            let c = mlp(1024); // ~16 MiB per file
            loop {
                c.save(&dir, "crash", &UserMetadata::new()).unwrap();
            }
        }
        "save-over-limit" => {
            // SAFETY: plain libc calls on this process's own settings.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: 1 << 20,
                    rlim_max: 1 << 20,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            }
            let c = mlp(1024);
            let err = c.save(&dir, "full", &UserMetadata::new()).unwrap_err();
            println!("SAVE-ERROR: {err}");
        }
        other => panic!("unknown role {other}"),
    }
}

fn visible_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn sigkill_during_saves_leaves_complete_files_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let earlier = mlp(16).save(dir.path(), "earlier", &UserMetadata::new()).unwrap();
    let earlier_bytes = std::fs::read(&earlier).unwrap();
    for i in 0..8u64 {
        let mut child = common::spawn_child("save-forever", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kills over start-up, tensor writing, fsync and publish.
        std::thread::sleep(Duration::from_millis(300 + i * 97));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let files = visible_files(dir.path());
    assert!(
        files.len() > 1,
        "the children saved something before being killed: {files:?}"
    );
    for f in &files {
        Checkpoint::open(f).unwrap_or_else(|e| panic!("{} is not a complete checkpoint: {e}", f.display()));
    }
    assert_eq!(
        std::fs::read(&earlier).unwrap(),
        earlier_bytes,
        "an earlier checkpoint was touched"
    );
    // What a kill can leave is a hidden temporary file, never a final name.
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let final_name = !name.starts_with('.') && name.ends_with(".zip");
        let temp_name = name.starts_with('.') && name.ends_with(".tmp");
        assert!(final_name || temp_name, "unexpected file {name}");
    }
}

#[test]
fn a_save_whose_writes_fail_reports_why_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::spawn_child("save-over-limit", dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("SAVE-ERROR: ").map(|(_, e)| e))
        .expect("the child reported its error");
    assert!(
        line.contains("cannot write") && line.contains("File too large"),
        "{line}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed save left {left:?}");
}
