//! The demo: build the built-in MLP with AdamW and a warm-restarts cosine
//! schedule by name, train 100 steps, save a checkpoint and an inference
//! file, then load the checkpoint in a fresh process, check that the
//! outputs are equal, and resume training where it stopped.
//!
//!     cargo run --release --example quickstart -- OUT_DIR

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use pytorch_saver::{models, optim, sched, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

/// A fixed input whose outputs travel in the metadata, for the check.
fn probe() -> Tensor {
    Tensor::linspace(-1.0, 1.0, 8, (Kind::Float, Device::Cpu)).reshape([2, 4])
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 tensor")
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The toy problem: the class is the index of the largest of the first
/// three features. The same data in both processes (seeded).
fn data() -> (Tensor, Tensor) {
    tch::manual_seed(1);
    let x = Tensor::randn([256, 4], (Kind::Float, Device::Cpu));
    let y = x.narrow(1, 0, 3).argmax(1, false);
    (x, y)
}

/// `steps` steps of the container's optimizer and scheduler; the last loss.
fn train(container: &mut ModelContainer, steps: usize) -> pytorch_saver::Result<f64> {
    let (x, y) = data();
    let mut loss = f64::NAN;
    for _ in 0..steps {
        container.zero_grad()?;
        let l = container.model()?.forward_t(&x, true)?.cross_entropy_for_logits(&y);
        l.backward();
        container.step()?;
        container.scheduler_step()?;
        loss = l.double_value(&[]);
    }
    Ok(loss)
}

fn save(dir: &Path) -> pytorch_saver::Result<PathBuf> {
    tch::manual_seed(0);
    let mut container = ModelContainer::new();
    let model_kwargs = json!({"in_dim": 4, "hidden_dim": 32, "n_classes": 3, "n_layers": 3});
    let optim_kwargs = json!({"lr": 0.01, "weight_decay": 0.01});
    let scheduler_kwargs = json!({"T_0": 40, "eta_min": 0.001});
    container.initialize(
        ContainerSpec::model(models::MLP, kwargs(model_kwargs.clone()))
            .optimizer(optim::ADAMW, kwargs(optim_kwargs.clone()))
            .scheduler(sched::COSINE_ANNEALING_WARM_RESTARTS, kwargs(scheduler_kwargs.clone())),
    )?;
    println!("built {} {model_kwargs}", models::MLP);
    println!("  with {} {optim_kwargs}", optim::ADAMW);
    println!("  and {} {scheduler_kwargs}", sched::COSINE_ANNEALING_WARM_RESTARTS);

    let loss = train(&mut container, 100)?;
    println!("trained 100 steps, loss {loss:.4}, lr now {:.6}", container.lrs()?[0]);

    let out = container.model()?.forward(&probe())?;
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
    let optimizer = container.optimizer().map(|o| o.class()).unwrap_or("none");
    let scheduler = container.scheduler().map(|s| s.class()).unwrap_or("none");
    println!(
        "resuming with {optimizer} and {scheduler} at lr {:.6}",
        container.lrs()?[0]
    );
    let loss = train(&mut container, 50)?;
    println!(
        "trained 50 more steps, loss {loss:.4}, lr now {:.6}",
        container.lrs()?[0]
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
