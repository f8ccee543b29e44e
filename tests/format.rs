//! Formats v1 and v2 without tch (one test needs it): round trips through
//! the writer and reader (v2's typed values, extra state and weights kind,
//! v1 on request and its refusals), the kwargs getters' view of tags, the
//! writer's durability rules (no overwrite, no temp file left, clear
//! errors), and randomized and byte-by-byte corruption of hand-built files.
//! Each malformed file the reader must refuse is a file of the shared corpus
//! (tests/corpus, run by tests/corpus.rs), not a test here.

mod common;

use common::*;
use pytorch_saver::format::{
    write_checkpoint, Checkpoint, Dtype, FormatError, MemberName, Metadata, TensorMember, TensorSource, WriteOptions,
    DTYPES,
};
use serde_json::{json, Value};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// One tensor of every v1 dtype, plus rank-0 and empty ones.
fn every_dtype() -> Vec<RawTensor> {
    let mut out = Vec::new();
    for (i, &d) in DTYPES.iter().enumerate() {
        let size = d.bitsize() / 8;
        let bools = |n: usize| (0..n).map(|j| (j % 3 == 1) as u8).collect::<Vec<u8>>();
        let data = |n: usize| {
            if d == Dtype::BOOL {
                bools(n)
            } else {
                pattern(n * size, i as u8)
            }
        };
        out.push(raw(format!("t.{d:?}"), d, vec![2, 3], data(6)));
        out.push(raw(format!("scalar.{d:?}"), d, vec![], data(1)));
        out.push(raw(format!("empty.{d:?}"), d, vec![3, 0], vec![]));
    }
    out
}

fn write(dir: &std::path::Path, tensors: &[RawTensor], options: &WriteOptions) -> std::path::PathBuf {
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: tensors.iter().map(|t| t as &dyn TensorSource).collect(),
    }];
    write_checkpoint(
        dir,
        "m_checkpoint_1700000000",
        &document("checkpoint", "torch.nn.Linear"),
        &members,
        options,
    )
    .unwrap()
}

fn assert_round_trip(options: WriteOptions) {
    let dir = tempfile::tempdir().unwrap();
    let tensors = every_dtype();
    let path = write(dir.path(), &tensors, &options);
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.metadata().to_json(), metadata("checkpoint", "torch.nn.Linear"));
    assert_eq!(ckpt.tensors(MemberName::Model).len(), tensors.len());
    for t in &tensors {
        let e = ckpt.tensor(MemberName::Model, &t.name).unwrap();
        assert_eq!(e.dtype, t.dtype, "{}", t.name);
        assert_eq!(e.shape, t.shape, "{}", t.name);
        assert_eq!(ckpt.tensor_bytes(e), &t.data[..], "{}", t.name);
        let mut copy = vec![0u8; t.data.len()];
        ckpt.read_tensor_into(e, &mut copy).unwrap();
        assert_eq!(copy[..], t.data[..], "{}", t.name);
        assert_eq!(
            e.start % (t.dtype.bitsize() as u64 / 8),
            0,
            "{} is aligned to its dtype",
            t.name
        );
    }
    for m in ckpt.members() {
        assert_eq!(m.data_start % 64, 0, "{} data is 64-byte aligned", m.name);
    }
    // The reference safetensors implementation agrees on every value.
    let st = ckpt.safetensors(MemberName::Model).unwrap();
    for t in &tensors {
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(v.data(), &t.data[..]);
        assert_eq!(v.shape(), &t.shape[..]);
    }
}

#[test]
fn every_dtype_rank0_and_empty_round_trip_bit_exact() {
    assert_round_trip(WriteOptions::default());
}

#[test]
fn zip64_records_round_trip() {
    assert_round_trip(WriteOptions {
        force_zip64: true,
        ..WriteOptions::default()
    });
}

#[test]
fn member_data_and_tensor_data_are_64_byte_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &every_dtype(), &WriteOptions::default());
    let ckpt = Checkpoint::open(&path).unwrap();
    let model = ckpt.member(MemberName::Model).unwrap();
    let first = &model.tensors[0];
    assert_eq!(first.start % 64, 0, "tensor data area starts 64-aligned");
}

