//! Reading `torch.save` files and files of the original package (0.1.x)
//! without Python and without running their pickles: real files from
//! torch 2.13 (tests/python/convert_torch_files.py writes them, and beside
//! them the same tensors through safetensors, so that every byte read here
//! is compared with what torch held), and hostile files: a pickle that
//! calls `os.system`, `eval` or `torch.load` is refused naming the global,
//! and the command it carries never runs; malformed files fail with typed
//! errors, never a panic or an allocation the file did not pay for.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pytorch_saver::convert::{read, Contents, ForeignTensor, SourceKind, TensorBytes};
use pytorch_saver::Error;
use safetensors::SafeTensors;
use serde_json::{json, Value};

/// The files Python wrote, and what they hold (written once per run).
fn files() -> &'static Value {
    static FILES: OnceLock<Value> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = scratch("python");
        common::run_python("convert_torch_files.py", &json!({ "dir": dir }))
    })
}

/// An empty directory of this test run, named `name`.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("convert_torch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_of(v: &Value) -> PathBuf {
    PathBuf::from(v.as_str().expect("a path"))
}

/// Every tensor equal, name, dtype, shape and bytes, to the safetensors
/// file `expected` (which holds them in the order `names`).
fn assert_tensors(got: &[ForeignTensor], expected: &Path, names: &Value) {
    let bytes = std::fs::read(expected).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<&str> = names.as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let got_names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(got_names, names, "tensor names and order");
    for t in got {
        let want = st.tensor(&t.name).unwrap();
        assert_eq!(t.dtype, want.dtype(), "{}: dtype", t.name);
        assert_eq!(t.shape, want.shape(), "{}: shape", t.name);
        assert!(t.data.as_slice() == want.data(), "{}: bytes differ", t.name);
    }
}

fn by_name<'t>(tensors: &'t [ForeignTensor], name: &str) -> &'t ForeignTensor {
    tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

fn is_mapped(t: &ForeignTensor) -> bool {
    matches!(t.data, TensorBytes::Mapped { .. })
}

/// The optimizer of `contents` against what Python's `state_dict()` held.
fn assert_optimizer(contents: &Contents, want: &Value) {
    let opt = contents.optimizer.as_ref().expect("optimizer state");
    let groups: Vec<Value> = opt.param_groups.iter().cloned().map(Value::Object).collect();
    assert_eq!(Value::Array(groups), want["param_groups"]);
    let names = opt.param_names.as_ref().map(|n| json!(n)).unwrap_or(Value::Null);
    assert_eq!(names, want["param_names"]);
    assert!(opt.class.is_none());

    let bytes = std::fs::read(path_of(&want["tensors"])).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let keys = want["state_keys"].as_object().unwrap();
    assert_eq!(opt.state.len(), keys.len());
    for (index, (tensors, values)) in &opt.state {
        assert!(values.is_empty(), "Adam's state is all tensors");
        let mut got: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        got.sort_unstable();
        assert_eq!(json!(got), keys[&index.to_string()]);
        for t in tensors {
            let want = st.tensor(&format!("state.{index}.{}", t.name)).unwrap();
            assert_eq!((t.dtype, t.shape.as_slice()), (want.dtype(), want.shape()));
            assert!(t.data.as_slice() == want.data(), "state.{index}.{}", t.name);
        }
    }
}

#[test]
fn resnet18_state_dict_is_read_bit_for_bit_from_the_mapped_file() {
    let case = &files()["resnet18"];
    let contents = read(path_of(&case["file"])).unwrap();
    assert_eq!(contents.source, SourceKind::TorchStateDict);
    assert!(contents.optimizer.is_none() && contents.scheduler.is_none() && contents.user.is_empty());
    assert_eq!(contents.model.len(), 122);
    assert_tensors(&contents.model, &path_of(&case["expected"]), &case["model"]);
    // Contiguous tensors are ranges of the mapped file, not copies.
    assert!(contents.model.iter().all(is_mapped));
}

