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