// ---- Hand-built files -------------------------------------------------------
//
// Each malformed file has one owner: the shared corpus (tests/corpus, run by
// tests/corpus.rs and by the C, Go and Python suites). Here: the builder
// that the randomized tests use, and what the corpus cannot hold.

fn valid_file() -> Vec<u8> {
    let meta = metadata("inference", "torch.nn.Linear");
    build_zip(&[
        member("metadata.json", metadata_bytes(&meta)),
        member("model.safetensors", small_model_member()),
    ])
}

#[test]
fn hand_built_valid_file_opens() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "ok.zip", &valid_file());
    let c = Checkpoint::open(&p).unwrap();
    assert_eq!(c.tensors(MemberName::Model)[0].name, "weight");
}

#[test]
fn every_single_byte_corruption_and_truncation_is_an_error_not_a_panic() {
    let bytes = valid_file();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.zip");
    std::fs::write(&p, &bytes).unwrap();
    let original = Checkpoint::open(&p).unwrap();
    let weight = original.tensor_bytes(&original.tensors(MemberName::Model)[0]).to_vec();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            std::fs::write(&p, &b).unwrap();
            // A few bytes carry nothing (padding, DOS time, version made
            // by); a flip there may pass, but must not change what is read.
            if let Ok(c) = Checkpoint::open(&p) {
                assert_eq!(c.metadata(), original.metadata(), "flip at {i} changed the metadata");
                assert_eq!(
                    c.tensor_bytes(&c.tensors(MemberName::Model)[0]),
                    &weight[..],
                    "flip at {i}"
                );
            }
        }
        std::fs::write(&p, &bytes[..i]).unwrap();
        assert!(Checkpoint::open(&p).is_err(), "truncation at {i} accepted");
    }
}

// ---- Writer: names, no overwrite, nothing left behind -----------------------

fn tmp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn existing_names_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("m_checkpoint_1700000000.zip");
    std::fs::write(&taken, b"someone else's file").unwrap();
    let tensors = every_dtype();
    let first = write(dir.path(), &tensors, &WriteOptions::default());
    let second = write(dir.path(), &tensors, &WriteOptions::default());
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's file");
    assert_eq!(first.file_name().unwrap(), "m_checkpoint_1700000000-1.zip");
    assert_eq!(second.file_name().unwrap(), "m_checkpoint_1700000000-2.zip");
    Checkpoint::open(&first).unwrap();
    Checkpoint::open(&second).unwrap();
    assert!(tmp_files(dir.path()).is_empty());
}

#[test]
fn missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir");
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: vec![],
    }];
    let e = write_checkpoint(
        &missing,
        "x",
        &document("inference", "torch.nn.Linear"),
        &members,
        &WriteOptions::default(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cannot use directory") && msg.contains("no/such/dir"),
        "{msg}"
    );
    assert!(!missing.exists());
}

#[test]
fn read_only_directory_is_a_clear_error_and_leaves_nothing() {
    // Root ignores permission bits, so use a directory no one can write:
    // procfs refuses file creation to everyone.
    let ro = if unsafe_is_root() {
        std::path::PathBuf::from("/proc/self")
    } else {
        ro_dir()
    };
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: vec![],
    }];
    let before: Vec<_> = std::fs::read_dir(&ro)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let e = write_checkpoint(
        &ro,
        "x",
        &document("inference", "torch.nn.Linear"),
        &members,
        &WriteOptions::default(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("cannot create"), "{msg}");
    let after: Vec<_> = std::fs::read_dir(&ro)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before.len(), after.len());
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn ro_dir() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    dir
}

