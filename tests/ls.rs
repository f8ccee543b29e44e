//! `pytorch-saver ls` on a real checkpoint manager's directory, among
//! foreign files, while the manager is open and holds the series' lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use pytorch_saver::manager::{list_series, series_prefixes, CheckpointManager, Mode, Policy, Rule};
use pytorch_saver::{models, ContainerSpec, Error, ModelContainer, UserMetadata};
use serde_json::{json, Value};

fn ls(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pytorch-saver"))
        .arg("ls")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn mlp() -> ModelContainer {
    let mut c = ModelContainer::new();
    let kw = json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3});
    c.initialize(ContainerSpec::model(models::MLP, kw.as_object().unwrap().clone()))
        .unwrap();
    c
}

fn loss(v: f64) -> UserMetadata {
    UserMetadata::new()
        .with("loss", v)
        .unwrap()
        .with("note", "not a metric")
        .unwrap()
}

/// Every file of the directory with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.len(), m.modified().unwrap()),
            )
        })
        .collect()
}

/// Foreign files: a plain save under another prefix, a random `x.zip`,
/// a checkpoint of another series named as one of `run`'s, and a
/// `run_checkpoint_2.zip` that is no ZIP. Returns the last one.
fn add_foreign_files(dir: &Path, c: &ModelContainer) -> PathBuf {
    c.save(dir, "other", &loss(0.0)).unwrap();
    std::fs::write(dir.join("x.zip"), b"PK\x03\x04 not really").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut stranger = CheckpointManager::open(elsewhere.path(), Policy::new("run")).unwrap();
    let theirs = stranger.save(c, 99, &loss(0.01)).unwrap();
    stranger.close().unwrap();
    std::fs::copy(theirs, dir.join("run_checkpoint_1.zip")).unwrap();
    let fake = dir.join("run_checkpoint_2.zip");
    std::fs::write(&fake, vec![0x5a; 4096]).unwrap();
    fake
}

