//! Sharded checkpoints (docs/FORMAT.md section 13) read from Rust: the
//! valid checkpoints of `tests/corpus/generate.py --write-valid` open with
//! the tensors and values generate.py put there; every case of the sharded
//! corpus (tests/corpus/sharded, listed in its manifest.json) is refused
//! with its kind and message; consolidation gives ordinary files that
//! `Checkpoint::open` reads; shards written by this library's writer form
//! a checkpoint; and the CLI's `consolidate`, `inspect` and `verify` take
//! sharded locations. Needs no libtorch (but for the tch test).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pytorch_saver::format::{
    write_checkpoint, BytesTensor, Checkpoint, Dtype, FileKind, MemberName, Metadata, TensorMember, TensorSource,
    WriteOptions,
};
use pytorch_saver::sharded::{consolidate, ShardedCheckpoint};
use serde_json::{json, Value};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/sharded")
}

/// The valid checkpoints generate.py writes, in a temporary directory.
fn valid() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/generate.py"))
        .arg("--write-valid")
        .arg(tmp.path())
        .status()
        .expect("python3 runs generate.py");
    assert!(status.success(), "generate.py --write-valid failed");
    tmp
}

fn location(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// The elements of `bytes` of `dtype`, as numbers.
fn numbers(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F32 => bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => bytes
            .chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::I64 => bytes
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("no test data of dtype {other:?}"),
    }
}

