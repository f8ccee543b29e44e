//! Across languages through S3 (moto's server on loopback): the Python
//! package saves an MLP with Adam to s3:// and Rust loads it from the URL
//! with the same outputs, bit for bit; Rust saves and the Python package
//! loads it from the URL, likewise.

mod common;

use std::process::Command;

use common::s3::prefix;
use pytorch_saver::{models, optim, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// Python: `save URL` saves a seeded MLP with Adam under URL and prints
/// {"url", "out"}; `load URL` loads it and prints {"out"}: the model's
/// outputs on the fixed probe `arange(12).reshape(3, 4) / 7`, as float32
/// bytes in hex.
const SCRIPT: &str = r#"
import json, sys, torch
from pytorch_saver import ModelContainer
from pytorch_saver.models import MLP
probe = (torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7)
def out(model):
    with torch.no_grad():
        return model.eval()(probe).contiguous().numpy().tobytes().hex()
mode, url = sys.argv[1], sys.argv[2]
if mode == "save":
    torch.manual_seed(3)
    c = ModelContainer()
    objs = c.initialize(MLP, {"in_dim": 4, "hidden_dim": 8, "n_classes": 3}, torch.optim.Adam, {"lr": 0.01})
    path = c.save(url, "py", loss=0.5)
    print(json.dumps({"url": path, "out": out(objs.model)}))
else:
    metadata, objs = ModelContainer().load(url)
    print(json.dumps({"out": out(objs.model), "loss": metadata.get("loss")}))
"#;

fn python(mode: &str, url: &str) -> Value {
    let out = Command::new(common::python())
        .args(["-c", SCRIPT, mode, url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rust_out(c: &ModelContainer) -> String {
    let probe = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([3, 4]) / 7.0;
    let y = c.model().unwrap().forward(&probe).unwrap().contiguous();
    common::bytes_of(&y).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn python_saves_to_s3_and_rust_loads_the_url() {
    let dir = prefix("interop_py");
    let saved = python("save", &dir);
    let url = saved["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{dir}/py_checkpoint_")), "{url}");
    let mut c = ModelContainer::new();
    let metadata = c.load(url).unwrap();
    assert_eq!(metadata["loss"], json!(0.5));
    assert_eq!(rust_out(&c), saved["out"].as_str().unwrap());
    assert_eq!(c.optimizer().unwrap().class(), "torch.optim.Adam");
}

#[test]
fn rust_saves_to_s3_and_python_loads_the_url() {
    let dir = prefix("interop_rs");
    let mut c = ModelContainer::new();
    c.initialize(
        ContainerSpec::model(
            models::MLP,
            json!({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})
                .as_object()
                .unwrap()
                .clone(),
        )
        .optimizer(optim::ADAM, json!({"lr": 0.01}).as_object().unwrap().clone()),
    )
    .unwrap();
    let url = c
        .save(&dir, "rs", &UserMetadata::new().with("loss", 0.5).unwrap())
        .unwrap();
    let loaded = python("load", url.to_str().unwrap());
    assert_eq!(loaded["out"].as_str().unwrap(), rust_out(&c));
    assert_eq!(loaded["loss"], json!(0.5));
}

/// Python: `dcp.save` through `pytorch_saver.distributed.Writer` to URL (one
/// process), printing the tensors' values as {name: [floats]}.
const SHARDED_SCRIPT: &str = r#"
import json, sys, warnings, torch
import torch.distributed.checkpoint as dcp
from pytorch_saver.distributed import Writer
warnings.simplefilter("ignore")
state = {"w": torch.arange(12, dtype=torch.float32).view(3, 4) / 3, "b": torch.ones(5), "step": 9}
dcp.save(state, storage_writer=Writer(sys.argv[1]), no_dist=True)
print(json.dumps({"w": state["w"].flatten().tolist(), "b": state["b"].tolist()}))
"#;

/// A sharded checkpoint that Python's DCP writer put on S3 opens in Rust
/// by its URL (the prefix and the index's URL alike), verifies, and
/// consolidates into a local weights file holding its values.
#[test]
fn python_writes_sharded_to_s3_and_rust_opens_and_consolidates_it() {
    use pytorch_saver::format::{Checkpoint, MemberName};
    use pytorch_saver::sharded::{consolidate, ShardedCheckpoint};

    let url = format!("{}/sharded", prefix("interop_sharded"));
    let out = Command::new(common::python())
        .args(["-c", SHARDED_SCRIPT, &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let values: Value = serde_json::from_slice(&out.stdout).unwrap();
    for location in [url.clone(), format!("{url}/index.json")] {
        let sharded = ShardedCheckpoint::open(&location).unwrap();
        sharded.verify().unwrap();
        assert_eq!(sharded.tensor_names(), ["b", "w"]);
        assert_eq!(sharded.values()["step"], json!(9));
        let w = sharded.read_tensor("w").unwrap();
        let got: Vec<f64> = w
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect();
        assert_eq!(json!(got), values["w"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("whole.zip");
    consolidate(&url, file.to_str().unwrap()).unwrap();
    let whole = Checkpoint::open(&file).unwrap();
    let names: Vec<&str> = whole
        .tensors(MemberName::Model)
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names.len(), 2);
    assert_eq!(whole.metadata().user["step"], json!(9));
}
