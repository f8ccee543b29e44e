//! Progress callbacks of real saves, loads and verifications of a
//! multi-MiB checkpoint (src/progress.rs states the contract): the first
//! call is (0, T), the counts grow strictly, the last call is (T, T) and
//! only on success; T is the file's size for a save, the bytes checked
//! (and copied) for an open or a load.

mod common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{mse_step, write_raw_inference};
use pytorch_saver::format::{BytesTensor, Checkpoint, Dtype, MemberName, ReadOptions, TensorSource, WriteOptions};
use pytorch_saver::manager::{CheckpointManager, Policy};
use pytorch_saver::UserMetadata;
use pytorch_saver::{models, optim, ContainerSpec, InferenceModel, LoadOptions, ModelContainer, Progress, Registry};
use serde_json::json;
use tch::{Kind, Tensor};

type Calls = Arc<Mutex<Vec<(u64, u64)>>>;

fn recorder() -> (Progress, Calls) {
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let sink = calls.clone();
    (
        Progress::new(move |done, total| sink.lock().unwrap().push((done, total))),
        calls,
    )
}

fn taken(calls: &Calls) -> Vec<(u64, u64)> {
    std::mem::take(&mut *calls.lock().unwrap())
}

/// The contract of a successful operation of `total` bytes; returns the
/// number of calls.
fn assert_complete(calls: &[(u64, u64)], total: u64) -> usize {
    assert!(total > 0, "an operation of no bytes");
    assert_eq!(calls.first(), Some(&(0, total)), "first call of {calls:?}");
    assert_eq!(calls.last(), Some(&(total, total)), "last call of {calls:?}");
    assert!(calls.iter().all(|&(_, t)| t == total), "one total in {calls:?}");
    assert!(
        calls.windows(2).all(|w| w[0].0 < w[1].0),
        "counts strictly increasing in {calls:?}"
    );
    calls.len()
}

/// A failed operation: started, counts increasing, never at its end.
fn assert_failed(calls: &[(u64, u64)]) {
    let &(zero, total) = calls.first().expect("the operation started");
    assert_eq!(zero, 0);
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
    assert!(calls.iter().all(|&(done, t)| t == total && done < total), "{calls:?}");
}

/// A trained MLP (2048 inputs, one 2048-wide hidden layer) with Adam: a
/// model member of 16 MiB and an optimizer member of 32 MiB, which the
/// CRC check splits between threads where there are two cores.
fn trained() -> ModelContainer {
    let spec = ContainerSpec::model(
        models::MLP,
        json!({"in_dim": 2048, "hidden_dim": 2048, "n_classes": 3, "n_layers": 1})
            .as_object()
            .unwrap()
            .clone(),
    )
    .optimizer(optim::ADAM, json!({"lr": 0.001}).as_object().unwrap().clone());
    let mut c = ModelContainer::new();
    c.initialize(spec).unwrap();
    tch::manual_seed(3);
    let x = Tensor::randn([8, 2048], (Kind::Float, tch::Device::Cpu));
    let y = Tensor::randn([8, 3], (Kind::Float, tch::Device::Cpu));
    mse_step(&mut c, &x, &y);
    c
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// The bytes of every member (what a verifying open checks).
fn member_bytes(path: &Path) -> u64 {
    Checkpoint::open(path).unwrap().members().iter().map(|m| m.size).sum()
}

/// The tensor data bytes of the model and optimizer members.
fn tensor_bytes(path: &Path) -> u64 {
    let ckpt = Checkpoint::open(path).unwrap();
    [MemberName::Model, MemberName::Optimizer]
        .into_iter()
        .flat_map(|m| ckpt.tensors(m).iter().map(|e| e.byte_len()).collect::<Vec<_>>())
        .sum()
}

fn saved(dir: &Path) -> PathBuf {
    trained().save(dir, "p", &UserMetadata::new()).unwrap()
}

#[test]
fn a_save_reports_the_file_size_in_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (progress, calls) = recorder();
    let mut c = trained();
    c.set_save_progress(Some(progress));
    let path = c.save(dir.path(), "p", &UserMetadata::new()).unwrap();
    let heard = taken(&calls);
    assert!(file_size(&path) > 40 << 20, "a multi-MiB checkpoint");
    // A report per tensor (4 model, 12 optimizer), per header, per 16 MiB.
    assert!(assert_complete(&heard, file_size(&path)) > 16, "{heard:?}");

    let path = c.save_inference(dir.path(), "p", &UserMetadata::new()).unwrap();
    assert_complete(&taken(&calls), file_size(&path));

    c.set_save_progress(None);
    c.save(dir.path(), "p", &UserMetadata::new()).unwrap();
    assert!(taken(&calls).is_empty(), "a cleared callback hears nothing");
}

#[test]
fn a_managed_save_reports_in_the_foreground_and_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (progress, calls) = recorder();
    let mut c = trained();
    c.set_save_progress(Some(progress));
    let mut manager = CheckpointManager::open(dir.path(), Policy::new("run")).unwrap();
    let path = manager.save(&c, 1, &UserMetadata::new()).unwrap();
    assert_complete(&taken(&calls), file_size(&path));
    manager.save_async(&c, 2, &UserMetadata::new()).unwrap();
    let path = manager.wait().unwrap().expect("a background save");
    assert_complete(&taken(&calls), file_size(&path));
    manager.close().unwrap();
}

