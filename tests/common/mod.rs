//! Helpers shared by the integration tests: a raw-bytes tensor source, a
//! minimal ZIP builder for hand-made (often deliberately broken) files,
//! and valid v1 metadata.
#![allow(dead_code)]

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use pytorch_saver::format::{
    write_checkpoint, BytesTensor, ClassSpec, Dtype, FileKind, FormatError, MemberName, Metadata, TensorMember,
    TensorSource, WriteOptions,
};
use serde_json::{json, Map, Value};

/// A tensor given as raw little-endian bytes.
pub type RawTensor = BytesTensor<'static>;

/// A [`RawTensor`] from owned bytes.
pub fn raw(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> RawTensor {
    BytesTensor {
        name: name.into(),
        dtype,
        shape,
        data: Cow::Owned(data),
    }
}

/// Writes an inference file of the class `Raw` whose model member holds
/// `tensors`, as `{stem}.zip` in `dir`, through the real writer.
pub fn write_raw_inference(
    dir: &Path,
    stem: &str,
    tensors: &[&dyn TensorSource],
    options: &WriteOptions,
) -> Result<PathBuf, FormatError> {
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: tensors.to_vec(),
    }];
    let meta = Metadata::new(
        FileKind::Inference,
        ClassSpec::new("Raw", Default::default()),
        1_700_000_000,
    );
    write_checkpoint(dir, stem, &meta, &members, options)
}

/// Valid v1 metadata for a file of `kind` holding `class`.
pub fn metadata(kind: &str, class: &str) -> Map<String, Value> {
    let v = json!({
        "model_kwargs": {"in_features": 2, "out_features": 3},
        "timestamp": 1_700_000_000u64,
        "loss": 0.25,
        "__pytorch_saver__": {
            "format_version": 1,
            "kind": kind,
            "model": {"class": class},
            "producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "rust"}
        }
    });
    v.as_object().unwrap().clone()
}

/// [`metadata`], typed, as the writer takes it.
pub fn document(kind: &str, class: &str) -> Metadata {
    Metadata::from_json(metadata(kind, class)).unwrap()
}

/// A valid `__pytorch_saver__.optimizer` for the small Linear of
/// [`metadata`]: SGD without momentum (no state).
pub fn sgd_internals() -> Value {
    json!({
        "class": "torch.optim.SGD",
        "param_groups": [{"lr": 0.1, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": false,
                          "maximize": false, "foreach": null, "differentiable": false, "fused": null,
                          "params": [0, 1]}],
        "param_names": ["weight", "bias"],
        "state": {}
    })
}

pub fn metadata_bytes(meta: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(meta).unwrap()
}

/// One member of a hand-built archive.
pub struct RawMember<'a> {
    pub name: &'a str,
    pub data: Vec<u8>,
}

pub fn member<'a>(name: &'a str, data: Vec<u8>) -> RawMember<'a> {
    RawMember { name, data }
}