#[test]
fn failed_write_removes_its_temp_file() {
    struct Liar;
    impl TensorSource for Liar {
        fn name(&self) -> &str {
            "liar"
        }
        fn dtype(&self) -> Dtype {
            Dtype::F32
        }
        fn shape(&self) -> Vec<usize> {
            vec![4]
        }
        fn bytes(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
            Ok(std::borrow::Cow::Owned(vec![0; 3]))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: vec![&Liar],
    }];
    let e = write_checkpoint(
        dir.path(),
        "x",
        &document("inference", "torch.nn.Linear"),
        &members,
        &WriteOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("gave 3 bytes"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp file, no checkpoint"
    );
}

#[test]
fn invalid_metadata_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: vec![],
    }];
    let write = |meta: &Metadata| write_checkpoint(dir.path(), "x", meta, &members, &WriteOptions::default());
    // What the schema refuses, as the reader would.
    let mut meta = document("inference", "torch.nn.Linear");
    meta.model.as_mut().unwrap().class = String::new();
    let e = write(&meta).unwrap_err();
    assert!(
        matches!(&e, FormatError::Schema { field, .. } if field == "__pytorch_saver__.model.class"),
        "{e}"
    );
    let mut meta = document("inference", "torch.nn.Linear");
    meta.format_version = 99;
    assert_eq!(write(&meta).unwrap_err().kind(), "UnsupportedVersion");
    // A user key that would replace a reserved one.
    let mut meta = document("inference", "torch.nn.Linear");
    meta.user.insert("timestamp".into(), json!(5));
    let e = write(&meta).unwrap_err();
    assert!(
        matches!(&e, FormatError::InvalidInput(m) if m.contains("\"timestamp\" is reserved")),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn directories_and_fifos_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let fifo = dir.path().join("pipe.zip");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = Checkpoint::open(&fifo).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

/// Random safetensors headers (plausible and hostile offsets, shapes and
/// dtypes): the reader never panics, and whatever it accepts satisfies
/// every invariant FORMAT.md section 4 states.
#[test]
fn random_tensor_headers_are_refused_or_consistent() {
    let dtypes = [
        "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "X",
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.zip");
    let meta = metadata("inference", "torch.nn.Linear");
    let mut rng = common::Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..1500 {
        let n = rng.below(4) as usize;
        let mut header = serde_json::Map::new();
        let mut cursor = 0u64;
        for t in 0..n {
            let dtype = dtypes[rng.below(dtypes.len() as u64) as usize];
            let shape: Vec<u64> = (0..rng.below(3)).map(|_| rng.below(4)).collect();
            let elem = match dtype {
                "F64" | "I64" => 8,
                "F32" | "I32" => 4,
                "F16" | "BF16" | "I16" => 2,
                _ => 1,
            };
            let size = shape.iter().product::<u64>() * elem;
            let (b, e) = match rng.below(6) {
                0 => (rng.below(64), rng.below(64)),
                1 => (cursor, cursor + size + 1),
                2 => (cursor.saturating_sub(1), cursor + size),
                3 => (u64::MAX - 3, u64::MAX),
                _ => (cursor, cursor + size),
            };
            cursor = e;
            header.insert(
                format!("t{t}"),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [b, e]}),
            );
        }
        let data_len = if rng.below(4) == 0 {
            rng.below(64)
        } else {
            cursor.min(4096)
        };
        let st = safetensors_bytes(&Value::Object(header), &vec![7u8; data_len as usize]);
        let zip = build_zip(&[
            member("metadata.json", metadata_bytes(&meta)),
            member("model.safetensors", st),
        ]);
        std::fs::write(&path, &zip).unwrap();
        if let Ok(c) = Checkpoint::open(&path) {
            accepted += 1;
            let m = c.member(MemberName::Model).unwrap();
            let mut end = None;
            for t in &m.tensors {
                if let Some(prev) = end {
                    assert_eq!(t.start, prev, "tensors tile the data");
                }
                assert_eq!(t.byte_len(), (t.numel() * t.dtype.bitsize() / 8) as u64);
                end = Some(t.end);
            }
            assert!(
                end.is_none_or(|e| e == m.data_start + m.size),
                "last tensor ends the member"
            );
        }
    }
    assert!(accepted > 50, "the generator also makes valid files ({accepted})");
}

