//! `pytorch-saver convert IN OUT`: a `torch.save` file, a safetensors
//! file, a Hugging Face directory, a file of the original package or of
//! this format, to a file of this format, a safetensors file or a Hugging
//! Face directory.

use std::path::PathBuf;
use std::process::ExitCode;

use pytorch_saver::convert::{self, ConvertOptions, SourceKind, Target};
use pytorch_saver::format::ClassSpec;
use serde_json::{Map, Value};

use crate::progress_bar;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum To {
    /// A pytorch-saver file: a checkpoint when the model class is known, an
    /// inference file with --inference, else a weights file.
    PytorchSaver,
    /// One safetensors file of the model's state dict.
    Safetensors,
    /// A Hugging Face model directory (config.json and model.safetensors,
    /// or shards with their index).
    Hf,
}

/// Convert a checkpoint: IN is a torch.save file, a safetensors file, a
/// Hugging Face model directory, or a pytorch-saver file (any version);
/// OUT is created and never replaced. Pickles are read without running
/// them: only containers, tensors and plain values are allowed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The input file or directory (its kind is detected from its content).
    input: PathBuf,
    /// The output: a .zip file, a .safetensors file or a directory.
    output: PathBuf,
    /// The output's kind.
    #[arg(long, value_enum, default_value = "pytorch-saver")]
    to: To,
    /// The model class (`torchvision.models.resnet.ResNet`); replaces what
    /// the input names.
    #[arg(long, value_name = "CLASS")]
    model: Option<String>,
    /// The model's constructor kwargs, a JSON object (typed values as in
    /// FORMAT.md 11.2).
    #[arg(long, value_name = "JSON", requires = "model")]
    model_kwargs: Option<String>,
    /// The optimizer class (`torch.optim.Adam`), for the input's optimizer
    /// state.
    #[arg(long, value_name = "CLASS")]
    optimizer: Option<String>,
    /// The optimizer's constructor kwargs, a JSON object.
    #[arg(long, value_name = "JSON", requires = "optimizer")]
    optim_kwargs: Option<String>,
    /// The scheduler class, for the input's scheduler state.
    #[arg(long, value_name = "CLASS")]
    scheduler: Option<String>,
    /// The scheduler's constructor kwargs, a JSON object.
    #[arg(long, value_name = "JSON", requires = "scheduler")]
    scheduler_kwargs: Option<String>,
    /// Whether each kwargs option was given (a class without them takes
    /// what the input recorded).
    #[arg(skip)]
    model_kwargs_given: bool,
    #[arg(skip)]
    optim_kwargs_given: bool,
    #[arg(skip)]
    scheduler_kwargs_given: bool,
    /// Write an inference file: the model alone (optimizer and scheduler
    /// state are left out).
    #[arg(long)]
    inference: bool,
    /// With --to hf: the largest shard, in bytes or with a unit (200MB,
    /// 2GiB); one model.safetensors without it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_shard_size: Option<u64>,
}

/// A size as `save_pretrained` takes it: bytes, or a number with KB, MB,
/// GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 200MB"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (use B, KB, MB, GB, KiB, MiB or GiB)")),
    };
    match number.checked_mul(scale) {
        Some(0) | None => Err(format!("{s:?} is not a size of at least one byte")),
        Some(n) => Ok(n),
    }
}

fn class_spec(flag: &str, class: Option<String>, kwargs: Option<String>) -> Result<Option<ClassSpec>, String> {
    let Some(class) = class else { return Ok(None) };
    let kwargs = match kwargs {
        None => Map::new(),
        Some(text) => match serde_json::from_str(&text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(format!("--{flag}-kwargs must be a JSON object")),
            Err(e) => return Err(format!("--{flag}-kwargs is not valid JSON: {e}")),
        },
    };
    Ok(Some(ClassSpec::new(class, kwargs)))
}

fn options(args: &mut Args) -> Result<ConvertOptions, String> {
    args.model_kwargs_given = args.model_kwargs.is_some();
    args.optim_kwargs_given = args.optim_kwargs.is_some();
    args.scheduler_kwargs_given = args.scheduler_kwargs.is_some();
    let target = match args.to {
        To::PytorchSaver => Target::PytorchSaver,
        To::Safetensors => Target::Safetensors,
        To::Hf => Target::HuggingFace,
    };
    if args.max_shard_size.is_some() && target != Target::HuggingFace {
        return Err("--max-shard-size applies to --to hf".into());
    }
    if target != Target::PytorchSaver {
        let only_ours = [
            ("--optimizer", args.optimizer.is_some()),
            ("--scheduler", args.scheduler.is_some()),
            ("--inference", args.inference),
        ];
        if let Some((flag, _)) = only_ours.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{flag} applies to --to pytorch-saver (the other outputs hold the model alone)"
            ));
        }
    }
    Ok(ConvertOptions {
        target,
        model: class_spec("model", args.model.take(), args.model_kwargs.take())?,
        optimizer: class_spec("optim", args.optimizer.take(), args.optim_kwargs.take())?,
        scheduler: class_spec("scheduler", args.scheduler.take(), args.scheduler_kwargs.take())?,
        inference: args.inference,
        max_shard_size: args.max_shard_size,
        progress: None,
    })
}

pub fn run(mut args: Args) -> ExitCode {
    let mut options = match options(&mut args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("pytorch-saver: convert: {e}");
            return ExitCode::from(2);
        }
    };
    let contents = match convert::read(&args.input) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pytorch-saver: convert: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A class named without kwargs takes the kwargs the input recorded for
    // it (a file of the original package records kwargs, not classes).
    let recorded = &contents.recorded_kwargs;
    for (spec, given, kwargs) in [
        (&mut options.model, args.model_kwargs_given, &recorded.model),
        (&mut options.optimizer, args.optim_kwargs_given, &recorded.optimizer),
        (&mut options.scheduler, args.scheduler_kwargs_given, &recorded.scheduler),
    ] {
        if let (Some(spec), false, Some(kwargs)) = (spec, given, kwargs) {
            spec.kwargs = kwargs.clone();
        }
    }
    if contents.source == SourceKind::HuggingFace && contents.model_class.is_none() && options.model.is_none() {
        eprintln!(
            "pytorch-saver: warning: {}: config.json has no architectures or no model_type: converting the \
             weights alone (give --model and --model-kwargs to name the model)",
            args.input.display()
        );
    }
    let label = args.output.file_name().map_or_else(
        || args.output.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let bar = progress_bar::on_terminal(&label).map(|(progress, bar)| {
        options.progress = Some(progress);
        bar
    });
    let result = convert::write(&contents, &args.output, &options);
    drop(bar);
    match result {
        Ok(path) => {
            println!("wrote {} ({})", path.display(), what_was_written(&options, &contents));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pytorch-saver: convert: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the output is, for the closing line.
fn what_was_written(options: &ConvertOptions, contents: &convert::Contents) -> &'static str {
    let class_known = options.model.is_some() || contents.model_class.is_some();
    match options.target {
        Target::Safetensors => "safetensors file",
        Target::HuggingFace => "Hugging Face directory",
        Target::PytorchSaver if !class_known => "weights file",
        Target::PytorchSaver if options.inference => "inference file",
        Target::PytorchSaver => "checkpoint",
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_size("200MB"), Ok(200_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("20kb"), Ok(20_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("99999999999999GB").is_err());
    }
}