/// Builds a ZIP the way v1 lays it out (STORED, data aligned to 64 with a
/// padding extra field, correct CRCs, no gaps) from members whose content
/// may break v1. Malformed ZIP structures are the corpus's (tests/corpus).
pub fn build_zip(members: &[RawMember<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(&m.data);
        let fixed = 30 + m.name.len();
        let mut pad = (64 - (out.len() + fixed) % 64) % 64;
        if pad < 4 {
            pad += 64;
        }
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&20u16.to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes()); // method: STORED
        local.extend_from_slice(&[0; 4]);
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
        local.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
        local.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
        local.extend_from_slice(&(pad as u16).to_le_bytes());
        local.extend_from_slice(m.name.as_bytes());
        local.extend_from_slice(&0xd935u16.to_le_bytes());
        local.extend_from_slice(&((pad - 4) as u16).to_le_bytes());
        local.resize(fixed + pad, 0);
        out.extend_from_slice(&local);
        out.extend_from_slice(&m.data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // method
        central.extend_from_slice(&[0; 4]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attrs
        central.extend_from_slice(&[0; 4]); // external attrs
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(m.name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A safetensors member from a header JSON and data bytes (header padded
/// with spaces to keep the data 8-byte aligned).
pub fn safetensors_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// A valid safetensors member with one F32 tensor "weight" of shape [2].
pub fn small_model_member() -> Vec<u8> {
    safetensors_bytes(
        &json!({"weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}),
        &[0, 0, 128, 63, 0, 0, 0, 64],
    )
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The project's Python (the venv that `make` creates), which has torch
/// and safetensors: the independent reader of the cross-language tests.
pub fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `make venv` (make test does)",
        p.display()
    );
    p
}

/// Runs tests/python/`script` with `spec` as JSON on stdin and returns
/// the JSON it prints.
pub fn run_python(script: &str, spec: &Value) -> Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(spec.to_string().as_bytes())
        .expect("write spec");
    let output = child.wait_with_output().expect("wait for python");
    assert!(output.status.success(), "{script} failed (its stderr is above)");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON: {e}"))
}

/// xorshift64*: a deterministic stream for the randomized tests, the same
/// inputs on every run and machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index in `0..n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

pub mod s3;

#[cfg(feature = "torch")]
mod tch_models;
#[cfg(feature = "torch")]
#[allow(unused_imports)] // each test binary uses a different part
pub use tch_models::*;

/// The variables that make a test binary, run again as a child process,
/// play a role (see [`spawn_child`]).
const CHILD_ROLE: &str = "PTS_TEST_CHILD_ROLE";
const CHILD_DIR: &str = "PTS_TEST_CHILD_DIR";

/// This test binary again, running only its test `child_process_role`,
/// which learns `role` and `dir` from [`child_role`]: a real process that
/// a test can kill, lock against or limit.
pub fn spawn_child(role: &str, dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_process_role", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_DIR, dir);
    cmd
}

/// The role and directory [`spawn_child`] gave this process; `None` in a
/// normal test run, where `child_process_role` has nothing to do.
pub fn child_role() -> Option<(String, PathBuf)> {
    let role = std::env::var(CHILD_ROLE).ok()?;
    let dir = std::env::var(CHILD_DIR).ok()?;
    Some((role, PathBuf::from(dir)))
}

/// The checkpoint a [`spawn_resume`] child resumes.
const CHILD_CHECKPOINT: &str = "PTS_TEST_CHILD_CHECKPOINT";

/// Resumes `ckpt` in a fresh process: this test binary's
/// `child_process_role`, given the role "resume" ([`resume_role`]), loads
/// it, trains on, saves into `out` and prints the path
/// ([`resume_child`]), which this returns.
pub fn spawn_resume(ckpt: &Path, out: &Path) -> PathBuf {
    let output = spawn_child("resume", out).env(CHILD_CHECKPOINT, ckpt).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("SAVED: ").map(|(_, p)| p))
        .unwrap_or_else(|| panic!("child printed no path: {stdout}"));
    PathBuf::from(line)
}

/// The checkpoint to resume and the directory to save into, in a child
/// of [`spawn_resume`]; `None` in a normal test run.
fn resume_role() -> Option<(PathBuf, PathBuf)> {
    let (role, out) = child_role()?;
    assert_eq!(role, "resume");
    Some((PathBuf::from(std::env::var(CHILD_CHECKPOINT).ok()?), out))
}

/// What a [`spawn_resume`] child does, from its `child_process_role`:
/// loads the checkpoint into `c` knowing nothing else, trains `steps` more
/// steps from the saved `step` (`train(c, start, steps)`), saves with the
/// new `step` and prints the path. In a normal test run it does nothing.
#[cfg(feature = "torch")]
pub fn resume_child(
    mut c: pytorch_saver::ModelContainer,
    steps: usize,
    train: impl FnOnce(&mut pytorch_saver::ModelContainer, usize, usize),
) {
    let Some((ckpt, out)) = resume_role() else {
        return;
    };
    let meta = c.load(&ckpt).unwrap();
    let start = meta["step"].as_u64().unwrap() as usize;
    train(&mut c, start, steps);
    let step = pytorch_saver::UserMetadata::new().with("step", start + steps).unwrap();
    let path = c.save(&out, "resumed", &step).unwrap();
    println!("SAVED: {}", path.display());
}
