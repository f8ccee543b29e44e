//! The shared corpus of malformed files (tests/corpus, listed in
//! manifest.json and read at run time): `Checkpoint::open`, with its
//! default options (every CRC-32 checked), must refuse every file with the
//! manifest's error kind and a message containing the manifest's
//! substring. This reader is the reference: docs/FORMAT.md section 9
//! orders its checks, and the C, Go and Python suites run the same files.
//! Needs no libtorch: it runs with and without the `torch` feature.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pytorch_saver::format::Checkpoint;
use serde_json::Value;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// One case of manifest.json.
struct Case {
    file: String,
    kind: String,
    message: String,
}

fn manifest() -> Vec<Case> {
    let path = corpus_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let cases = manifest["cases"]
        .as_array()
        .expect("manifest.json has a \"cases\" list");
    cases
        .iter()
        .map(|c| {
            let field = |name: &str| {
                c[name]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| panic!("a case without a {name} string: {c}"))
                    .to_owned()
            };
            field("what");
            Case {
                file: field("file"),
                kind: field("kind"),
                message: field("message"),
            }
        })
        .collect()
}

/// What is wrong with the reader's answer to `case` (None: nothing).
fn check(case: &Case) -> Option<String> {
    let path = corpus_dir().join(&case.file);
    let e = match Checkpoint::open(&path) {
        Ok(_) => return Some(format!("{}: opened, expected {}", case.file, case.kind)),
        Err(e) => e,
    };
    let (kind, message) = (e.kind(), e.to_string());
    (kind != case.kind || !message.contains(&case.message)).then(|| {
        format!(
            "{}: got {kind}: {message}\n    expected {} containing {:?}",
            case.file, case.kind, case.message
        )
    })
}

#[test]
fn every_corpus_file_is_refused_with_its_kind_and_message() {
    let cases = manifest();
    assert!(!cases.is_empty(), "manifest.json lists no case");
    let failures: Vec<String> = cases.iter().filter_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} of {} corpus files not refused as manifest.json says:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_directory_and_the_manifest_list_the_same_files() {
    let listed: Vec<String> = manifest().into_iter().map(|c| c.file).collect();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "manifest.json lists a file twice");
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, listed, "manifest.json is sorted by file name");
    let present: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".zip"))
        .collect();
    let listed: BTreeSet<String> = listed.into_iter().collect();
    let unlisted: Vec<_> = present.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&present).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "files not in manifest.json: {unlisted:?}; listed but missing: {missing:?}"
    );
}

/// The valid version 2 files that the v2 cases break (written by
/// generate.py, not part of the corpus) open, so that each case's defects
/// are the ones it names; and they hold what generate.py put in them.
#[test]
fn the_valid_version_2_files_the_cases_break_open() {
    use pytorch_saver::format::{typed, FileKind, MemberName};
    let tmp = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .arg(corpus_dir().join("generate.py"))
        .arg("--write-valid")
        .arg(tmp.path())
        .status()
        .expect("python3 runs generate.py");
    assert!(status.success(), "generate.py --write-valid failed");
    let open = |name: &str| Checkpoint::open(tmp.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));

    let ckpt = open("v2_checkpoint.zip");
    let meta = ckpt.metadata();
    assert_eq!((meta.format_version, meta.kind), (2, FileKind::Checkpoint));
    let kwargs = &meta.model_spec().unwrap().kwargs;
    assert_eq!(typed::as_class_ref(&kwargs["act"]), Some("torch.nn.ReLU"));
    assert_eq!(typed::as_dtype(&kwargs["dtype"]), Some("float32"));
    let betas = &meta.optimizer.as_ref().unwrap().kwargs["betas"];
    assert_eq!(typed::as_tuple(betas).map(<[Value]>::len), Some(2));
    let extra = meta.extra.as_ref().unwrap();
    assert_eq!(
        extra.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["rng", "counters"]
    );
    let cpu = ckpt.tensor(MemberName::Extra, "rng.torch.cpu").unwrap();
    assert_eq!(ckpt.tensor_bytes(cpu), [1, 2, 3, 4]);
    assert_eq!(meta.manager.as_ref().unwrap().id, "run-1");

    let inference = open("v2_inference.zip");
    assert_eq!(inference.metadata().kind, FileKind::Inference);
    assert!(inference.metadata().extra.is_none());
    let weights = open("v2_weights.zip");
    assert_eq!(weights.metadata().kind, FileKind::Weights);
    assert!(weights.metadata().model.is_none());
    assert_eq!(weights.tensors(MemberName::Model).len(), 2);
}