#[test]
fn ls_lists_the_kept_checkpoints_while_the_manager_holds_the_series() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let c = mlp();
    let policy = Policy {
        keep_last: Some(2),
        keep_best: Some(1),
        metric: Some("loss".into()),
        mode: Mode::Min,
        ..Policy::new("run")
    };
    let mut manager = CheckpointManager::open(dir, policy.clone()).unwrap();
    let losses = [0.9, 0.3, 0.5, 0.7, 0.6, 0.8];
    let mut paths = BTreeMap::new();
    for (i, l) in losses.iter().enumerate() {
        let step = 10 * i as u64;
        paths.insert(step, manager.save(&c, step, &loss(*l)).unwrap());
    }
    // Kept: the best (step 10, loss 0.3) and the two newest (40, 50).
    let kept = [10u64, 40, 50];
    let unreadable = add_foreign_files(dir, &c);
    let mut before = snapshot(dir);

    // The manager is open: ls takes no lock.
    let out = ls(dir, &[]);
    let table = text(&out.stdout);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{table}\n{err}");
    assert!(err.contains(unreadable.to_str().unwrap()), "{err}");
    assert!(!table.contains("run_checkpoint_2.zip"), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("_checkpoint_")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(table.starts_with("series run in "), "{table}");
    assert!(!table.contains("series other"), "{table}");
    for (row, step) in rows.iter().zip(kept) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], step.to_string(), "{row}");
        assert!(cells[1].ends_with('Z') && cells[1].contains('T'), "{row}");
        assert!(row.contains(&format!("loss={}", losses[step as usize / 10])), "{row}");
        assert!(!row.contains("note="), "{row}");
        assert!(row.contains(" KiB "), "{row}");
        assert!(
            row.ends_with(paths[&step].file_name().unwrap().to_str().unwrap()),
            "{row}"
        );
    }
    assert!(rows[2].contains("latest,all"), "{}", rows[2]);
    assert!(rows[0].contains(" all "), "{}", rows[0]);

    assert_eq!(snapshot(dir), before, "ls wrote nothing");

    // JSON, under the manager's own policy, with a pin.
    manager.pin(&paths[&40]).unwrap();
    before = snapshot(dir);
    let args = [
        "--json",
        "--keep-last",
        "2",
        "--keep-best",
        "1",
        "--metric",
        "loss",
        "--mode",
        "min",
    ];
    let out = ls(dir, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("run_checkpoint_2.zip"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"]["keep_last"], 2);
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["prefix"], "run");
    assert_eq!(series[0]["id"], manager.id());
    let listed = series[0]["checkpoints"].as_array().unwrap();
    let steps: Vec<u64> = listed.iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, kept);
    let rules: Vec<Value> = listed.iter().map(|c| c["kept_by"].clone()).collect();
    assert_eq!(
        rules,
        [json!(["best"]), json!(["pinned", "last"]), json!(["latest", "last"])]
    );
    for c in listed {
        let step = c["step"].as_u64().unwrap();
        let path = &paths[&step];
        assert_eq!(c["path"], path.to_str().unwrap());
        assert_eq!(c["file"], path.file_name().unwrap().to_str().unwrap());
        assert_eq!(c["size"].as_u64().unwrap(), std::fs::metadata(path).unwrap().len());
        assert_eq!(c["metrics"], json!({"loss": losses[step as usize / 10]}));
        assert_eq!(c["time"].as_str().unwrap().len(), "2024-01-01T00:00:00Z".len());
        assert!(c["timestamp"].as_u64().unwrap() > 1_700_000_000);
    }

    // A stricter policy marks what it would delete.
    let out = ls(dir, &["--keep-last", "1", "--prefix", "run"]);
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("_checkpoint_")).collect();
    let kept_by: Vec<&str> = rows.iter().map(|r| r.split_whitespace().nth(5).unwrap()).collect();
    assert_eq!(kept_by, ["-", "pinned", "latest,last"], "{table}");

    // ls changed nothing and left the lock to the manager.
    assert_eq!(snapshot(dir), before, "ls wrote nothing");
    assert!(matches!(
        CheckpointManager::open(dir, policy.clone()),
        Err(Error::Locked { .. })
    ));
    let infos = list_series(dir, &policy).unwrap();
    assert_eq!(infos.iter().map(|i| i.step).collect::<Vec<_>>(), kept);
    assert_eq!(infos[2].kept_by, [Rule::Latest, Rule::Last]);
    assert_eq!(infos, manager.list().unwrap());
    assert_eq!(series_prefixes(dir).unwrap(), ["run"]);
    assert_eq!(snapshot(dir), before, "list_series wrote nothing");
    manager.close().unwrap();
}

#[test]
fn ls_finds_every_series_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let c = mlp();
    for prefix in ["beta", "alpha"] {
        let mut m = CheckpointManager::open(dir, Policy::new(prefix)).unwrap();
        m.save(&c, 1, &loss(0.5)).unwrap();
        m.save(&c, 2, &loss(0.4)).unwrap();
        m.close().unwrap();
    }
    let out = ls(dir, &["--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let prefixes: Vec<&str> = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["alpha", "beta"]);
    for s in v["series"].as_array().unwrap() {
        let rules: Vec<Value> = s["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kept_by"].clone())
            .collect();
        assert_eq!(rules, [json!(["all"]), json!(["latest", "all"])]);
    }

    let out = ls(dir, &["--prefix", "gamma"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no checkpoint series with prefix \"gamma\""));
    let out = ls(dir, &["--keep-best", "1"]);
    assert_eq!(out.status.code(), Some(2), "--keep-best needs --metric");
    let out = ls(dir, &["--keep-last", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = ls(&dir.join("missing"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing"));
    assert!(matches!(list_series(dir, &Policy::new("gamma")), Err(Error::Usage(_))));
}