#[test]
fn training_dicts_carry_adam_state_scheduler_and_plain_values() {
    for name in ["train_steplr", "train_named"] {
        let case = &files()[name];
        let contents = read(path_of(&case["file"])).unwrap();
        assert_eq!(contents.source, SourceKind::TorchTrainingDict, "{name}");
        assert_tensors(&contents.model, &path_of(&case["expected"]), &case["model"]);
        assert_optimizer(&contents, &case["optimizer"]);
        let sched = contents.scheduler.as_ref().expect("scheduler state");
        assert_eq!(Value::Object(sched.state.clone()), case["scheduler"], "{name}");
        assert_eq!(Value::Object(contents.user.clone()), case["user"], "{name}");
        // Ints stay ints and floats floats.
        assert!(contents.user["epoch"].is_i64() && contents.user["loss"].is_f64());
    }
    let named = read(path_of(&files()["train_named"]["file"])).unwrap();
    let names = named
        .optimizer
        .unwrap()
        .param_names
        .expect("param_names from named_parameters");
    assert_eq!(
        names,
        [
            "fc1.weight",
            "fc1.bias",
            "bn.weight",
            "bn.bias",
            "fc2.weight",
            "fc2.bias"
        ]
    );
    // MultiStepLR's milestones Counter, as FORMAT.md section 6 writes it.
    assert_eq!(named.scheduler.unwrap().state["milestones"], json!({"2": 1, "5": 2}));
}

#[test]
fn views_shared_storages_empty_tensors_and_every_dtype() {
    let case = &files()["layouts"];
    for file in [&case["file"], &case["legacy_format"]] {
        let contents = read(path_of(file)).unwrap();
        assert_eq!(contents.source, SourceKind::TorchStateDict);
        assert_tensors(&contents.model, &path_of(&case["expected"]), &case["model"]);
        let m = &contents.model;
        // A contiguous view is a range of the file (in both formats); a
        // strided one is made contiguous.
        for name in ["base", "row", "shared", "f64", "i64"] {
            assert!(is_mapped(by_name(m, name)), "{name} is copied");
        }
        for name in ["transposed", "column", "strided", "bf16", "i32"] {
            assert!(!is_mapped(by_name(m, name)), "{name} is mapped");
        }
        assert_eq!(by_name(m, "empty").shape, [0, 5]);
        assert_eq!(by_name(m, "empty_view").shape, [0, 6]);
        assert!(by_name(m, "scalar").shape.is_empty());
    }
}

#[test]
fn files_of_the_original_package_are_read_without_unpickling() {
    let case = &files()["legacy"];
    let contents = read(path_of(&case["file"])).unwrap();
    assert_eq!(contents.source, SourceKind::Legacy);
    assert!(contents.model_class.is_none(), "0.1 files name no class");
    assert_tensors(&contents.model, &path_of(&case["expected"]), &case["model"]);
    assert_optimizer(&contents, &case["optimizer"]);
    let sched = contents.scheduler.as_ref().unwrap();
    assert_eq!(Value::Object(sched.state.clone()), case["scheduler"]);
    // The kwargs and the timestamp are the format's own keys, not user
    // values: they are kept for the classes a conversion is given.
    assert_eq!(Value::Object(contents.user.clone()), case["user"]);
    let kwargs = |v: Value| Some(v.as_object().unwrap().clone());
    assert_eq!(contents.recorded_kwargs.model, kwargs(serde_json::json!({})));
    assert_eq!(
        contents.recorded_kwargs.optimizer,
        kwargs(serde_json::json!({"lr": 0.01}))
    );
    assert_eq!(
        contents.recorded_kwargs.scheduler,
        kwargs(serde_json::json!({"milestones": [2, 5, 5], "gamma": 0.1}))
    );
    assert_eq!(contents.timestamp, Some(7));
}

fn unsafe_global(path: &Path) -> String {
    match read(path) {
        Err(Error::UnsafePickle { file, global }) => {
            assert_eq!(file, path);
            global
        }
        other => panic!("{}: expected UnsafePickle, got {other:?}", path.display()),
    }
}

#[test]
fn a_pickle_that_calls_anything_else_is_refused_and_nothing_runs() {
    let f = files();
    for (name, case) in f["hostile"].as_object().unwrap() {
        let global = unsafe_global(&path_of(&case["file"]));
        assert_eq!(global, case["global"].as_str().unwrap(), "{name}");
    }
    assert_eq!(f["hostile"]["system"]["global"], "posix.system");
    assert_eq!(f["hostile"]["eval"]["global"], "__builtin__.eval");
    assert_eq!(f["hostile"]["torch_load"]["global"], "torch.serialization.load");
    assert!(!path_of(&f["canary"]).exists(), "the payload ran");
}

