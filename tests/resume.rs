//! Exact resumption across processes: a portable Sequential with Dropout,
//! Adam and StepLR, its data shuffled every epoch by the global torch RNG,
//! trained 30 steps and saved with the RNG and the step counters tracked;
//! a fresh process (this test binary, re-run in child mode) that seeded its
//! RNG differently loads the file and trains 30 more. Every parameter,
//! every optimizer state tensor, the RNG state and every loss equal those
//! of 60 uninterrupted steps, bit for bit. The negative control: a child
//! that does not restore the RNG continues differently.
#![cfg(feature = "torch")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::bytes_of;
use pytorch_saver::extra_state::{Counters, Rng};
use pytorch_saver::format::{Checkpoint, MemberName};
use pytorch_saver::{models, optim, sched, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

/// The child mode's switch: the checkpoint to resume from.
const CHILD_CHECKPOINT: &str = "PTS_RESUME_CHECKPOINT";
/// Where the child saves its final state.
const CHILD_OUT: &str = "PTS_RESUME_OUT";
/// "1": the child tracks the RNG (restores it); "0": it does not.
const CHILD_RESTORES_RNG: &str = "PTS_RESUME_RESTORE_RNG";

const EXAMPLES: i64 = 24;
const BATCH: i64 = 8;
const STEPS_PER_EPOCH: i64 = EXAMPLES / BATCH;
/// 30 steps: the save and the resume fall on an epoch boundary.
const EPOCHS_BEFORE: i64 = 10;
const EPOCHS_AFTER: i64 = 10;

/// Tests in this binary share the process's generator: one at a time.
static RNG_LOCK: Mutex<()> = Mutex::new(());

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn spec() -> ContainerSpec {
    let layers = json!([
        {"type": "Linear", "in_features": 6, "out_features": 16},
        {"type": "ReLU"},
        {"type": "Dropout", "p": 0.3},
        {"type": "Linear", "in_features": 16, "out_features": 3}
    ]);
    ContainerSpec::model(models::SEQUENTIAL, obj(json!({ "layers": layers })))
        .optimizer(optim::ADAM, obj(json!({"lr": 0.01})))
        .scheduler(sched::STEP_LR, obj(json!({"step_size": 7, "gamma": 0.5})))
}

/// The data set, made without the RNG (so that it is the same in every
/// process whatever the generator's state).
fn data() -> (Tensor, Tensor) {
    let opts = (Kind::Float, Device::Cpu);
    let x = (Tensor::arange(EXAMPLES * 6, opts) * 0.37).sin().reshape([EXAMPLES, 6]);
    let y = (Tensor::arange(EXAMPLES * 3, opts) * 0.91).cos().reshape([EXAMPLES, 3]);
    (x, y)
}

/// `epochs` epochs: each draws a permutation of the data from the global
/// RNG, then steps through it in batches (Dropout drawing from the same
/// RNG), stepping the scheduler every step; the counters count. Returns
/// each step's loss, as f32 bits.
fn train(c: &mut ModelContainer, epochs: i64) -> Vec<u32> {
    let (x, y) = data();
    let mut losses = Vec::new();
    for _ in 0..epochs {
        let order = Tensor::randperm(EXAMPLES, (Kind::Int64, Device::Cpu));
        for b in 0..STEPS_PER_EPOCH {
            let idx = order.narrow(0, b * BATCH, BATCH);
            c.zero_grad().unwrap();
            let out = c.model().unwrap().forward_t(&x.index_select(0, &idx), true).unwrap();
            let loss = (out - y.index_select(0, &idx)).square().mean(Kind::Float);
            loss.backward();
            c.step().unwrap();
            c.scheduler_step().unwrap();
            losses.push((loss.double_value(&[]) as f32).to_bits());
            c.tracked_mut::<Counters>("counters").unwrap().increment("step");
        }
        c.tracked_mut::<Counters>("counters").unwrap().increment("epoch");
    }
    losses
}

/// A fresh container, seeded, tracking the RNG and the counters.
fn fresh(seed: i64) -> ModelContainer {
    // One thread: the same reductions in every process.
    tch::set_num_threads(1);
    tch::manual_seed(seed);
    let mut c = ModelContainer::new();
    c.initialize(spec()).unwrap();
    c.track("rng", Rng::new()).unwrap();
    c.track("counters", Counters::new().with("step", 0).with("epoch", 0))
        .unwrap();
    c
}

fn losses_metadata(losses: &[u32]) -> UserMetadata {
    UserMetadata::new().with("losses", json!(losses)).unwrap()
}

/// The child mode: resume from the checkpoint, train, save. Run by the
/// tests below in a fresh process; does nothing in a normal run.
#[test]
#[ignore = "the child process of the resume tests, which run it"]
fn child_resumes_from_a_checkpoint() {
    let Ok(checkpoint) = std::env::var(CHILD_CHECKPOINT) else {
        return;
    };
    let out = std::env::var(CHILD_OUT).unwrap();
    let restores_rng = std::env::var(CHILD_RESTORES_RNG).unwrap() == "1";
    tch::set_num_threads(1);
    // Another seed, and numbers drawn: restoring must undo both.
    tch::manual_seed(987_654);
    let _ = Tensor::randn([100], (Kind::Float, Device::Cpu));
    let mut c = ModelContainer::new();
    if restores_rng {
        c.track("rng", Rng::new()).unwrap();
    }
    c.track("counters", Counters::new()).unwrap();
    c.load(&checkpoint).unwrap();
    let counters = c.tracked::<Counters>("counters").unwrap();
    assert_eq!(counters.get("step"), Some(EPOCHS_BEFORE * STEPS_PER_EPOCH));
    assert_eq!(counters.get("epoch"), Some(EPOCHS_BEFORE));
    let losses = train(&mut c, EPOCHS_AFTER);
    if !restores_rng {
        // Save the RNG after all, for the comparison.
        c.track("rng", Rng::new()).unwrap();
    }
    c.save(&out, "child", &losses_metadata(&losses)).unwrap();
}

/// Runs the child mode in a new process; returns the file it saved.
fn run_child(checkpoint: &Path, out: &Path, restore_rng: bool) -> PathBuf {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_resumes_from_a_checkpoint",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_CHECKPOINT, checkpoint)
        .env(CHILD_OUT, out)
        .env(CHILD_RESTORES_RNG, if restore_rng { "1" } else { "0" })
        .status()
        .unwrap();
    assert!(status.success(), "child process failed: {status}");
    let files: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "zip"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

/// What the comparison needs of a run's end: every tensor's bytes by
/// `member/name` (model, optimizer state, RNG), the losses and counters.
#[derive(Debug, PartialEq)]
struct End {
    tensors: BTreeMap<String, Vec<u8>>,
    losses: Vec<u32>,
    counters: Value,
}

fn end_of_file(path: &Path) -> End {
    let ckpt = Checkpoint::open(path).unwrap();
    let mut tensors = BTreeMap::new();
    for member in [MemberName::Model, MemberName::Optimizer, MemberName::Extra] {
        for t in ckpt.tensors(member) {
            tensors.insert(format!("{member}/{}", t.name), ckpt.tensor_bytes(t).to_vec());
        }
    }
    let meta = ckpt.metadata();
    let losses = serde_json::from_value(meta.user["losses"].clone()).unwrap();
    let extra = meta.extra.as_ref().unwrap();
    let counters = extra.iter().find(|e| e.name == "counters").unwrap().state.clone();
    End {
        tensors,
        losses,
        counters,
    }
}

fn end_of_container(c: &ModelContainer, losses: Vec<u32>) -> End {
    let mut tensors = BTreeMap::new();
    for (name, t) in c.model().unwrap().state_dict() {
        tensors.insert(format!("model.safetensors/{name}"), bytes_of(&t));
    }
    for (index, state) in c.optimizer().unwrap().state_dict().unwrap().state {
        for (key, t) in state {
            tensors.insert(format!("optimizer.safetensors/state.{index}.{key}"), bytes_of(&t));
        }
    }
    tensors.insert(
        "extra.safetensors/rng.torch.cpu".into(),
        bytes_of(&Rng::cpu_state().unwrap()),
    );
    let counters = json!({"step": c.tracked::<Counters>("counters").unwrap().get("step"),
                          "epoch": c.tracked::<Counters>("counters").unwrap().get("epoch")});
    End {
        tensors,
        losses,
        counters,
    }
}

/// The first half (30 steps, saved into `dir`) and the uninterrupted 60
/// steps, both from the same seed, in this process.
fn first_half_and_reference(dir: &Path) -> (PathBuf, End) {
    let mut first = fresh(1234);
    let first_losses = train(&mut first, EPOCHS_BEFORE);
    let checkpoint = first.save(dir, "half", &losses_metadata(&first_losses)).unwrap();

    let mut reference = fresh(1234);
    let mut losses = train(&mut reference, EPOCHS_BEFORE);
    assert_eq!(losses, first_losses, "training is deterministic within a process");
    let second = train(&mut reference, EPOCHS_AFTER);
    losses.extend(second.iter().copied());
    let end = end_of_container(&reference, second);
    assert_eq!(losses.len() as i64, (EPOCHS_BEFORE + EPOCHS_AFTER) * STEPS_PER_EPOCH);
    (checkpoint, end)
}

#[test]
fn a_fresh_process_resumes_exactly_where_the_uninterrupted_run_goes() {
    let _lock = RNG_LOCK.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, reference) = first_half_and_reference(dir.path());
    let out = tempfile::tempdir().unwrap();
    let resumed = end_of_file(&run_child(&checkpoint, out.path(), true));

    assert_eq!(resumed.counters, json!({"step": 60, "epoch": 20}));
    assert_eq!(resumed.losses, reference.losses, "the losses of steps 31 to 60");
    assert_eq!(
        resumed.tensors.keys().collect::<Vec<_>>(),
        reference.tensors.keys().collect::<Vec<_>>()
    );
    // 4 parameters, Adam's 3 tensors for each, the RNG.
    assert_eq!(resumed.tensors.len(), 4 + 12 + 1);
    for (name, bytes) in &reference.tensors {
        assert!(
            resumed.tensors[name] == *bytes,
            "{name} differs from the uninterrupted run's"
        );
    }
}

#[test]
fn without_the_rng_restored_the_continuation_differs() {
    let _lock = RNG_LOCK.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, reference) = first_half_and_reference(dir.path());
    let out = tempfile::tempdir().unwrap();
    let unrestored = end_of_file(&run_child(&checkpoint, out.path(), false));

    // The counters and the optimizer's step count resume all the same...
    assert_eq!(unrestored.counters, reference.counters);
    let step = "optimizer.safetensors/state.0.step";
    assert_eq!(unrestored.tensors[step], reference.tensors[step]);
    // ... but other shuffles and dropout masks give other losses and weights.
    assert_eq!(unrestored.losses.len(), reference.losses.len());
    assert_ne!(
        unrestored.losses[0], reference.losses[0],
        "the first resumed step already differs"
    );
    let weight = "model.safetensors/0.weight";
    assert_ne!(unrestored.tensors[weight], reference.tensors[weight]);
    assert_ne!(
        unrestored.tensors["extra.safetensors/rng.torch.cpu"],
        reference.tensors["extra.safetensors/rng.torch.cpu"]
    );
}

/// In one process: a restored state replays the same numbers, whatever
/// was drawn since, and a state a file holds is the one saved.
#[test]
fn the_rng_state_saved_is_the_state_restored() {
    let _lock = RNG_LOCK.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = fresh(42);
    let before = Rng::cpu_state().unwrap();
    let path = c.save(dir.path(), "rng", &UserMetadata::new()).unwrap();
    let expected = Tensor::randn([8], (Kind::Float, Device::Cpu));

    tch::manual_seed(7);
    let _ = Tensor::randn([3], (Kind::Float, Device::Cpu));
    assert_ne!(bytes_of(&Rng::cpu_state().unwrap()), bytes_of(&before));
    c.restore(&path).unwrap();
    assert_eq!(bytes_of(&Rng::cpu_state().unwrap()), bytes_of(&before));
    let again = Tensor::randn([8], (Kind::Float, Device::Cpu));
    assert!(again.equal(&expected));

    let ckpt = Checkpoint::open(&path).unwrap();
    let saved = ckpt.tensor(MemberName::Extra, "rng.torch.cpu").unwrap();
    assert_eq!(ckpt.tensor_bytes(saved), bytes_of(&before).as_slice());
}