/// Random tensor sets (names, every dtype, shapes with zeros and rank 0)
/// written and read back: the same set, the same bytes, every time.
#[test]
fn random_tensor_sets_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::Rng(0x1234_5678_9abc_def1);
    for round in 0..60 {
        let n = rng.below(12) as usize;
        let tensors: Vec<RawTensor> = (0..n)
            .map(|i| {
                let d = DTYPES[rng.below(DTYPES.len() as u64) as usize];
                let shape: Vec<usize> = (0..rng.below(4)).map(|_| rng.below(5) as usize).collect();
                let len = shape.iter().product::<usize>() * (d.bitsize() / 8);
                let data = (0..len)
                    .map(|_| {
                        if d == Dtype::BOOL {
                            (rng.next() & 1) as u8
                        } else {
                            rng.next() as u8
                        }
                    })
                    .collect();
                raw(format!("layer{}.p{i}", rng.below(3)), d, shape, data)
            })
            .collect();
        let options = WriteOptions {
            force_zip64: round % 5 == 0,
            ..WriteOptions::default()
        };
        let path = write(dir.path(), &tensors, &options);
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.tensors(MemberName::Model).len(), n);
        for t in &tensors {
            let e = ckpt.tensor(MemberName::Model, &t.name).unwrap();
            assert_eq!((e.dtype, &e.shape), (t.dtype, &t.shape));
            assert_eq!(ckpt.tensor_bytes(e), &t.data[..]);
        }
    }
}

/// An optimizer tensor: name and shape.
type OptTensor<'a> = (&'a str, Vec<usize>);