#[test]
fn unsupported_dtypes_and_expanded_tensors_are_refused_by_name() {
    let f = files();
    let err = read(path_of(&f["complex"])).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::InvalidForeign { .. }), "{err:?}");
    assert!(
        text.contains("tensor z") && text.contains("ComplexFloatStorage"),
        "{text}"
    );
    let err = read(path_of(&f["expanded"])).unwrap_err();
    assert!(
        matches!(err, Error::InvalidForeign { .. }) && err.to_string().contains("expanded"),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupt_files_fail_cleanly() {
    let dir = scratch("truncated");
    let whole = std::fs::read(path_of(&files()["train_steplr"]["file"])).unwrap();
    for cut in [
        0,
        4,
        100,
        whole.len() / 3,
        whole.len() / 2,
        whole.len() - 30,
        whole.len() - 1,
    ] {
        let path = common::write_file(&dir, &format!("cut_{cut}.pt"), &whole[..cut]);
        let err = read(&path).unwrap_err();
        assert!(
            matches!(err, Error::InvalidForeign { .. } | Error::Format(_)),
            "cut at {cut}: {err:?}"
        );
    }
    // One flipped byte in a storage: its CRC-32 no longer matches.
    let resnet = std::fs::read(path_of(&files()["resnet18"]["file"])).unwrap();
    let mut corrupt = resnet.clone();
    let at = resnet.len() / 2;
    corrupt[at] ^= 0x55;
    let path = common::write_file(&dir, "corrupt.pt", &corrupt);
    let err = read(&path).unwrap_err().to_string();
    assert!(err.contains("CRC-32"), "{err}");

    let legacy = std::fs::read(path_of(&files()["legacy"]["file"])).unwrap();
    let path = common::write_file(&dir, "legacy_cut.zip", &legacy[..legacy.len() - 10]);
    assert!(read(&path).is_err());
}

// ---------------------------------------------------------------------------
// Hand-made pickles: the limits of the reader.

fn short_str(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

/// A `torch.save` archive of `data.pkl` and storage members.
fn torch_zip(dir: &Path, name: &str, pickle: Vec<u8>, storages: &[(&str, Vec<u8>)]) -> PathBuf {
    let mut names = vec![
        ("a/data.pkl".to_owned(), pickle),
        ("a/version".to_owned(), b"3\n".to_vec()),
    ];
    for (key, bytes) in storages {
        names.push((format!("a/data/{key}"), bytes.clone()));
    }
    let members: Vec<_> = names.iter().map(|(n, d)| common::member(n, d.clone())).collect();
    common::write_file(dir, name, &common::build_zip(&members))
}

/// `{"w": tensor}` whose storage declares `numel` floats and whose tensor
/// has `size` elements; `legacy` writes the 6-field persistent id.
fn one_tensor_pickle(numel: i32, size: i32, legacy: bool) -> Vec<u8> {
    let mut p = b"\x80\x02}".to_vec();
    p.extend(short_str("w"));
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    p.extend(short_str("storage"));
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    p.extend(short_str("0"));
    p.extend(short_str("cpu"));
    p.push(b'J');
    p.extend_from_slice(&numel.to_le_bytes());
    if legacy {
        p.push(b'N');
    }
    p.extend_from_slice(b"tQK\x00J");
    p.extend_from_slice(&size.to_le_bytes());
    p.extend_from_slice(b"\x85K\x01\x85\x89}tRs.");
    p
}

/// torch's legacy format around `object` (one storage "0" of `stored`
/// elements whose header says `declared`).
fn legacy_format(object: Vec<u8>, declared: u64, stored: &[u8]) -> Vec<u8> {
    let mut f = b"\x80\x02\x8a\x0a".to_vec();
    f.extend_from_slice(&0x1950A86A20F9469CFC6Cu128.to_le_bytes()[..10]);
    f.extend_from_slice(b".\x80\x02M\xe9\x03.\x80\x02}");
    f.extend(short_str("little_endian"));
    f.extend_from_slice(b"\x88s.");
    f.extend(object);
    f.extend_from_slice(b"\x80\x02]");
    f.extend(short_str("0"));
    f.extend_from_slice(b"a.");
    f.extend_from_slice(&declared.to_le_bytes());
    f.extend_from_slice(stored);
    f
}

#[test]
fn hand_made_files_read_as_torch_reads_them() {
    let dir = scratch("hand_made");
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let path = torch_zip(&dir, "ok.pt", one_tensor_pickle(2, 2, false), &[("0", data.clone())]);
    let c = read(&path).unwrap();
    assert_eq!(
        (c.model[0].name.as_str(), c.model[0].shape.as_slice()),
        ("w", &[2usize][..])
    );
    assert_eq!(c.model[0].data.as_slice(), &data[..]);
    let path = common::write_file(
        &dir,
        "ok_legacy.pt",
        &legacy_format(one_tensor_pickle(2, 2, true), 2, &data),
    );
    assert_eq!(read(&path).unwrap().model[0].data.as_slice(), &data[..]);
}

#[test]
fn storages_larger_than_the_file_are_refused_before_allocating() {
    let dir = scratch("lengths");
    let data = vec![0u8; 8];
    let huge = 1 << 30;
    // The pickle declares 2^30 floats; the member holds 8 bytes.
    let path = torch_zip(
        &dir,
        "member.pt",
        one_tensor_pickle(huge, huge, false),
        &[("0", data.clone())],
    );
    let err = read(&path).unwrap_err().to_string();
    assert!(err.contains("holds 8 bytes"), "{err}");
    // A tensor that reads past its storage.
    let path = torch_zip(
        &dir,
        "view.pt",
        one_tensor_pickle(2, huge, false),
        &[("0", data.clone())],
    );
    let err = read(&path).unwrap_err().to_string();
    assert!(err.contains("reads element"), "{err}");
    // The legacy format's storage header claims 2^40 elements.
    let file = legacy_format(one_tensor_pickle(2, 2, true), 1 << 40, &data);
    let path = common::write_file(&dir, "legacy.pt", &file);
    let err = read(&path).unwrap_err().to_string();
    assert!(err.contains("bytes left"), "{err}");
    // Strings and memo indices that point past the data.
    for (name, body) in [
        ("string", b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\x00\x00.".to_vec()),
        ("memo", b"\x80\x02}r\x00\x00\x00\x40.".to_vec()),
        ("get", b"\x80\x02j\x00\x00\x00\x40.".to_vec()),
        ("frame", b"\x80\x04\x95\xff\xff\xff\xff\xff\x00\x00\x00}.".to_vec()),
        ("long", b"\x80\x02\x8b\xff\xff\xff\x7f\x00.".to_vec()),
    ] {
        let path = torch_zip(&dir, &format!("{name}.pt"), body, &[]);
        assert!(matches!(read(&path), Err(Error::InvalidForeign { .. })), "{name}");
    }
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    let dir = scratch("deep");
    let depth = 200_000;
    // {"model": {}, "deep": ((([[[...]]],),)...)}: nested lists, then tuples.
    let mut p = b"\x80\x02}(".to_vec();
    p.extend(short_str("model"));
    p.push(b'}');
    p.extend(short_str("deep"));
    p.extend(std::iter::repeat_n(b']', depth));
    p.extend(std::iter::repeat_n(b'a', depth - 1));
    p.extend(std::iter::repeat_n(b'\x85', 1000));
    p.extend_from_slice(b"u.");
    let path = torch_zip(&dir, "deep.pt", p, &[]);
    let err = read(&path).unwrap_err();
    assert!(err.to_string().contains("nested deeper"), "{err}");
}

#[test]
fn shared_containers_do_not_expand_exponentially() {
    // {"model": {}, "x": L40} where L(k+1) = [L(k), L(k)] through the memo:
    // 2^40 values from some 300 bytes.
    let mut p = b"\x80\x04}(".to_vec();
    p.extend(short_str("model"));
    p.push(b'}');
    p.extend(short_str("x"));
    p.push(b']');
    for level in 0..40u8 {
        p.extend_from_slice(&[0x94, b'0', b']', b'(', b'h', level, b'h', level, b'e']);
    }
    p.extend_from_slice(b"u.");
    let path = torch_zip(&scratch("shared"), "shared.pt", p, &[]);
    let err = read(&path).unwrap_err().to_string();
    assert!(err.contains("more values than its pickle has bytes"), "{err}");
}

#[test]
fn globals_named_on_the_stack_are_checked_too() {
    let dir = scratch("stack_global");
    let mut p = b"\x80\x04".to_vec();
    p.extend_from_slice(b"\x8c\x08builtins\x94\x8c\x04exec\x94\x93");
    p.extend_from_slice(b"\x8c\x0cprint('hi')\x85R.");
    let path = torch_zip(&dir, "exec.pt", p, &[]);
    assert_eq!(unsafe_global(&path), "builtins.exec");
    // A storage class outside persistent ids is never callable.
    let p = b"\x80\x02ctorch\nFloatStorage\n)R.".to_vec();
    let path = torch_zip(&dir, "call_storage.pt", p, &[]);
    assert!(matches!(read(&path), Err(Error::InvalidForeign { .. })));
    // Extension codes name globals indirectly: refused.
    let path = torch_zip(&dir, "ext.pt", b"\x80\x02\x82\x01.".to_vec(), &[]);
    assert!(matches!(read(&path), Err(Error::UnsafePickle { .. })));
}
