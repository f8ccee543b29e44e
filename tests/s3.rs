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
