//! How long a checkpoint manager's background save blocks the training
//! loop, against a synchronous save, for a 1 GiB model on the real disk
//! (files fsynced):
//!
//!     cargo bench --bench manager_async [-- --runs N] [-- --dir DIR]
//!
//! The background save copies the tensors into the manager's snapshot
//! buffer and returns; the first one allocates the buffer (its pages are
//! touched once), later ones reuse it, and those are timed. Target: the
//! blocking time at most 0.2x the synchronous save's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pytorch_saver::manager::{CheckpointManager, Policy};
use pytorch_saver::{models, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::json;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let runs: usize = arg("--runs").map_or(5, |r| r.parse().expect("--runs N"));
    let dir = arg("--dir").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/manager_async"),
        PathBuf::from,
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // MLP(8192, 8192, 8192, n_layers=3): four 8192x8192 f32 weights, 1 GiB.
    let mut c = ModelContainer::new();
    let kwargs = json!({"in_dim": 8192, "hidden_dim": 8192, "n_classes": 8192, "n_layers": 3});
    c.initialize(ContainerSpec::model(models::MLP, kwargs.as_object().unwrap().clone()))
        .unwrap();
    let policy = Policy {
        keep_last: Some(2),
        ..Policy::new("bench")
    };
    let mut m = CheckpointManager::open(&dir, policy).unwrap();
    let meta = UserMetadata::new();
    let mut step = 0u64;

    let mut sync = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        m.save(&c, step, &meta).unwrap();
        sync.push(t.elapsed());
        step += 1;
    }

    // The first background save allocates the snapshot buffer.
    let t = Instant::now();
    m.save_async(&c, step, &meta).unwrap();
    let first = t.elapsed();
    m.wait().unwrap();
    step += 1;
    let mut blocked = Vec::new();
    let mut total = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        m.save_async(&c, step, &meta).unwrap();
        blocked.push(t.elapsed());
        m.wait().unwrap().unwrap();
        total.push(t.elapsed());
        step += 1;
    }
    m.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let (sync, blocked, total) = (median(sync), median(blocked), median(total));
    println!("1 GiB model, {runs} runs each, fsync on, {}", dir.display());
    println!(
        "synchronous save (write, fsync, retention)    median {:>8.1} ms",
        sync.as_secs_f64() * 1e3
    );
    println!(
        "save_async, first call (allocates the buffer)        {:>8.1} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "save_async, time the caller is blocked         median {:>8.1} ms",
        blocked.as_secs_f64() * 1e3
    );
    println!(
        "save_async + wait (whole background save)      median {:>8.1} ms",
        total.as_secs_f64() * 1e3
    );
    println!(
        "blocking / synchronous: {:.3}x (target <= 0.2x)",
        blocked.as_secs_f64() / sync.as_secs_f64()
    );
}
