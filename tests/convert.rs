//! `pytorch-saver convert` and `pytorch_saver::convert` on files the real
//! tools made (safetensors' save_file, transformers' save_pretrained,
//! torch.save, run in the project's Python), checked back with the real
//! tools: the safetensors package, transformers' from_pretrained and the
//! Python package's ModelContainer, bit for bit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::run_python;
use pytorch_saver::convert::{self, ConvertOptions, SourceKind};
use pytorch_saver::format::{typed, Checkpoint, FileKind};
use pytorch_saver::{Error, Progress};
use serde_json::{json, Value};

const BERT_CLASS: &str = "transformers.models.bert.modeling_bert.BertModel";

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pytorch-saver"))
}

/// Runs `pytorch-saver convert ARGS...`.
fn convert_cli(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = cli();
    cmd.arg("convert");
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run pytorch-saver")
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "convert failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make(kind: &str, path: &Path, extra: Value) -> Value {
    let mut spec = json!({"kind": kind, "path": path});
    if let Value::Object(m) = extra {
        spec.as_object_mut().unwrap().extend(m);
    }
    run_python("convert_check_make.py", &spec)
}

fn check(spec: Value) -> Value {
    run_python("convert_check_load.py", &spec)
}

/// Every file name in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// Every `(done, total)` a progress callback heard.
type Calls = Arc<Mutex<Vec<(u64, u64)>>>;

fn recorder() -> (Progress, Calls) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let sink = calls.clone();
    (Progress::new(move |d, t| sink.lock().unwrap().push((d, t))), calls)
}

fn bert_dir(dir: &Path) -> PathBuf {
    let bert = dir.join("bert");
    let made = make("bert", &bert, json!({}));
    assert!(made["shards"].as_u64().unwrap() >= 2, "{made}");
    assert!(bert.join("model.safetensors.index.json").is_file());
    bert
}

#[test]
fn a_safetensors_file_converts_to_a_weights_file_and_back_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    make("safetensors", &input, json!({}));

    let weights = dir.path().join("weights.zip");
    let (progress, calls) = recorder();
    let options = ConvertOptions {
        progress: Some(progress),
        ..ConvertOptions::default()
    };
    let written = convert::convert(&input, &weights, &options).unwrap();
    assert_eq!(written, weights);
    let ckpt = Checkpoint::open(&weights).unwrap();
    let meta = ckpt.metadata();
    assert_eq!(meta.kind, FileKind::Weights);
    assert!(meta.model.is_none() && meta.optimizer.is_none());
    assert_eq!(meta.user["source"], "tests/convert.rs");
    let tensor_bytes: u64 = ckpt
        .tensors(pytorch_saver::format::MemberName::Model)
        .iter()
        .map(|t| t.byte_len())
        .sum();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.first(), Some(&(0, tensor_bytes)));
    assert_eq!(calls.last(), Some(&(tensor_bytes, tensor_bytes)));
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");

    // The weights file is input like any other; options after the files.
    let contents = convert::read(&weights).unwrap();
    assert_eq!(contents.source, SourceKind::PytorchSaver);
    assert_eq!(contents.model.len(), 12);
    let back = dir.path().join("back.safetensors");
    assert_ok(&convert_cli(&[&weights, &back, &"--to", &"safetensors"]));
    let found = check(json!({"check": "safetensors", "original": input, "converted": back}));
    assert_eq!(found["different"], json!([]), "{found}");
    assert_eq!(found["count"], 12);
    assert_eq!(found["metadata"], json!({"format": "pt"}));
    assert_eq!(names(dir.path()), ["back.safetensors", "in.safetensors", "weights.zip"]);

    // inspect and verify take a weights file.
    let out = cli().arg("inspect").arg(&weights).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("weights"));
    let out = cli().arg("verify").arg(&weights).output().unwrap();
    assert!(out.status.success());
}