/// A checkpoint with the small Linear, `optimizer` internals and the
/// optimizer member's tensors (as (name, shape) of F32 zeros).
fn with_optimizer(opt: Value, tensors: &[OptTensor], scheduler: Option<Value>) -> Vec<u8> {
    let mut meta = metadata("checkpoint", "torch.nn.Linear");
    meta["__pytorch_saver__"]["optimizer"] = opt;
    meta.insert("optim_kwargs".into(), json!({"lr": 0.1}));
    if let Some(s) = scheduler {
        meta["__pytorch_saver__"]["scheduler"] = s;
        meta.insert("scheduler_kwargs".into(), json!({"step_size": 2}));
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let len = 4 * shape.iter().product::<usize>();
        header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    build_zip(&[
        member("metadata.json", metadata_bytes(&meta)),
        member("model.safetensors", small_model_member()),
        member(
            "optimizer.safetensors",
            safetensors_bytes(&Value::Object(header), &vec![0u8; offset]),
        ),
    ])
}

fn open_ok(bytes: &[u8]) -> Checkpoint {
    let dir = tempfile::tempdir().unwrap();
    Checkpoint::open(write_file(dir.path(), "ok.zip", bytes)).expect("a valid file")
}

/// The optimizer layout of a valid file, as the reader hands it out: the
/// parameter count, the non-tensor state keys of each index, the state
/// tensors (refusals of section 5 are in the corpus).
#[test]
fn optimizer_layout_of_a_valid_file_is_read() {
    let mut opt = sgd_internals();
    opt["state"] = json!({"0": {}, "1": {"note": 1}});
    let ok = open_ok(&with_optimizer(
        opt,
        &[
            ("state.0.step", vec![]),
            ("state.0.exp_avg", vec![2]),
            ("state.1.step", vec![]),
        ],
        Some(json!({"class": "torch.optim.lr_scheduler.StepLR", "state": {"last_epoch": 0}})),
    ));
    let optimizer = ok.metadata().optimizer.clone().unwrap();
    assert_eq!(optimizer.param_names, ["weight", "bias"]);
    assert_eq!(optimizer.state[&1], *json!({"note": 1}).as_object().unwrap());
    assert_eq!(ok.tensors(MemberName::Optimizer).len(), 3);
}

// ---------------------------------------------------------------------------
// Format version 2 (FORMAT.md section 11)

use pytorch_saver::format::{typed, ExtraEntry, FileKind, ManagerRecord};
use pytorch_saver::Kwargs;
use serde_json::Map;

/// A version 2 checkpoint document that uses every tag where the format
/// allows it, extra state with two tensors, and a manager block.
fn v2_document() -> Map<String, Value> {
    let v = json!({
        "model_kwargs": {
            "block": {"__type__": "class", "name": "torchvision.models.resnet.BasicBlock"},
            "dtype": {"__type__": "dtype", "name": "bfloat16"},
            "shape": {"__type__": "tuple", "items": [3, {"__type__": "tuple", "items": []}]},
            "table": {"__type__": "dict", "items": [[1, "one"], ["__type__", {"__type__": "float", "value": "nan"}]]},
            "cfg": {"__type__": "object", "codec": "dataclass", "class": "mypkg.Cfg", "fields": {"n": 2, "eps": {"__type__": "float", "value": "-inf"}}},
            "ns": {"__type__": "object", "codec": "namespace", "class": null, "fields": {}},
            "plain": {"a": [1, 2.5, null, true, "x"]}
        },
        "optim_kwargs": {"lr": 0.01, "betas": {"__type__": "tuple", "items": [0.9, 0.999]}},
        "scheduler_kwargs": {
            "schedulers": [{"__type__": "spec", "class": "torch.optim.lr_scheduler.StepLR", "kwargs": {"step_size": 2}}],
            "lr_lambda": {"__type__": "callable", "name": "train.warmup"}
        },
        "timestamp": 1_800_000_000u64,
        "note": {"__type__": "not interpreted in user metadata"},
        "__pytorch_saver__": {
            "format_version": 2,
            "kind": "checkpoint",
            "model": {"class": "mypkg.Net"},
            "optimizer": {
                "class": "torch.optim.Adam",
                "param_groups": [{"lr": 0.01, "betas": [0.9, 0.999], "params": [0, 1]}],
                "param_names": ["weight", "bias"],
                "state": {}
            },
            "scheduler": {"class": "torch.optim.lr_scheduler.SequentialLR", "state": {"last_epoch": 0}},
            "extra": {
                "rng": {"class": "pytorch_saver.RNG", "state": {"torch": {"cpu": {"__type__": "tensor", "name": "rng.torch.cpu"}, "cuda": []}}},
                "gen": {"class": "torch.Generator", "state": {"state": {"__type__": "tensor", "name": "gen.state"}}},
                "counters": {"class": "pytorch_saver.Counters", "state": {"step": 30, "epoch": 2}}
            },
            "manager": {"id": "run-1", "step": 30, "metrics": {"loss": 0.5, "acc": 1}},
            "producer": {"library": "pytorch-saver", "version": "0.2.0", "language": "rust"}
        }
    });
    v.as_object().unwrap().clone()
}

fn pretty(m: &Map<String, Value>) -> String {
    serde_json::to_string_pretty(m).unwrap()
}

#[test]
fn a_v2_document_with_every_tag_round_trips() {
    let original = v2_document();
    let parsed = Metadata::from_json(original.clone()).unwrap();
    assert_eq!(pretty(&parsed.to_json()), pretty(&original));
    assert_eq!(Metadata::from_json(parsed.to_json()).unwrap(), parsed);
    assert_eq!(parsed.format_version, 2);
    let model = parsed.model_spec().unwrap();
    assert_eq!(
        typed::as_class_ref(&model.kwargs["block"]),
        Some("torchvision.models.resnet.BasicBlock")
    );
    let extra = parsed.extra.as_ref().unwrap();
    assert_eq!(
        extra.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["rng", "gen", "counters"]
    );
    let refs: Vec<String> = parsed.extra_tensor_refs().into_iter().map(|r| r.name).collect();
    assert_eq!(refs, ["rng.torch.cpu", "gen.state"]);
    assert_eq!(parsed.manager.as_ref().unwrap().step, 30);
    assert_eq!(parsed.members().last(), Some(&MemberName::Extra));
    // User metadata stays plain JSON: "__type__" means nothing there.
    assert_eq!(
        parsed.user["note"],
        json!({"__type__": "not interpreted in user metadata"})
    );
}

/// The extra state's tensors of [`v2_document`].
fn extra_tensors() -> Vec<RawTensor> {
    vec![
        raw("rng.torch.cpu", Dtype::U8, vec![5], vec![1, 2, 3, 4, 5]),
        raw("gen.state", Dtype::U8, vec![2], vec![9, 8]),
    ]
}

fn model_tensors() -> Vec<RawTensor> {
    vec![
        raw("weight", Dtype::F32, vec![1, 2], pattern(8, 1)),
        raw("bias", Dtype::F32, vec![1], pattern(4, 2)),
    ]
}

fn sources(tensors: &[RawTensor]) -> Vec<&dyn TensorSource> {
    tensors.iter().map(|t| t as &dyn TensorSource).collect()
}

#[test]
fn extra_state_and_its_member_round_trip_through_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Metadata::from_json(v2_document()).unwrap();
    let (model, extra) = (model_tensors(), extra_tensors());
    let optimizer: Vec<RawTensor> = vec![];
    let members = [
        TensorMember {
            name: MemberName::Model,
            tensors: sources(&model),
        },
        TensorMember {
            name: MemberName::Optimizer,
            tensors: sources(&optimizer),
        },
        TensorMember {
            name: MemberName::Extra,
            tensors: sources(&extra),
        },
    ];
    let path = write_checkpoint(dir.path(), "v2", &meta, &members, &WriteOptions::default()).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.metadata(), &meta);
    let names: Vec<MemberName> = ckpt.members().iter().map(|m| m.name).collect();
    assert_eq!(names, MemberName::ALL);
    assert_eq!(ckpt.tensors(MemberName::Extra).len(), 2);
    for t in &extra {
        let e = ckpt.tensor(MemberName::Extra, &t.name).unwrap();
        assert_eq!((e.dtype, &e.shape), (t.dtype, &t.shape));
        assert_eq!(ckpt.tensor_bytes(e), &t.data[..]);
    }
    // The writer refuses a member that does not match the tags, as the
    // reader would, and leaves no file.
    let wrong = vec![raw("rng.torch.cpu", Dtype::U8, vec![1], vec![0])];
    let members = [
        TensorMember {
            name: MemberName::Model,
            tensors: sources(&model),
        },
        TensorMember {
            name: MemberName::Optimizer,
            tensors: sources(&optimizer),
        },
        TensorMember {
            name: MemberName::Extra,
            tensors: sources(&wrong),
        },
    ];
    let e = write_checkpoint(dir.path(), "bad", &meta, &members, &WriteOptions::default()).unwrap_err();
    assert_eq!(e.kind(), "TensorHeader", "{e}");
    assert!(e.to_string().contains("names tensor \"gen.state\""), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_weights_file_holds_tensors_and_names_no_class() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = document("inference", "torch.nn.Linear");
    meta.format_version = 2;
    meta.kind = FileKind::Weights;
    meta.model = None;
    let model = model_tensors();
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: sources(&model),
    }];
    let path = write_checkpoint(dir.path(), "w", &meta, &members, &WriteOptions::default()).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.metadata(), &meta);
    let json = ckpt.metadata().to_json();
    assert!(!json.contains_key("model_kwargs"));
    assert_eq!(json["__pytorch_saver__"]["kind"], "weights");
    assert!(json["__pytorch_saver__"].get("model").is_none());
    let e = ckpt.metadata().model_spec().unwrap_err();
    assert!(e.to_string().contains("names no model class"), "{e}");
    assert_eq!(ckpt.tensors(MemberName::Model).len(), 2);
}

