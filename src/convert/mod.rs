//! Converting checkpoints in and out: `torch.save` files, safetensors
//! files, Hugging Face model directories and files of the original package
//! (0.1.x) into this format, and this format out to safetensors files and
//! Hugging Face directories. No tch, no Python: tensors travel as bytes,
//! and pickles are read by a restricted reader that runs nothing.
//!
//! - [`read`] opens any supported input as [`Contents`]: the model's
//!   state dict, and where the input has them the optimizer's and the
//!   scheduler's state, class names and kwargs, and user metadata;
//! - [`convert`] writes [`Contents`] to a target ([`Target`]);
//! - `pickle.rs`: the restricted pickle reader (an allow-list of globals);
//! - `torch_file.rs`: `torch.save` archives (and torch's legacy format);
//! - `legacy.rs`: files of the original package;
//! - `training_dict.rs`: from an unpickled object to [`Contents`];
//! - `ours.rs`: files of this format as input;
//! - `safetensors_file.rs`, `hf.rs`: safetensors files and Hugging Face
//!   directories, both ways;
//! - `write.rs`: [`Contents`] to this format;
//! - `publish.rs`: outputs written under a temporary name, fsynced, then
//!   given their name, which is never taken from an existing file.

mod hf;
mod legacy;
mod ours;
mod pickle;
mod publish;
mod safetensors_file;
mod torch_file;
mod training_dict;
mod write;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::{ClassSpec, Dtype, TensorSource};
use crate::progress::{Progress, Tracker};
pub(crate) use legacy::{is_legacy_zip, read_legacy_file};
pub(crate) use torch_file::{is_torch_zip, read_torch_file};

/// A tensor read from an input: little-endian elements in C order.
#[derive(Debug, Clone)]
pub struct ForeignTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: TensorBytes,
}

/// Where a tensor's bytes are: a range of a mapped input (no copy), or
/// memory of their own (a strided view made contiguous, a deflated
/// member).
#[derive(Debug, Clone)]
pub enum TensorBytes {
    Mapped { map: Arc<Mmap>, start: usize, end: usize },
    Owned(Arc<Vec<u8>>),
}

impl TensorBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            TensorBytes::Mapped { map, start, end } => &map[*start..*end],
            TensorBytes::Owned(v) => v,
        }
    }
}

impl TensorSource for ForeignTensor {
    fn name(&self) -> &str {
        &self.name
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
    fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.data.as_slice()))
    }
}

/// An optimizer's state as PyTorch's `Optimizer.state_dict()` holds it.
#[derive(Debug, Clone, Default)]
pub struct ForeignOptimizer {
    /// The class and constructor kwargs, when the input names them (a file
    /// of this format); otherwise the caller names them.
    pub class: Option<ClassSpec>,
    /// PyTorch's `param_groups` as JSON objects, `params` holding indices
    /// (tuples as lists).
    pub param_groups: Vec<Map<String, Value>>,
    /// For each parameter index with state: its tensors (named by state
    /// key: `exp_avg`, `step`) and its other values as JSON.
    pub state: BTreeMap<usize, (Vec<ForeignTensor>, Map<String, Value>)>,
    /// The model state-dict name of each parameter index, when the input
    /// records them (this format; PyTorch's `param_names` in each group).
    pub param_names: Option<Vec<String>>,
}

/// A scheduler's state as PyTorch's `LRScheduler.state_dict()` holds it,
/// as JSON under FORMAT.md section 6's encoding.
#[derive(Debug, Clone, Default)]
pub struct ForeignScheduler {
    /// The class and kwargs, when the input names them.
    pub class: Option<ClassSpec>,
    pub state: Map<String, Value>,
}

/// What kind of input [`read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A `torch.save` file of a state dict (names to tensors).
    TorchStateDict,
    /// A `torch.save` file of a training dict (`{"model": ..., "optimizer":
    /// ..., ...}`).
    TorchTrainingDict,
    /// A file of the original package (0.1.x).
    Legacy,
    /// A safetensors file.
    Safetensors,
    /// A Hugging Face model directory.
    HuggingFace,
    /// A file of this format (any version, any kind).
    PytorchSaver,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::TorchStateDict => "torch.save state dict",
            SourceKind::TorchTrainingDict => "torch.save training dict",
            SourceKind::Legacy => "pytorch-saver 0.1 file",
            SourceKind::Safetensors => "safetensors file",
            SourceKind::HuggingFace => "Hugging Face model directory",
            SourceKind::PytorchSaver => "pytorch-saver file",
        }
    }
}

/// Everything a conversion carries from an input.
#[derive(Debug, Clone)]
pub struct Contents {
    pub source: SourceKind,
    /// The model's state dict, in the input's order.
    pub model: Vec<ForeignTensor>,
    /// The model class and kwargs, when the input names them: a file of
    /// this format, a Hugging Face directory (the `transformers` class of
    /// `config.json`'s `architectures`, with the config as an `hf_config`
    /// typed value under the kwarg `config`).
    pub model_class: Option<ClassSpec>,
    pub optimizer: Option<ForeignOptimizer>,
    pub scheduler: Option<ForeignScheduler>,
    /// User metadata: the plain values of a training dict beside its
    /// state dicts (`epoch`, `loss`), a file's user metadata, a
    /// safetensors file's `__metadata__`.
    pub user: Map<String, Value>,
    /// Constructor kwargs the input records without a class (a file of
    /// the original package): what a caller who names the classes may
    /// use when it gives no kwargs of its own.
    pub recorded_kwargs: RecordedKwargs,
    /// When the input says its state was saved (Unix seconds): a file of
    /// this format or of the original package. A conversion keeps it.
    pub timestamp: Option<u64>,
}

