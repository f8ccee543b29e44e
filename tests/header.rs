//! The checked-in C header is what cbindgen generates from src/capi today
//! (a stale header fails here), and its version macros, like the Python
//! package's version, match Cargo.toml.
//! `make header` (PTS_BLESS_HEADER=1) rewrites it.

use std::path::{Path, PathBuf};

const HEADER: &str = "include/pytorch_saver.h";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The header cbindgen generates from the crate rooted at `root`, exactly
/// as `cbindgen --config cbindgen.toml --crate pytorch-saver` run by hand
/// there does: the whole crate is parsed, and only the C ABI may reach the
/// header (the other modules are marked `cbindgen:ignore` in src/lib.rs).
fn generate(root: &Path) -> String {
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_crate(root)
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

/// Compares a generated header with the checked-in one; the error names
/// the first line that differs.
fn check_fresh(generated: &str, checked_in: &str) -> Result<(), String> {
    if generated == checked_in {
        return Ok(());
    }
    let (line, (want, have)) = generated
        .lines()
        .chain(std::iter::repeat("<end of file>"))
        .zip(checked_in.lines().chain(std::iter::repeat("<end of file>")))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .expect("the texts differ somewhere");
    Err(format!(
        "{HEADER} is stale (run `make header`): line {}: generated {want:?}, checked in {have:?}",
        line + 1
    ))
}

#[test]
fn header_is_fresh() {
    let generated = generate(&root());
    let path = root().join(HEADER);
    if std::env::var_os("PTS_BLESS_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
    }
    let checked_in = std::fs::read_to_string(&path).expect("include/pytorch_saver.h exists");
    if let Err(e) = check_fresh(&generated, &checked_in) {
        panic!("{e}");
    }
}

#[test]
fn a_changed_signature_makes_the_header_stale() {
    // A copy of the sources with one exported signature changed, as a
    // careless edit would: the check must fail and point at it.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&root().join("src"), &tmp.path().join("src"));
    for file in ["cbindgen.toml", "Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root().join(file), tmp.path().join(file)).unwrap();
    }
    let file = tmp.path().join("src/capi/tensor.rs");
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = text.replace(
        "pub unsafe extern \"C\" fn pts_tensor_ndim(tensor: *const pts_tensor_t, out: *mut usize)",
        "pub unsafe extern \"C\" fn pts_tensor_ndim(tensor: *const pts_tensor_t, out: *mut u32)",
    );
    assert_ne!(text, changed, "the signature to change is in src/capi/tensor.rs");
    std::fs::write(&file, changed).unwrap();

    let checked_in = std::fs::read_to_string(root().join(HEADER)).unwrap();
    let err = check_fresh(&generate(tmp.path()), &checked_in).expect_err("a changed signature is caught");
    assert!(err.contains("is stale"), "{err}");
    assert!(err.contains("uint32_t"), "the message shows the changed line: {err}");
    // And the unchanged copy is fresh: the check compares content, not paths.
    std::fs::write(&file, text).unwrap();
    check_fresh(&generate(tmp.path()), &checked_in).expect("the unchanged copy generates the same header");
}

#[test]
fn version_macros_match_cargo_toml() {
    let header = std::fs::read_to_string(root().join(HEADER)).unwrap();
    let define = |name: &str| -> String {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{HEADER} defines {name}"))
            .trim()
            .to_owned()
    };
    assert_eq!(define("PTS_VERSION"), format!("\"{}\"", env!("CARGO_PKG_VERSION")));
    assert_eq!(define("PTS_VERSION_MAJOR"), env!("CARGO_PKG_VERSION_MAJOR"));
    assert_eq!(define("PTS_VERSION_MINOR"), env!("CARGO_PKG_VERSION_MINOR"));
    assert_eq!(define("PTS_VERSION_PATCH"), env!("CARGO_PKG_VERSION_PATCH"));
    assert_eq!(
        define("PTS_FORMAT_VERSION"),
        pytorch_saver::format::FORMAT_VERSION.to_string()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// One version for the whole project: the Python package's (defined once,
/// in its `_version.py`) is the crate's, which the header's macros and the
/// Go binding (through `PTS_VERSION`) carry.
#[test]
fn python_package_version_matches_cargo_toml() {
    let path = root().join("bindings/python/src/pytorch_saver/_version.py");
    let text = std::fs::read_to_string(&path).expect("the Python package defines its version in _version.py");
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("__version__ = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{} has a line __version__ = \"X.Y.Z\"", path.display()));
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}