#[test]
fn version_1_is_written_on_request_when_nothing_needs_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let meta = document("inference", "torch.nn.Linear");
    assert_eq!(meta.format_version, 1);
    let model = model_tensors();
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: sources(&model),
    }];
    let path = write_checkpoint(dir.path(), "v1", &meta, &members, &WriteOptions::default()).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.metadata().format_version, 1);
    assert_eq!(ckpt.metadata().to_json(), metadata("inference", "torch.nn.Linear"));
}

#[test]
fn version_1_refuses_what_needs_version_2_before_creating_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_tensors();
    let v1 = || document("checkpoint", "torch.nn.Linear");
    let mut weights = v1();
    weights.kind = FileKind::Weights;
    weights.model = None;
    let mut extra = v1();
    extra.extra = Some(vec![ExtraEntry {
        name: "counters".into(),
        class: "pytorch_saver.Counters".into(),
        state: json!({"step": 1}),
    }]);
    let mut manager = v1();
    manager.manager = Some(ManagerRecord {
        id: "run".into(),
        step: 1,
        metrics: Map::new(),
    });
    let mut class_tag = v1();
    class_tag
        .model
        .as_mut()
        .unwrap()
        .kwargs
        .insert("act".into(), json!([typed::class_ref("torch.nn.ReLU")]));
    let mut int_keys = v1();
    int_keys
        .model
        .as_mut()
        .unwrap()
        .kwargs
        .insert("map".into(), typed::dict([(json!(1), json!(2))]));
    for (meta, fragment) in [
        (weights, "the weights kind (__pytorch_saver__.kind)"),
        (extra, "extra training state (__pytorch_saver__.extra)"),
        (manager, "a manager block (__pytorch_saver__.manager)"),
        (class_tag, "a \"class\" tag at model_kwargs.act[0] needs version 2"),
        (int_keys, "non-string key 1 at model_kwargs.map.items[0]"),
    ] {
        let tensors = match meta.extra {
            Some(_) => vec![
                TensorMember {
                    name: MemberName::Model,
                    tensors: sources(&model),
                },
                TensorMember {
                    name: MemberName::Extra,
                    tensors: vec![],
                },
            ],
            None => vec![TensorMember {
                name: MemberName::Model,
                tensors: sources(&model),
            }],
        };
        let e = write_checkpoint(dir.path(), "v1", &meta, &tensors, &WriteOptions::default()).unwrap_err();
        assert!(
            matches!(&e, FormatError::InvalidInput(m) if m.contains(fragment) && m.contains("format version 1")),
            "{e}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file, not even a temporary one"
    );
}

