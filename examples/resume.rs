//! The demo's third act: resume in Rust what Python trained.
//!
//!     cargo run --release --example resume -- CHECKPOINT PROBE_JSON OUT_DIR
//!
//! Loads the checkpoint examples/python/train.py wrote with no model code
//! (the portable Sequential, Adam and the cosine schedule are rebuilt by
//! name), checks that its outputs on the probe are the ones Python recorded,
//! trains 40 more steps on images made here the way Python made them, and
//! saves a checkpoint and an inference file with the new outputs in their
//! metadata. Prints the inference file's path last.

use std::path::Path;
use std::process::ExitCode;

use pytorch_saver::models::Sequential;
use pytorch_saver::{Error, ModelContainer, Result, UserMetadata};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const CLASSES: [&str; 3] = ["horizontal", "vertical", "diagonal"];

/// `n` noisy 8x8 line images and their classes, as train.py's `batch`:
/// a horizontal (0), vertical (1) or diagonal (2) line at a random
/// position, plus 0.3 * normal noise.
fn batch(n: i64) -> (Tensor, Tensor) {
    let labels = Tensor::randint(3, [n], (Kind::Int64, Device::Cpu));
    let positions = Tensor::randint(8, [n], (Kind::Int64, Device::Cpu));
    let mut pixels = vec![0f32; (n * 64) as usize];
    for k in 0..n as usize {
        let (label, at) = (
            labels.int64_value(&[k as i64]),
            positions.int64_value(&[k as i64]) as usize,
        );
        let image = &mut pixels[k * 64..(k + 1) * 64];
        for i in 0..8 {
            let (row, col) = match label {
                0 => (at, i),
                1 => (i, at),
                _ => (i, (i + at) % 8),
            };
            image[row * 8 + col] = 1.0;
        }
    }
    let images = Tensor::from_slice(&pixels).reshape([n, 1, 8, 8]);
    let noise = Tensor::randn([n, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.3;
    (images + noise, labels)
}

fn show(title: &str, outputs: &Tensor) {
    println!("{title}");
    for row in Vec::<Vec<f32>>::try_from(outputs).expect("2-d f32") {
        let values: Vec<String> = row.iter().map(|v| format!("{v:+.6}")).collect();
        let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
        println!("  [{}] -> {}", values.join(" "), CLASSES[best]);
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).map(|x| x as f32).collect())
        .unwrap_or_default()
}

/// The probe of probe.json (`{"inputs": [[64 floats] x 4]}`, the Go
/// server's request format), as a `[4, 1, 8, 8]` batch.
fn probe(path: &Path) -> Result<Tensor> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let request: Value = serde_json::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let rows = request["inputs"].as_array().map(Vec::len).unwrap_or(0) as i64;
    let values: Vec<f32> = request["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(floats)
        .collect();
    Ok(Tensor::from_slice(&values).reshape([rows, 1, 8, 8]))
}

fn run(checkpoint: &Path, probe_json: &Path, out: &Path) -> Result<bool> {
    let mut container = ModelContainer::new();
    let metadata = container.load(checkpoint)?;
    let model = container.model()?;
    let layers: Vec<&str> = model
        .module::<Sequential>()
        .map(|s| s.layer_types().collect())
        .unwrap_or_default();
    println!(
        "Rust: loaded {} [{}] with {} and {}, step {}, no model code",
        model.class(),
        layers.join(", "),
        container.optimizer().map(|o| o.class()).unwrap_or("no optimizer"),
        container.scheduler().map(|s| s.class()).unwrap_or("no scheduler"),
        metadata["step"],
    );
    let probe = probe(probe_json)?;
    let outputs = container.model()?.forward(&probe)?;
    show("Rust: outputs on the probe", &outputs);
    let got = Vec::<f32>::try_from(outputs.flatten(0, -1)).expect("f32");
    let want = floats(&metadata["probe_outputs"]);
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let same = got.len() == want.len() && worst <= 1e-6;
    println!(
        "Rust: {} Python's (largest difference {worst:e})",
        if same { "the same as" } else { "DIFFERENT FROM" }
    );

    tch::manual_seed(1);
    let mut loss = f64::NAN;
    for _ in 0..40 {
        let (x, y) = batch(32);
        container.zero_grad()?;
        let l = container.model()?.forward_t(&x, true)?.cross_entropy_for_logits(&y);
        l.backward();
        container.step()?;
        container.scheduler_step()?;
        loss = l.double_value(&[]);
    }
    let (x, y) = batch(256);
    let model = container.model()?;
    let accuracy = model
        .forward(&x)?
        .argmax(1, false)
        .eq_tensor(&y)
        .to_kind(Kind::Float)
        .mean(Kind::Float);
    let accuracy = accuracy.double_value(&[]);
    println!(
        "Rust: resumed 40 steps, loss {loss:.4}, accuracy {accuracy:.3}, lr now {:.6}",
        container.lrs()?[0]
    );
    let outputs = model.forward(&probe)?;
    show("Rust: outputs on the probe after resuming", &outputs);

    let meta = UserMetadata::new()
        .with("step", 100)?
        .with("accuracy", accuracy)?
        .with(
            "probe_outputs",
            json!(Vec::<f32>::try_from(outputs.flatten(0, -1)).expect("f32")),
        )?;
    let saved = container.save(out, "stripes_rust", &meta)?;
    println!("Rust: wrote {}", saved.display());
    let inference = container.save_inference(out, "stripes_rust", &meta)?;
    println!("{}", inference.display());
    Ok(same)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [checkpoint, probe_json, out] = args.as_slice() else {
        eprintln!("usage: resume CHECKPOINT PROBE_JSON OUT_DIR");
        return ExitCode::from(2);
    };
    match run(Path::new(checkpoint), Path::new(probe_json), Path::new(out)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("resume: {e}");
            ExitCode::FAILURE
        }
    }
}