#[test]
fn a_large_tensor_is_reported_per_16_mib() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![7u8; 40 << 20];
    let tensor = BytesTensor {
        name: "weight".into(),
        dtype: Dtype::U8,
        shape: vec![data.len()],
        data: Cow::Borrowed(&data),
    };
    let (progress, calls) = recorder();
    let options = WriteOptions {
        progress: Some(progress),
        ..WriteOptions::default()
    };
    let path = write_raw_inference(dir.path(), "big", &[&tensor], &options).unwrap();
    let calls = taken(&calls);
    assert_complete(&calls, file_size(&path));
    let largest_step = calls.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    assert!(largest_step <= 16 << 20, "a step of {largest_step} bytes in {calls:?}");
}

/// Gives `good` bytes of a 20 MiB tensor's 24: the write fails midway.
struct ShortTensor(Vec<u8>);

impl TensorSource for ShortTensor {
    fn name(&self) -> &str {
        "short"
    }
    fn dtype(&self) -> Dtype {
        Dtype::U8
    }
    fn shape(&self) -> Vec<usize> {
        vec![24 << 20]
    }
    fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(&self.0))
    }
}

#[test]
fn a_failed_save_never_reports_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let full = BytesTensor {
        name: "first".into(),
        dtype: Dtype::U8,
        shape: vec![20 << 20],
        data: Cow::Owned(vec![1u8; 20 << 20]),
    };
    let short = ShortTensor(vec![2u8; 20 << 20]);
    let (progress, calls) = recorder();
    let options = WriteOptions {
        progress: Some(progress),
        ..WriteOptions::default()
    };
    let e = write_raw_inference(dir.path(), "short", &[&full, &short], &options).unwrap_err();
    assert!(e.to_string().contains("short"), "{e}");
    let calls = taken(&calls);
    assert_failed(&calls);
    assert!(
        calls.last().unwrap().0 >= 20 << 20,
        "the first tensor was reported: {calls:?}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left behind");
}

#[test]
fn a_verifying_open_reports_the_bytes_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path());
    let (progress, calls) = recorder();
    let options = ReadOptions {
        progress: Some(progress),
        ..ReadOptions::default()
    };
    Checkpoint::open_with(&path, options).unwrap();
    let calls = taken(&calls);
    // Every member, per 8 MiB, on two threads for the optimizer member.
    assert!(assert_complete(&calls, member_bytes(&path)) > 4, "{calls:?}");
}

#[test]
fn a_corrupted_file_never_reports_the_end_of_its_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path());
    let ckpt = Checkpoint::open(&path).unwrap();
    let big = ckpt
        .tensors(MemberName::Optimizer)
        .iter()
        .find(|e| e.byte_len() > 1 << 20);
    let at = big.expect("a large optimizer tensor").start + 5;
    drop(ckpt);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let (progress, calls) = recorder();
    let options = ReadOptions {
        progress: Some(progress.clone()),
        ..ReadOptions::default()
    };
    let e = Checkpoint::open_with(&path, options).unwrap_err();
    assert!(e.to_string().contains("optimizer.safetensors"), "{e}");
    assert_failed(&taken(&calls));

    let mut c = ModelContainer::new();
    let options = LoadOptions::new().with_copy(true).with_progress(progress);
    c.load_with(&path, &options).unwrap_err();
    assert_failed(&taken(&calls));
}

#[test]
fn loads_report_the_bytes_they_check_and_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path());
    let (progress, calls) = recorder();
    let (members, tensors) = (member_bytes(&path), tensor_bytes(&path));

    let mut c = ModelContainer::new();
    c.load_with(&path, &LoadOptions::new().with_progress(progress.clone()))
        .unwrap();
    assert_complete(&taken(&calls), members);

    let copying = LoadOptions::new().with_copy(true).with_progress(progress.clone());
    let mut copied = ModelContainer::new();
    copied.load_with(&path, &copying).unwrap();
    assert!(assert_complete(&taken(&calls), members + tensors) > 4);

    // A restore always copies into the tensors held.
    c.restore_with(&path, &LoadOptions::new().with_progress(progress.clone()))
        .unwrap();
    assert_complete(&taken(&calls), members + tensors);

    // Neither checked nor copied: only metadata.json's CRC, start and end.
    let meta = Checkpoint::open(&path).unwrap().members()[0].size;
    let unchecked = LoadOptions::new().with_verify(false).with_progress(progress.clone());
    c.load_with(&path, &unchecked).unwrap();
    assert_eq!(taken(&calls), vec![(0, meta), (meta, meta)]);

    let model_bytes: u64 = Checkpoint::open(&path)
        .unwrap()
        .tensors(MemberName::Model)
        .iter()
        .map(|e| e.byte_len())
        .sum();
    InferenceModel::load(&path, &Registry::new(), &copying).unwrap();
    assert_complete(&taken(&calls), members + model_bytes);
}