#[test]
fn a_version_1_kwargs_object_with_the_type_key_is_a_dict_tag_and_written_back_plain() {
    let mut v1 = metadata("inference", "torch.nn.Linear");
    let odd = json!({"__type__": "user's own key", "nested": [{"__type__": 1}]});
    v1["model_kwargs"]["cfg"] = odd.clone();
    let meta = Metadata::from_json(v1.clone()).unwrap();
    let cfg = &meta.model_spec().unwrap().kwargs["cfg"];
    assert_eq!(typed::tag(cfg), Some("dict"));
    let pairs = typed::as_dict(cfg).unwrap();
    assert_eq!(pairs[0], (&json!("__type__"), &json!("user's own key")));
    assert_eq!(
        typed::tag(pairs[1].1[0].as_object().map(|_| &pairs[1].1[0]).unwrap()),
        Some("dict")
    );
    assert_eq!(meta.to_json(), v1);
    // Written as version 1: the file holds the plain object again.
    let dir = tempfile::tempdir().unwrap();
    let model = model_tensors();
    let members = [TensorMember {
        name: MemberName::Model,
        tensors: sources(&model),
    }];
    let path = write_checkpoint(dir.path(), "v1", &meta, &members, &WriteOptions::default()).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.metadata(), &meta);
    let m = ckpt.member(MemberName::Metadata).unwrap();
    let file = std::fs::read(&path).unwrap();
    let text: Map<String, Value> =
        serde_json::from_slice(&file[m.data_start as usize..(m.data_start + m.size) as usize]).unwrap();
    assert_eq!(text["model_kwargs"]["cfg"], odd);
    // The same document as version 2 keeps the dict tag in the file.
    let mut v2 = meta.clone();
    v2.format_version = 2;
    assert_eq!(typed::tag(&v2.to_json()["model_kwargs"]["cfg"]), Some("dict"));
    assert_eq!(Metadata::from_json(v2.to_json()).unwrap(), v2);
}

#[test]
fn in_a_version_1_file_extra_and_manager_keys_are_ignored_and_weights_is_no_kind() {
    let mut v1 = metadata("checkpoint", "torch.nn.Linear");
    v1["__pytorch_saver__"]["extra"] = json!(5);
    v1["__pytorch_saver__"]["manager"] = json!("x");
    let meta = Metadata::from_json(v1).unwrap();
    assert_eq!((meta.extra, meta.manager), (None, None));
    let mut v1 = metadata("weights", "torch.nn.Linear");
    v1["__pytorch_saver__"].as_object_mut().unwrap().remove("model");
    let e = Metadata::from_json(v1).unwrap_err();
    assert!(
        matches!(&e, FormatError::Schema { field, reason } if field == "__pytorch_saver__.kind" && reason.contains("needs format version 2")),
        "{e}"
    );
}

