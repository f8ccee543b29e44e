//! Checkpoints at s3:// URLs against a real S3 API server (moto's, on a
//! loopback port; tests/common/s3.rs): the round trip through
//! `ModelContainer`, `Checkpoint::open` and the CLI, create-only
//! publishing, and each bad input as a typed error naming the URL.

mod common;

use std::process::Command;

use common::s3::{list_keys, moto, prefix};
use common::{bytes_of, mse_step};
use pytorch_saver::format::{Checkpoint, LazyCheckpoint, MemberName};
use pytorch_saver::{models, optim, sched, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn trained() -> ModelContainer {
    let mut c = ModelContainer::new();
    c.initialize(
        ContainerSpec::model(models::MLP, kw(json!({"in_dim": 4, "hidden_dim": 16, "n_classes": 3})))
            .optimizer(optim::ADAM, kw(json!({"lr": 0.01})))
            .scheduler(sched::STEP_LR, kw(json!({"step_size": 2, "gamma": 0.5}))),
    )
    .unwrap();
    let x = Tensor::randn([8, 4], (Kind::Float, tch::Device::Cpu));
    let y = Tensor::randn([8, 3], (Kind::Float, tch::Device::Cpu));
    for _ in 0..3 {
        mse_step(&mut c, &x, &y);
    }
    c
}

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pytorch-saver"))
}