#[test]
fn a_hugging_face_directory_goes_to_a_checkpoint_and_back_to_a_sharded_directory() {
    let dir = tempfile::tempdir().unwrap();
    let bert = bert_dir(dir.path());
    let ckpt_path = dir.path().join("bert.zip");
    assert_ok(&convert_cli(&[&bert, &ckpt_path]));
    let ckpt = Checkpoint::open(&ckpt_path).unwrap();
    let meta = ckpt.metadata();
    assert_eq!(meta.kind, FileKind::Checkpoint);
    let model = meta.model.as_ref().unwrap();
    assert_eq!(model.class, BERT_CLASS);
    let (codec, class, fields) = typed::as_object(&model.kwargs["config"]).unwrap();
    assert_eq!((codec, class), ("hf_config", None));
    assert_eq!(fields["model_type"], "bert");
    assert_eq!(fields["hidden_size"], 16);
    assert!(!fields.contains_key("architectures"));

    let hf = dir.path().join("bert-again");
    let out = convert_cli(&[&"--max-shard-size", &"20KB", &ckpt_path, &hf, &"--to", &"hf"]);
    assert_ok(&out);
    let files = names(&hf);
    assert!(files.contains(&"config.json".to_string()), "{files:?}");
    assert!(files.contains(&"model.safetensors.index.json".to_string()), "{files:?}");
    let shards = files.iter().filter(|f| f.ends_with(".safetensors")).count();
    assert!(shards >= 2, "{files:?}");
    let config: Value = serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], json!(["BertModel"]));
    assert_eq!(config["model_type"], "bert");
    let found = check(json!({"check": "bert_hf", "original": bert, "converted": hf}));
    assert_eq!(found["different"], json!([]), "{found}");
    assert_eq!(found["outputs_equal"], true, "{found}");
    assert_eq!(found["hidden_size"], 16);
    // Nothing but the outputs was left beside them.
    assert_eq!(names(dir.path()), ["bert", "bert-again", "bert.zip"]);
}

/// Needs the Python package to read an `hf_config` value whose class is
/// null (transformers' config class of its model_type).
#[test]
fn python_rebuilds_a_converted_hugging_face_model_with_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let bert = bert_dir(dir.path());
    let ckpt_path = dir.path().join("bert.zip");
    assert_ok(&convert_cli(&[&bert, &ckpt_path]));
    let found = check(json!({"check": "bert_container", "original": bert, "converted": ckpt_path}));
    assert_eq!(found["class"], "BertModel", "{found}");
    assert_eq!(found["different"], json!([]), "{found}");
    assert_eq!(found["outputs_equal"], true, "{found}");
}

#[test]
fn a_torch_save_state_dict_with_a_class_given_loads_in_python_with_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("resnet.pt");
    make("resnet_state_dict", &sd, json!({}));
    let out_path = dir.path().join("resnet.zip");
    let kwargs = r#"{"block": {"__type__": "class", "name": "torchvision.models.resnet.BasicBlock"}, "layers": [2, 2, 2, 2], "num_classes": 10}"#;
    assert_ok(&convert_cli(&[
        &sd,
        &out_path,
        &"--model",
        &"torchvision.models.resnet.ResNet",
        &"--model-kwargs",
        &kwargs,
    ]));
    assert_eq!(
        Checkpoint::open(&out_path).unwrap().metadata().kind,
        FileKind::Checkpoint
    );
    let found = check(json!({"check": "resnet_container", "state_dict": sd, "converted": out_path}));
    assert_eq!(found["class"], "ResNet", "{found}");
    assert_eq!(found["different"], json!([]), "{found}");
    assert_eq!(found["outputs_equal"], true, "{found}");
}

