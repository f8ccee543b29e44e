//! The `pytorch-saver` command-line tool: inspect and verify.

mod common;

use std::process::Command;

use common::*;
use pytorch_saver::{models, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Value};

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pytorch-saver"))
}

fn saved_mlp(dir: &std::path::Path) -> std::path::PathBuf {
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(
        models::MLP,
        json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})
            .as_object()
            .unwrap()
            .clone(),
    ))
    .unwrap();
    c.save(dir, "cli", &UserMetadata::new().with("epoch", 7).unwrap())
        .unwrap()
}

#[test]
fn inspect_prints_a_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_mlp(dir.path());
    let out = cli().arg("inspect").arg(&path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "v2 checkpoint",
        models::MLP,
        "epoch=7",
        "model.safetensors",
        "hidden_layers.4.weight",
        "F32",
        "[3, 8]",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let out = cli().arg("inspect").arg("--json").arg(&path).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model_class"], models::MLP);
    assert_eq!(v["metadata"]["epoch"], 7);
    assert_eq!(v["members"][1]["name"], "model.safetensors");
    assert_eq!(v["members"][1]["tensors"].as_array().unwrap().len(), 8);
}

#[test]
fn verify_exits_zero_only_when_every_file_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let good = saved_mlp(dir.path());
    let out = cli().arg("verify").arg(&good).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("OK {}", good.display())
    );

    let mut bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    bytes[n - 200] ^= 1; // inside the last member or the central directory
    let bad = write_file(dir.path(), "bad.zip", &bytes);
    let truncated = write_file(dir.path(), "cut.zip", &std::fs::read(&good).unwrap()[..n / 2]);
    let out = cli()
        .arg("verify")
        .arg(&good)
        .arg(&bad)
        .arg(&truncated)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "one line per file: {text}");
    assert!(lines[0].starts_with("OK "));
    assert!(
        lines[1].starts_with(&format!("FAIL {}: ", bad.display())),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("truncated"), "{}", lines[2]);
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(cli().output().unwrap().status.code(), Some(2));
    assert_eq!(cli().arg("verify").output().unwrap().status.code(), Some(2));
    assert_eq!(cli().arg("frobnicate").output().unwrap().status.code(), Some(2));
    let out = cli().arg("inspect").arg("/no/such/file.zip").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let path = saved_mlp(dir.path());
    let mut child = cli()
        .arg("inspect")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads the output: the first write finds no reader.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