#[test]
fn a_container_round_trips_through_s3_bit_for_bit() {
    let dir = prefix("round_trip");
    let c = trained();
    let url = c
        .save(&dir, "run", &UserMetadata::new().with("loss", 0.25).unwrap())
        .unwrap();
    let url = url.to_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{dir}/run_checkpoint_")) && url.ends_with(".zip"),
        "{url}"
    );
    assert_eq!(
        list_keys(&moto().endpoint, "round_trip/"),
        [url.trim_start_matches("s3://pts-tests/")],
        "one object, under its final name, nothing else"
    );

    let mut loaded = ModelContainer::new();
    let metadata = loaded.load(&url).unwrap();
    assert_eq!(metadata["loss"], json!(0.25));
    let (a, b) = (c.model().unwrap().state_dict(), loaded.model().unwrap().state_dict());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert_eq!(bytes_of(t), bytes_of(&b[name]), "{name}");
    }
    // The optimizer's state too (Debug prints every tensor's values).
    assert_eq!(
        format!("{:?}", c.optimizer().unwrap().state_dict().unwrap()),
        format!("{:?}", loaded.optimizer().unwrap().state_dict().unwrap())
    );

    // Into existing objects, and the same file once more: `-1`.
    let mut again = trained();
    again.restore(&url).unwrap();
    for (name, t) in again.model().unwrap().state_dict() {
        assert_eq!(bytes_of(&t), bytes_of(&a[&name]), "{name}");
    }

    // Lazily: metadata and one tensor, verified structure.
    let lazy = LazyCheckpoint::open(&url).unwrap();
    let first = a.keys().next().unwrap();
    let entry = lazy.tensor(MemberName::Model, first).unwrap();
    assert_eq!(lazy.read_tensor(entry).unwrap(), bytes_of(&a[first]));

    // The CLI reads the URL too.
    let out = cli().args(["inspect", &url, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["path"], json!(url));
    let out = cli().args(["verify", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_taken_name_is_never_replaced_the_next_free_one_is_used() {
    let dir = prefix("collision");
    let t = common::raw(
        "w",
        pytorch_saver::format::Dtype::F32,
        vec![2],
        vec![0, 0, 128, 63, 0, 0, 0, 64],
    );
    let write =
        || common::write_raw_inference(std::path::Path::new(&dir), "fixed", &[&t], &Default::default()).unwrap();
    let (a, b, c) = (write(), write(), write());
    assert_eq!(a.to_str().unwrap(), format!("{dir}/fixed.zip"));
    assert_eq!(b.to_str().unwrap(), format!("{dir}/fixed-1.zip"));
    assert_eq!(c.to_str().unwrap(), format!("{dir}/fixed-2.zip"));
    for p in [a, b, c] {
        let ckpt = Checkpoint::open(&p).unwrap();
        assert_eq!(
            ckpt.tensor_bytes(ckpt.tensor(MemberName::Model, "w").unwrap()),
            &t.data[..]
        );
    }
}

/// A child process with an environment of its own (another endpoint):
/// opens (role `open`) or saves into (role `save`) the URL it is given,
/// and prints the outcome as one JSON line.
#[test]
fn child_process_role() {
    let Some((role, url)) = common::child_role() else {
        return;
    };
    let t = common::raw("w", pytorch_saver::format::Dtype::F32, vec![1], vec![0; 4]);
    let result = match role.as_str() {
        "open" => Checkpoint::open(&url).map(|_| ()),
        "save" => common::write_raw_inference(&url, "bad", &[&t], &Default::default()).map(|_| ()),
        other => panic!("unknown role {other}"),
    };
    match result {
        Ok(()) => println!("{{\"ok\": true}}"),
        Err(e) => println!("{{\"err\": {:?}, \"kind\": {:?}}}", e.to_string(), e.kind()),
    }
}

/// Runs a child with `endpoint` as its S3 endpoint; returns its outcome.
fn in_child(role: &str, url: &str, endpoint: &str) -> Value {
    let out = common::spawn_child(role, std::path::Path::new(url))
        .env("AWS_ENDPOINT_URL", endpoint)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.find("{\"").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no outcome: {text}{}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap()
}

fn assert_storage_error(outcome: &Value, url: &str, detail: &str) {
    assert_eq!(outcome["kind"], "Storage", "{outcome}");
    let message = outcome["err"].as_str().unwrap();
    assert!(message.contains(url), "{message:?} names {url}");
    assert!(message.contains(detail), "{message:?} says {detail:?}");
}

#[test]
fn bad_locations_are_storage_errors_that_name_the_url() {
    moto();
    let typed = |e: pytorch_saver::format::FormatError| json!({"err": e.to_string(), "kind": e.kind()});

    // A bucket that does not exist: opening and saving.
    let url = "s3://no-such-bucket-pts/run/a.zip";
    assert_storage_error(&typed(Checkpoint::open(url).unwrap_err()), url, "");
    let t = common::raw("w", pytorch_saver::format::Dtype::F32, vec![1], vec![0; 4]);
    let dir = "s3://no-such-bucket-pts/run";
    let e = common::write_raw_inference(std::path::Path::new(dir), "x", &[&t], &Default::default()).unwrap_err();
    assert_storage_error(&typed(e), dir, "");

    // A URL of a scheme no store has, and one without a bucket.
    let url = "foo://bucket/a.zip";
    assert_storage_error(
        &typed(Checkpoint::open(url).unwrap_err()),
        url,
        "unknown URL scheme \"foo\"",
    );
    assert_storage_error(
        &typed(Checkpoint::open("s3:///a.zip").unwrap_err()),
        "s3:///a.zip",
        "no bucket",
    );
    let out = cli().args(["inspect", url]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(url));

    // Credentials the server does not know (a second server that checks
    // them): refused at once, no retry.
    let strict = common::s3::start_moto(&[], true);
    let url = "s3://pts-tests/creds/a.zip";
    for role in ["open", "save"] {
        let target = if role == "open" { url } else { "s3://pts-tests/creds" };
        assert_storage_error(&in_child(role, target, &strict.endpoint), target, "403");
    }

    // An endpoint nothing listens on: the bounded retries end, with the
    // error (src/storage/store.rs `limits`).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    for role in ["open", "save"] {
        let target = if role == "open" { url } else { "s3://pts-tests/creds" };
        assert_storage_error(&in_child(role, target, &closed), target, "");
    }
}

#[test]
fn uploads_and_downloads_report_progress_by_the_contract() {
    use std::sync::{Arc, Mutex};
    let dir = prefix("progress");
    let calls = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let sink = calls.clone();
    let progress = pytorch_saver::progress::Progress::new(move |d, t| sink.lock().unwrap().push((d, t)));
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(
        models::MLP,
        kw(json!({"in_dim": 2048, "hidden_dim": 2048, "n_classes": 3})),
    ))
    .unwrap();
    c.set_save_progress(Some(progress.clone()));
    let url = c.save(&dir, "p", &UserMetadata::new()).unwrap();
    let size =
        pytorch_saver::storage::RemoteObject::open(match &pytorch_saver::storage::Location::parse(&url).unwrap() {
            pytorch_saver::storage::Location::Remote(r) => r,
            other => panic!("{other:?}"),
        })
        .unwrap()
        .size();
    let check = |calls: &[(u64, u64)], total: Option<u64>| {
        let t = calls[0].1;
        assert_eq!(calls.first(), Some(&(0, t)));
        assert_eq!(calls.last(), Some(&(t, t)));
        assert!(calls.windows(2).all(|w| w[0].0 < w[1].0 && w[1].1 == t), "{calls:?}");
        assert!(calls.len() > 3, "reported along the way: {calls:?}");
        if let Some(total) = total {
            assert_eq!(t, total, "an upload's total is the object's size");
        } else {
            assert!(t > size, "a download counts the object's bytes and the checks after it");
        }
    };
    check(&std::mem::take(&mut *calls.lock().unwrap()), Some(size));
    let mut loaded = ModelContainer::new();
    loaded
        .load_with(&url, &pytorch_saver::LoadOptions::new().with_progress(progress))
        .unwrap();
    check(&std::mem::take(&mut *calls.lock().unwrap()), None);
}