#[test]
fn a_training_dict_keeps_its_adam_state_and_is_never_dropped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let td = dir.path().join("train.pt");
    make("resnet_training_dict", &td, json!({}));
    let out_path = dir.path().join("train.zip");
    let kwargs = r#"{"block": {"__type__": "class", "name": "torchvision.models.resnet.BasicBlock"}, "layers": [2, 2, 2, 2], "num_classes": 10}"#;
    let model = ["--model", "torchvision.models.resnet.ResNet", "--model-kwargs", kwargs];

    // Without --optimizer the optimizer state would be lost: refused.
    let out = convert_cli(&[&td, &out_path, &model[0], &model[1], &model[2], &model[3]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--optimizer"));
    assert!(!out_path.exists());

    let out = convert_cli(&[
        &td,
        &out_path,
        &model[0],
        &model[1],
        &model[2],
        &model[3],
        &"--optimizer",
        &"torch.optim.Adam",
        &"--optim-kwargs",
        &r#"{"lr": 0.001}"#,
    ]);
    assert_ok(&out);
    let ckpt = Checkpoint::open(&out_path).unwrap();
    let meta = ckpt.metadata();
    assert_eq!(meta.user["epoch"], 2);
    let optimizer = meta.optimizer.as_ref().unwrap();
    assert_eq!(optimizer.class, "torch.optim.Adam");
    assert_eq!(optimizer.param_names[0], "conv1.weight");
    assert!(!optimizer.param_names.iter().any(|n| n.ends_with("running_mean")));
    let found = check(json!({"check": "adam_container", "training_dict": td, "converted": out_path}));
    assert_eq!(found["class"], "Adam", "{found}");
    assert_eq!(found["states"], 62, "{found}");
    assert_eq!(found["different"], json!([]), "{found}");
    assert_eq!(found["model_different"], json!([]), "{found}");
    assert_eq!(found["lr"], 0.001);

    // --inference writes the model alone, knowingly.
    let inference = dir.path().join("inference.zip");
    assert_ok(&convert_cli(&[
        &td,
        &inference,
        &"--inference",
        &model[0],
        &model[1],
        &model[2],
        &model[3],
    ]));
    let meta = Checkpoint::open(&inference).unwrap().metadata().clone();
    assert_eq!(meta.kind, FileKind::Inference);
    assert!(meta.optimizer.is_none());
}

#[test]
fn nothing_is_replaced_and_nothing_half_written_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    make("safetensors", &input, json!({}));
    for (out_name, to) in [
        ("taken.zip", "pytorch-saver"),
        ("taken.safetensors", "safetensors"),
        ("taken-dir", "hf"),
    ] {
        let taken = dir.path().join(out_name);
        if to == "hf" {
            std::fs::create_dir(&taken).unwrap();
        } else {
            std::fs::write(&taken, b"mine").unwrap();
        }
        let out = convert_cli(&[&input, &taken, &"--to", &to]);
        assert_eq!(out.status.code(), Some(1), "{to}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("already exists") || to == "hf", "{to}: {stderr}");
        if to != "hf" {
            assert_eq!(std::fs::read(&taken).unwrap(), b"mine");
        }
    }
    // A weights file has no class: no Hugging Face directory without one.
    let weights = dir.path().join("w.zip");
    assert_ok(&convert_cli(&[&input, &weights]));
    let out = convert_cli(&[&weights, &dir.path().join("hf"), &"--to", &"hf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));

    let out_dir = dir.path().join("none/x.zip");
    let e = convert::convert(&input, &out_dir, &ConvertOptions::default()).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = convert::convert(&input, dir.path().join("x.bin"), &ConvertOptions::default()).unwrap_err();
    assert!(e.to_string().contains(".zip"), "{e}");
    assert_eq!(
        names(dir.path()),
        ["in.safetensors", "taken-dir", "taken.safetensors", "taken.zip", "w.zip"]
    );
    assert!(names(&dir.path().join("taken-dir")).is_empty());
}

#[test]
fn a_hugging_face_index_may_name_only_files_of_its_directory_each_tensor_once() {
    let dir = tempfile::tempdir().unwrap();
    let bert = bert_dir(dir.path());
    let index_path = bert.join("model.safetensors.index.json");
    let index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let first_shard = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    std::fs::copy(
        bert.join(first_shard.as_str().unwrap()),
        dir.path().join("outside.safetensors"),
    )
    .unwrap();
    type Edit<'a> = &'a dyn Fn(&mut Value);
    let cases: [(&str, Edit<'_>); 4] = [
        ("outside", &|v| {
            *v["weight_map"].as_object_mut().unwrap().values_mut().next().unwrap() = json!("../outside.safetensors");
        }),
        ("absolute", &|v| {
            let abs = dir.path().join("outside.safetensors");
            *v["weight_map"].as_object_mut().unwrap().values_mut().next().unwrap() = json!(abs);
        }),
        ("missing", &|v| {
            *v["weight_map"].as_object_mut().unwrap().values_mut().next().unwrap() =
                json!("model-00009-of-00009.safetensors");
        }),
        ("unlisted", &|v| {
            v["weight_map"]
                .as_object_mut()
                .unwrap()
                .shift_remove("pooler.dense.bias");
        }),
    ];
    for (what, edit) in cases {
        let mut edited = index.clone();
        edit(&mut edited);
        std::fs::write(&index_path, serde_json::to_vec(&edited).unwrap()).unwrap();
        let e = convert::read(&bert).unwrap_err();
        assert!(matches!(e, Error::InvalidForeign { .. }), "{what}: {e}");
        let message = e.to_string();
        let expected = match what {
            "outside" => "\"../outside.safetensors\", which is not a file name inside the directory",
            "absolute" => "which is not a file name inside the directory",
            "missing" => "model-00009-of-00009.safetensors",
            _ => "\"pooler.dense.bias\"",
        };
        assert!(message.contains(expected), "{what}: {message}");
    }

    // A tensor in two shards: the first shard twice under two names.
    let mut twice = index.clone();
    let copy = "model-00003-of-00003.safetensors";
    std::fs::copy(bert.join(first_shard.as_str().unwrap()), bert.join(copy)).unwrap();
    let map = twice["weight_map"].as_object_mut().unwrap();
    let moved = map.keys().next().unwrap().clone();
    map.insert(moved, json!(copy));
    std::fs::write(&index_path, serde_json::to_vec(&twice).unwrap()).unwrap();
    let e = convert::read(&bert).unwrap_err().to_string();
    assert!(e.contains("in two shards") || e.contains("says it is in"), "{e}");
}

#[test]
fn a_directory_without_architectures_converts_its_weights_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("plain");
    std::fs::create_dir(&hf).unwrap();
    make("safetensors", &hf.join("model.safetensors"), json!({}));
    std::fs::write(hf.join("config.json"), br#"{"hidden_size": 4}"#).unwrap();
    let out_path = dir.path().join("plain.zip");
    let out = convert_cli(&[&hf, &out_path]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    assert_eq!(Checkpoint::open(&out_path).unwrap().metadata().kind, FileKind::Weights);

    // Python refuses to build a model from it, saying why.
    let found = check(json!({"check": "load_error", "converted": out_path}));
    let error = found["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("weights file") && error.contains("names no class"),
        "{found}"
    );
}

#[test]
fn a_pickle_that_runs_a_command_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("hostile.pt");
    let canary = dir.path().join("canary");
    make("hostile", &input, json!({"canary": canary}));
    assert!(!canary.exists());
    let out = convert_cli(&[&input, &dir.path().join("out.zip")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("system"), "{stderr}");
    assert!(!canary.exists());
    assert!(!dir.path().join("out.zip").exists());
}

#[test]
fn usage_errors_exit_2() {
    let out = convert_cli(&[&"a", &"b", &"--max-shard-size", &"10MB"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to hf"));
    let out = convert_cli(&[&"a", &"b", &"--model", &"m.M", &"--model-kwargs", &"[1]"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JSON object"));
    let out = convert_cli(&[&"a", &"b", &"--model-kwargs", &"{}"]);
    assert_eq!(out.status.code(), Some(2));
}
