//! The demo: build the built-in MLP through the registry, train it a few
//! steps, save a checkpoint and an inference file, then load the checkpoint
//! in a fresh process and check that weights and outputs are equal.
//!
//!     cargo run --release --example quickstart -- OUT_DIR

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use pytorch_saver::{models, ModelContainer, UserMetadata};
use serde_json::{json, Value};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

/// A fixed input whose outputs travel in the metadata, for the check.
fn probe() -> Tensor {
    Tensor::linspace(-1.0, 1.0, 8, (Kind::Float, Device::Cpu)).reshape([2, 4])
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 tensor")
}

fn save(dir: &Path) -> pytorch_saver::Result<PathBuf> {
    tch::manual_seed(0);
    let mut container = ModelContainer::new();
    let kwargs = json!({"in_dim": 4, "hidden_dim": 32, "n_classes": 3, "n_layers": 3});
    container.initialize(models::MLP, kwargs.as_object().cloned().unwrap_or_default())?;
    println!("built {} with {kwargs}", models::MLP);

    // A few steps of tch's Adam on a toy problem: the class is the index of
    // the largest of the first three features.
    let model = container.model()?;
    let mut opt = nn::Adam::default().build(model.var_store(), 1e-2)?;
    let x = Tensor::randn([256, 4], (Kind::Float, Device::Cpu));
    let y = x.narrow(1, 0, 3).argmax(1, false);
    let mut loss = 0.0;
    for _ in 0..100 {
        let l = model.forward_t(&x, true)?.cross_entropy_for_logits(&y);
        opt.backward_step(&l);
        loss = l.double_value(&[]);
    }
    println!("trained 100 steps, loss {loss:.4}");

    let out = model.forward(&probe())?;
    let meta = UserMetadata::new()
        .with("loss", loss)?
        .with("epoch", 100)?
        .with("probe_output", json!(to_vec(&out)))?;
    let path = container.save(dir, "quickstart", &meta)?;
    println!("wrote {}", path.display());
    let inference = container.save_inference(dir, "quickstart", &UserMetadata::new())?;
    println!("wrote {}", inference.display());
    Ok(path)
}

fn load(path: &Path) -> pytorch_saver::Result<bool> {
    let mut container = ModelContainer::new();
    let metadata = container.load(path)?;
    let model = container.model()?;
    println!(
        "fresh process loaded {} ({} tensors), epoch {}, loss {}",
        model.class(),
        model.state_dict().len(),
        metadata["epoch"],
        metadata["loss"]
    );
    let got = to_vec(&model.forward(&probe())?);
    let want: Vec<f32> = metadata["probe_output"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).map(|v| v as f32).collect())
        .unwrap_or_default();
    let equal = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
    println!(
        "forward output after load {} the one before save: {got:?}",
        if equal { "equals" } else { "DIFFERS FROM" }
    );
    Ok(equal)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, path] if flag == "--load" => load(Path::new(path)),
        [dir] => save(Path::new(dir)).and_then(|path| {
            // Load in a fresh process: nothing survives but the file.
            let exe = std::env::current_exe().map_err(|e| pytorch_saver::Error::Torch(e.to_string()))?;
            let status = Command::new(exe)
                .arg("--load")
                .arg(&path)
                .status()
                .map_err(|e| pytorch_saver::Error::Torch(e.to_string()))?;
            Ok(status.success())
        }),
        _ => {
            eprintln!("usage: quickstart OUT_DIR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}