/// Checks that `sharded` holds exactly what `<name>.expected.json` says.
fn assert_holds_expected(sharded: &ShardedCheckpoint, expected: &Path) {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
    let tensors = expected["tensors"].as_object().unwrap();
    let mut want_names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    want_names.sort();
    assert_eq!(sharded.tensor_names(), want_names);
    for (name, t) in tensors {
        let (dtype, shape) = sharded.tensor_info(name).unwrap();
        assert_eq!(format!("{dtype:?}"), t["dtype"].as_str().unwrap(), "{name}");
        let want_shape: Vec<i64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        assert_eq!(shape, want_shape.as_slice(), "{name}");
        let want: Vec<f64> = t["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(numbers(dtype, &sharded.read_tensor(name).unwrap()), want, "{name}");
    }
    assert_eq!(&Value::Object(sharded.values().clone()), &expected["values"]);
}

#[test]
fn a_valid_sharded_checkpoint_opens_with_its_global_tensors_and_values() {
    let tmp = valid();
    let weights = ShardedCheckpoint::open(&location(tmp.path(), "sharded_weights")).unwrap();
    assert_holds_expected(&weights, &tmp.path().join("sharded_weights.expected.json"));
    assert_eq!(weights.values()["epoch"], 3);
    assert_eq!(weights.index().world_size, 2);
    assert!(weights.index().container.is_none());
    assert!(weights.index_json().contains("\"pytorch-saver-sharded\""));
    weights.verify().unwrap();

    // The index itself names the same checkpoint.
    let by_index = ShardedCheckpoint::open(&location(tmp.path(), "sharded_weights/index.json")).unwrap();
    assert_eq!(by_index.tensor_names(), weights.tensor_names());
    assert_eq!(by_index.index(), weights.index());

    let container = ShardedCheckpoint::open(&location(tmp.path(), "sharded_container")).unwrap();
    assert_holds_expected(&container, &tmp.path().join("sharded_container.expected.json"));
    let meta = &container.index().container.as_ref().unwrap().metadata;
    assert_eq!(meta.kind, FileKind::Checkpoint);
    assert_eq!(meta.model.as_ref().unwrap().class, "pytorch_saver.models.MLP");
    assert_eq!(meta.optimizer.as_ref().unwrap().class, "torch.optim.Adam");
    container.verify().unwrap();

    let e = weights.tensor_info("nope").unwrap_err();
    assert_eq!(e.kind(), "TensorNotFound");
    let e = weights.read_tensor_into("w", &mut [0u8; 3]).unwrap_err();
    assert_eq!(e.kind(), "InvalidInput");
}

#[cfg(feature = "torch")]
#[test]
fn a_tensor_is_assembled_into_a_tch_tensor_of_its_global_shape() {
    let tmp = valid();
    let weights = ShardedCheckpoint::open(&location(tmp.path(), "sharded_weights")).unwrap();
    let w = weights.tensor("w").unwrap();
    assert_eq!(w.size(), [4, 3]);
    assert_eq!(w.kind(), tch::Kind::Float);
    let values: Vec<f32> = Vec::try_from(w.flatten(0, -1)).unwrap();
    assert_eq!(values, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    let scale = weights.tensor("scale").unwrap();
    assert_eq!(scale.size(), Vec::<i64>::new());
    assert_eq!(scale.double_value(&[]), 7.0);
}

/// One case of the sharded corpus' manifest.json.
struct Case {
    file: String,
    kind: String,
    message: String,
}

fn manifest() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus_dir().join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["cases"]
        .as_array()
        .expect("manifest.json has a \"cases\" list")
        .iter()
        .map(|c| {
            let field = |name: &str| c[name].as_str().filter(|s| !s.is_empty()).unwrap().to_owned();
            field("what");
            Case {
                file: field("file"),
                kind: field("kind"),
                message: field("message"),
            }
        })
        .collect()
}

#[test]
fn every_sharded_corpus_case_is_refused_with_its_kind_and_message() {
    let cases = manifest();
    assert!(cases.len() >= 8, "the sharded manifest lists {} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let at = corpus_dir().join(&case.file).display().to_string();
            let e = match ShardedCheckpoint::open(&at).and_then(|s| s.verify()) {
                Ok(()) => return Some(format!("{}: opened and verified, expected {}", case.file, case.kind)),
                Err(e) => e,
            };
            let (kind, message) = (e.kind(), e.to_string());
            (kind != case.kind || !message.contains(&case.message)).then(|| {
                format!(
                    "{}: got {kind}: {message}\n    expected {} containing {:?}",
                    case.file, case.kind, case.message
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_sharded_corpus_directory_and_its_manifest_list_the_same_cases() {
    let listed: Vec<String> = manifest().into_iter().map(|c| c.file).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, listed, "the manifest is sorted, each case once");
    let present: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(present, listed.into_iter().collect::<BTreeSet<_>>());
}

#[test]
fn consolidation_writes_the_ordinary_file_and_never_replaces_one() {
    let tmp = valid();
    let out = tmp.path().join("weights.zip").display().to_string();
    let sharded = ShardedCheckpoint::open(&location(tmp.path(), "sharded_weights")).unwrap();
    assert_eq!(
        consolidate(&location(tmp.path(), "sharded_weights"), &out).unwrap(),
        out
    );
    let file = Checkpoint::open(&out).unwrap();
    assert_eq!(file.metadata().kind, FileKind::Weights);
    assert_eq!(file.metadata().user["note"], "two ranks");
    assert_eq!(file.metadata().timestamp, sharded.index().timestamp);
    let names: BTreeSet<&str> = file
        .tensors(MemberName::Model)
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, sharded.tensor_names().into_iter().collect());
    for name in sharded.tensor_names() {
        let entry = file.tensor(MemberName::Model, name).unwrap();
        assert_eq!(file.tensor_bytes(entry), sharded.read_tensor(name).unwrap(), "{name}");
    }

    // A second consolidation to the same name is refused; the file stays.
    let before = std::fs::read(&out).unwrap();
    let e = consolidate(&location(tmp.path(), "sharded_weights"), &out).unwrap_err();
    assert_eq!(e.kind(), "Io");
    assert!(e.to_string().contains("never replaces a file"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), before);

    let out = tmp.path().join("container.zip").display().to_string();
    let sharded = ShardedCheckpoint::open(&location(tmp.path(), "sharded_container")).unwrap();
    consolidate(&location(tmp.path(), "sharded_container"), &out).unwrap();
    let file = Checkpoint::open(&out).unwrap();
    assert_eq!(file.metadata(), &sharded.index().container.as_ref().unwrap().metadata);
    for name in sharded.tensor_names() {
        let (member, short) = match name.strip_prefix("model.") {
            Some(short) => (MemberName::Model, short),
            None => (MemberName::Optimizer, name.strip_prefix("optimizer.").unwrap()),
        };
        let entry = file.tensor(member, short).unwrap();
        assert_eq!(file.tensor_bytes(entry), sharded.read_tensor(name).unwrap(), "{name}");
    }
    assert_eq!(file.tensors(MemberName::Model).len(), 4);
    assert_eq!(file.tensors(MemberName::Optimizer).len(), 12);

    // A broken checkpoint writes nothing.
    let out = tmp.path().join("broken.zip");
    let e = consolidate(
        &corpus_dir().join("chunks_gap").display().to_string(),
        &out.display().to_string(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), "ChunkTiling");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A shard as a rank writes it with this library's writer.
fn write_shard(dir: &Path, stem: &str, id: &str, rank: u64, tensors: &[BytesTensor<'_>]) -> PathBuf {
    let mut meta = Metadata::weights(1_800_000_000, Default::default());
    meta.shard = Some(pytorch_saver::format::metadata::ShardBlock {
        checkpoint_id: id.into(),
        rank,
    });
    let member = TensorMember {
        name: MemberName::Model,
        tensors: tensors.iter().map(|t| t as &dyn TensorSource).collect(),
    };
    write_checkpoint(dir, stem, &meta, &[member], &WriteOptions::default()).unwrap()
}

fn f32_tensor(name: &str, shape: Vec<usize>, values: &[f32]) -> BytesTensor<'static> {
    BytesTensor {
        name: name.into(),
        dtype: Dtype::F32,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
    }
}

#[test]
fn shards_written_by_this_library_form_a_checkpoint_and_their_block_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "00112233445566778899aabbccddeeff";
    let a = write_shard(
        tmp.path(),
        "shard-00000-of-00002_weights_1800000000",
        id,
        0,
        &[f32_tensor("m@0", vec![1, 2], &[1.0, 2.0])],
    );
    let b = write_shard(
        tmp.path(),
        "shard-00001-of-00002_weights_1800000000",
        id,
        1,
        &[f32_tensor("m@1", vec![1, 2], &[3.0, 4.0])],
    );
    let shard = Checkpoint::open(&a).unwrap();
    let block = shard.metadata().shard.as_ref().unwrap();
    assert_eq!((block.checkpoint_id.as_str(), block.rank), (id, 0));

    let entry = |p: &Path, rank: u64| {
        json!({"file": p.file_name().unwrap().to_str().unwrap(), "rank": rank,
               "size": std::fs::metadata(p).unwrap().len()})
    };
    let index = json!({
        "format": "pytorch-saver-sharded", "format_version": 1, "checkpoint_id": id,
        "timestamp": 1_800_000_000u64,
        "producer": {"library": "pytorch-saver", "version": "0.2.0", "language": "rust"},
        "world_size": 2, "shards": [entry(&a, 0), entry(&b, 1)],
        "tensors": {"m": {"dtype": "F32", "shape": [2, 2], "requires_grad": false, "chunks": [
            {"offsets": [0, 0], "sizes": [1, 2], "shard": 0, "tensor": "m@0"},
            {"offsets": [1, 0], "sizes": [1, 2], "shard": 1, "tensor": "m@1"}]}},
        "values": {}, "planner_data": {"m": ["m"]}
    });
    std::fs::write(
        tmp.path().join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    let sharded = ShardedCheckpoint::open(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(
        numbers(Dtype::F32, &sharded.read_tensor("m").unwrap()),
        [1.0, 2.0, 3.0, 4.0]
    );
    sharded.verify().unwrap();

    // The block belongs to weights files only.
    let mut meta: serde_json::Map<String, Value> = Metadata::new(
        FileKind::Inference,
        pytorch_saver::format::ClassSpec::new("torch.nn.Linear", Default::default()),
        1,
    )
    .to_json();
    meta["__pytorch_saver__"]["shard"] = json!({"checkpoint_id": id, "rank": 0});
    let e = Metadata::from_json(meta).unwrap_err();
    assert_eq!(e.kind(), "Schema");
    assert!(e.to_string().contains("weights files only"), "{e}");
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pytorch-saver"))
        .args(args)
        .output()
        .expect("the CLI runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_inspects_verifies_and_consolidates_sharded_locations() {
    let tmp = valid();
    let weights = location(tmp.path(), "sharded_weights");
    let container = location(tmp.path(), "sharded_container");

    let (code, stdout, _) = cli(&["inspect", &weights]);
    assert_eq!(code, 0);
    assert!(stdout.contains("sharded v1, 2 ranks, 2 shard files"), "{stdout}");
    assert!(
        stdout.contains("checkpoint 0123456789abcdef0123456789abcdef"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("w ") && l.contains("[4, 3]")),
        "{stdout}"
    );
    let (code, stdout, _) = cli(&["inspect", &format!("{container}/index.json"), "--json"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["kind"], "checkpoint");
    let fc1 = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.fc1.weight")
        .unwrap();
    assert_eq!(fc1["shape"], json!([4, 4]));
    assert_eq!(fc1["chunks"], 2);

    let (code, stdout, _) = cli(&["verify", &weights, &container]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains(&format!("OK {weights} (sharded, 2 shards)")),
        "{stdout}"
    );
    let gap = corpus_dir().join("chunks_gap").display().to_string();
    let (code, stdout, _) = cli(&["verify", &weights, &gap]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains(&format!("FAIL {gap}: ")) && stdout.contains("3 elements are in no chunk"),
        "{stdout}"
    );
    let (code, _, stderr) = cli(&["inspect", &corpus_dir().join("no_index").display().to_string()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no index.json"), "{stderr}");

    let out = tmp.path().join("c.zip").display().to_string();
    let (code, stdout, stderr) = cli(&["consolidate", &container, &out]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("checkpoint file, 4 model and 12 optimizer tensors"),
        "{stdout}"
    );
    assert_eq!(Checkpoint::open(&out).unwrap().metadata().kind, FileKind::Checkpoint);
    let (code, _, stderr) = cli(&["consolidate", &container, &out]);
    assert_eq!(code, 1);
    assert!(stderr.contains("never replaces a file"), "{stderr}");
    let (code, _, _) = cli(&["consolidate", &container]);
    assert_eq!(code, 2, "a missing argument is a usage error");
}
