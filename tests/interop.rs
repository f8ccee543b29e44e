//! Second, independent readers of files the Rust core wrote: Info-ZIP's
//! `unzip -t`, and Python's `zipfile` plus the `safetensors` package. They
//! must see the same members, the same metadata and the same bytes.

mod common;

use std::process::Command;

use common::{bytes_of, python, registry, ALL_DTYPES};
use pytorch_saver::format::{dtype_name, Checkpoint, MemberName, WriteOptions};
use pytorch_saver::{models, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Value};

fn torch_dtype(safetensors_dtype: &str) -> &'static str {
    match safetensors_dtype {
        "F64" => "float64",
        "F32" => "float32",
        "F16" => "float16",
        "BF16" => "bfloat16",
        "I64" => "int64",
        "I32" => "int32",
        "I16" => "int16",
        "I8" => "int8",
        "U8" => "uint8",
        "BOOL" => "bool",
        other => panic!("no torch dtype for {other}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a checkpoint of every dtype; returns its path and the model's
/// tensor bytes as saved (taken from the writer, not rebuilt from a seed:
/// the tests of this binary run in parallel threads that share torch's
/// global generator).
fn write_all_dtypes(dir: &std::path::Path, options: WriteOptions) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let mut c = ModelContainer::with_registry(registry()).with_write_options(options);
    c.initialize(ContainerSpec::model(
        ALL_DTYPES,
        json!({"n": 3}).as_object().unwrap().clone(),
    ))
    .unwrap();
    let meta = UserMetadata::new()
        .with("loss", 0.55)
        .unwrap()
        .with("epoch", 5)
        .unwrap()
        .with("tags", json!(["a", "ü", {"k": null}]))
        .unwrap();
    let saved = c
        .model()
        .unwrap()
        .state_dict()
        .into_iter()
        .map(|(name, t)| (name, bytes_of(&t)))
        .collect();
    (c.save(dir, "interop", &meta).unwrap(), saved)
}

fn check_with_python(path: &std::path::Path) {
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/read_checkpoint.py"))
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ckpt = Checkpoint::open(path).unwrap();

    assert_eq!(seen["corrupt_member"], Value::Null, "zipfile.testzip found a bad CRC");
    assert_eq!(seen["members"], json!(["metadata.json", "model.safetensors"]));
    assert_eq!(seen["methods"], json!([0, 0]), "every member STORED");
    for off in seen["data_offsets"].as_array().unwrap() {
        assert_eq!(
            off.as_u64().unwrap() % 64,
            0,
            "member data 64-byte aligned as Python computes it"
        );
    }
    assert_eq!(&seen["metadata"], &Value::Object(ckpt.metadata().to_json()));
    assert_eq!(seen["metadata"]["loss"], json!(0.55));

    let model = seen["model"].as_object().unwrap();
    let entries = ckpt.tensors(MemberName::Model);
    assert_eq!(model.len(), entries.len());
    for e in entries {
        let t = &model[&e.name];
        assert_eq!(t["dtype"], torch_dtype(&dtype_name(e.dtype)), "{}", e.name);
        assert_eq!(t["shape"], json!(e.shape), "{}", e.name);
        assert_eq!(
            t["hex"],
            hex(ckpt.tensor_bytes(e)),
            "{} differs between Rust and Python",
            e.name
        );
    }
}

#[test]
fn python_zipfile_and_safetensors_read_what_rust_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (path, saved) = write_all_dtypes(dir.path(), WriteOptions::default());
    check_with_python(&path);

    // And the values are the model's, bit for bit.
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.tensors(MemberName::Model).len(), saved.len());
    for (name, bytes) in &saved {
        let e = ckpt.tensor(MemberName::Model, name).unwrap();
        assert_eq!(ckpt.tensor_bytes(e), &bytes[..], "{name}");
    }
}

#[test]
fn python_reads_zip64_records() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_all_dtypes(
        dir.path(),
        WriteOptions {
            force_zip64: true,
            ..WriteOptions::default()
        },
    );
    check_with_python(&path);
}

fn unzip_t(path: &std::path::Path) {
    let out = Command::new("unzip")
        .arg("-t")
        .arg(path)
        .output()
        .expect("unzip is installed (make deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unzip -t failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("No errors detected"), "{text}");
    assert!(
        text.contains("testing: metadata.json") && text.contains("testing: model.safetensors"),
        "{text}"
    );
}

#[test]
fn unzip_t_passes_on_every_kind_of_file_we_write() {
    let dir = tempfile::tempdir().unwrap();
    unzip_t(&write_all_dtypes(dir.path(), WriteOptions::default()).0);
    unzip_t(
        &write_all_dtypes(
            dir.path(),
            WriteOptions {
                force_zip64: true,
                ..WriteOptions::default()
            },
        )
        .0,
    );
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(
        models::MLP,
        json!({"in_dim": 3, "hidden_dim": 5, "n_classes": 2})
            .as_object()
            .unwrap()
            .clone(),
    ))
    .unwrap();
    unzip_t(&c.save_inference(dir.path(), "mlp", &UserMetadata::new()).unwrap());
}

/// A real checkpoint above 4 GiB: ZIP64 because the sizes need it, read
/// back by our reader and by Python's zipfile (CRC of every byte).
#[test]
fn checkpoint_above_4_gib_uses_zip64_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let n = (4u64 << 30) / 4 + 1024; // f32 elements: just over 4 GiB
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(
        models::LINEAR,
        json!({"in_features": n / 2, "out_features": 2, "bias": false})
            .as_object()
            .unwrap()
            .clone(),
    ))
    .unwrap();
    let weight = c.model().unwrap().state_dict()["weight"].shallow_clone();
    tch::no_grad(|| {
        weight
            .view([-1])
            .narrow(0, 0, 8)
            .copy_(&tch::Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., 7., 8.]));
    });
    let path = c.save_inference(dir.path(), "big", &UserMetadata::new()).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 4 << 30, "{len}");
    let ckpt = Checkpoint::open(&path).unwrap();
    let e = ckpt.tensor(MemberName::Model, "weight").unwrap();
    assert_eq!(e.shape, [2, (n / 2) as usize]);
    assert_eq!(&ckpt.tensor_bytes(e)[..8], &[0, 0, 128, 63, 0, 0, 0, 64]);
    drop(ckpt);
    let out = Command::new(python())
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.testzip(), z.getinfo('model.safetensors').file_size)"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("None "), "zipfile CRC check: {text}");
}