/// Kwargs an input records for classes it does not name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordedKwargs {
    pub model: Option<Map<String, Value>>,
    pub optimizer: Option<Map<String, Value>>,
    pub scheduler: Option<Map<String, Value>>,
}

/// The output of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// A file of this format: a checkpoint when a model class is known, an
    /// inference file with `inference`, else a weights file.
    #[default]
    PytorchSaver,
    /// One safetensors file of the model's state dict.
    Safetensors,
    /// A Hugging Face model directory: `config.json` and
    /// `model.safetensors` (or shards with their index).
    HuggingFace,
}

/// How [`convert`] writes its output.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    pub target: Target,
    /// The model class and kwargs; replaces what the input names.
    pub model: Option<ClassSpec>,
    /// The optimizer class and kwargs, for an input's optimizer state.
    pub optimizer: Option<ClassSpec>,
    /// The scheduler class and kwargs, for an input's scheduler state.
    pub scheduler: Option<ClassSpec>,
    /// Write an inference file (the model alone) instead of a checkpoint.
    pub inference: bool,
    /// Largest shard of a Hugging Face output, in bytes (one file when
    /// `None`).
    pub max_shard_size: Option<u64>,
    pub progress: Option<Progress>,
}

pub(crate) fn foreign(file: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidForeign {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads any supported input (detected from its content, never its name):
/// a Hugging Face model directory, a file of this format, a `torch.save`
/// file, a file of the original package or a safetensors file.
pub fn read(path: impl AsRef<Path>) -> Result<Contents> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| foreign(path, format!("cannot read: {e}")))?;
    let contents = if meta.is_dir() {
        hf::read_hf_dir(path)?
    } else if !meta.is_file() {
        return Err(foreign(path, "not a regular file or a directory"));
    } else {
        match sniff(path)? {
            Sniffed::Zip if is_torch_zip(path) => read_torch_file(path)?,
            Sniffed::Zip if is_legacy_zip(path) => read_legacy_file(path)?,
            Sniffed::Zip => ours::read_checkpoint_file(path)?,
            Sniffed::Pickle => read_torch_file(path)?,
            Sniffed::Safetensors => safetensors_file::read_safetensors_file(path)?,
            Sniffed::Unknown => {
                return Err(foreign(
                    path,
                    "not a pytorch-saver file, a torch.save file, a safetensors file or a Hugging Face directory",
                ))
            }
        }
    };
    check_model_tensors(&contents.model).map_err(|reason| foreign(path, reason))?;
    Ok(contents)
}

/// What the first bytes of a file say it is.
enum Sniffed {
    /// A ZIP archive: this format, `torch.save`, or the original package.
    Zip,
    /// A bare pickle (protocol 2 or later): `torch.save`'s legacy format.
    Pickle,
    /// An 8-byte header length followed by a JSON object.
    Safetensors,
    Unknown,
}

fn sniff(path: &Path) -> Result<Sniffed> {
    use std::io::Read;
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(|e| foreign(path, format!("cannot open: {e}")))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(foreign(path, format!("cannot read: {e}"))),
        }
    }
    Ok(match &head[..n] {
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Sniffed::Zip,
        [0x80, 2..=5, ..] => Sniffed::Pickle,
        [_, _, _, _, _, _, _, _, b'{'] => Sniffed::Safetensors,
        _ => Sniffed::Unknown,
    })
}

/// A state dict a conversion can carry: at least one tensor, no name twice.
fn check_model_tensors(model: &[ForeignTensor]) -> Result<(), String> {
    if model.is_empty() {
        return Err("holds no model tensors (an empty state dict)".into());
    }
    let mut seen = std::collections::HashSet::with_capacity(model.len());
    if let Some(t) = model.iter().find(|t| !seen.insert(t.name.as_str())) {
        return Err(format!("names the model tensor {:?} twice", t.name));
    }
    Ok(())
}

/// Converts `input` to `output` (a file, or a directory for
/// [`Target::HuggingFace`]) and returns the path written. Never replaces
/// an existing output; writes atomically.
pub fn convert(input: impl AsRef<Path>, output: impl AsRef<Path>, options: &ConvertOptions) -> Result<PathBuf> {
    let contents = read(input)?;
    write(&contents, output, options)
}

/// Writes what [`read`] returned to `output` as `options.target` says:
/// the second half of [`convert`], for a caller that looks at the
/// contents first (the CLI warns about a directory without a class).
pub fn write(contents: &Contents, output: impl AsRef<Path>, options: &ConvertOptions) -> Result<PathBuf> {
    let output = output.as_ref();
    check_model_tensors(&contents.model).map_err(|reason| Error::Usage(format!("the contents to convert {reason}")))?;
    match options.target {
        Target::PytorchSaver => write::write_pytorch_saver(contents, output, options),
        Target::Safetensors => {
            let tracker = Tracker::maybe(options.progress.as_ref(), tensor_bytes(&contents.model));
            safetensors_file::write_safetensors_file(&contents.model, output, &tracker)?;
            tracker.finish();
            Ok(output.to_path_buf())
        }
        Target::HuggingFace => hf::write_hf_dir(contents, output, options),
    }
}

/// The bytes of `tensors`' data, a conversion's progress total.
pub(crate) fn tensor_bytes<'t>(tensors: impl IntoIterator<Item = &'t ForeignTensor>) -> u64 {
    tensors.into_iter().map(|t| t.data.as_slice().len() as u64).sum()
}