#[test]
fn kwargs_getters_read_tuple_float_class_and_dtype_tags() {
    let kwargs = json!({
        "betas": typed::tuple([json!(0.9), json!(0.999)]),
        "max_norm": typed::nonfinite(f64::INFINITY),
        "eps": 1e-8,
        "act": typed::class_ref("torch.nn.GELU"),
        "dtype": typed::dtype("float16"),
        "n": 3
    });
    let map = kwargs.as_object().unwrap();
    let kw = Kwargs::new("mypkg.Net", map, false);
    assert_eq!(kw.as_map(), map, "the raw map keeps its tags");
    assert_eq!(kw.f64_or("max_norm", 0.0).unwrap(), f64::INFINITY);
    assert_eq!(kw.f64_or("eps", 0.0).unwrap(), 1e-8);
    assert_eq!(kw.class_name("act").unwrap(), Some("torch.nn.GELU"));
    assert_eq!(kw.class_name("absent").unwrap(), None);
    assert_eq!(kw.dtype("dtype").unwrap(), Some("float16"));
    let e = kw.class_name("n").unwrap_err().to_string();
    assert!(e.contains("kwarg \"n\" must be a class reference"), "{e}");
    let e = kw.dtype("act").unwrap_err().to_string();
    assert!(e.contains("kwarg \"act\" must be a torch dtype"), "{e}");
    let e = kw.f64_or("act", 0.0).unwrap_err().to_string();
    assert!(e.contains("kwarg \"act\" must be a number"), "{e}");
    assert!(kw.finish().is_err(), "betas and n were not read");
    assert_eq!(kw.required_i64("n").unwrap(), 3);
}

#[test]
fn schedulers_read_tuples_where_pytorch_takes_a_list_or_tuple() {
    use pytorch_saver::format::metadata::ParamGroup;
    use pytorch_saver::sched::Scheduler;
    let group = || ParamGroup::new(vec![0], json!({"lr": 0.1}).as_object().unwrap().clone());
    let as_list = json!({"milestones": [2, 4], "gamma": 0.5});
    let as_tuple = json!({"milestones": typed::tuple([json!(2), json!(4)]), "gamma": 0.5});
    let mut a = vec![group()];
    let mut b = vec![group()];
    let sa = Scheduler::new(
        "torch.optim.lr_scheduler.MultiStepLR",
        as_list.as_object().unwrap(),
        &mut a,
    )
    .unwrap();
    let sb = Scheduler::new(
        "torch.optim.lr_scheduler.MultiStepLR",
        as_tuple.as_object().unwrap(),
        &mut b,
    )
    .unwrap();
    assert_eq!(sa.state_dict(), sb.state_dict());
    let one_cycle = json!({"max_lr": typed::tuple([json!(0.5)]), "total_steps": 10, "cycle_momentum": false});
    let mut c = vec![group()];
    Scheduler::new(
        "torch.optim.lr_scheduler.OneCycleLR",
        one_cycle.as_object().unwrap(),
        &mut c,
    )
    .unwrap();
    assert_eq!(c[0].options.get("max_lr"), Some(&json!(0.5)));
}

#[cfg(feature = "torch")]
#[test]
fn adam_takes_betas_as_a_tuple_and_records_them_as_a_list() {
    use pytorch_saver::optim::Optimizer;
    let params = || {
        vec![
            (
                "weight".to_string(),
                tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)),
            ),
            (
                "bias".to_string(),
                tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)),
            ),
        ]
    };
    let kwargs = json!({"lr": 0.01, "betas": typed::tuple([json!(0.8), json!(0.99)])});
    let opt = Optimizer::new("torch.optim.Adam", kwargs.as_object().unwrap(), params()).unwrap();
    assert_eq!(opt.param_groups()[0].get("betas"), Some(&json!([0.8, 0.99])));
    assert_eq!(opt.kwargs(), kwargs.as_object().unwrap(), "the kwargs keep their tuple");
    let bad = json!({"betas": typed::tuple([json!(0.8), json!(1.5)])});
    let e = Optimizer::new("torch.optim.Adam", bad.as_object().unwrap(), params()).unwrap_err();
    assert!(e.to_string().contains("betas[1]"), "{e}");
}
