//! The portable `Sequential` (docs/MODELS.md): a list of layers described
//! in JSON by their PyTorch class names and constructor arguments, with
//! `torch.nn.Sequential`'s state-dict names. Python trains it as an
//! ordinary `nn.Sequential`; Rust, C, C++ and Go run it with no model code.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{Map, Value};
use tch::nn;
use tch::{Kind, Tensor};

use crate::error::{panic_message, torch_message, Error, Result};
use crate::registry::{buffer, variable, BoxedModel, Forward, Kwargs, TensorSpec};

/// Registry name of the portable Sequential.
pub const SEQUENTIAL: &str = "pytorch_saver.models.Sequential";

/// The layer types a Sequential may hold, in the order docs/MODELS.md lists them.
pub const LAYER_TYPES: &[&str] = &[
    "Linear",
    "Conv1d",
    "Conv2d",
    "Embedding",
    "LayerNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "Flatten",
    "ReLU",
    "LeakyReLU",
    "GELU",
    "SiLU",
    "Tanh",
    "Sigmoid",
    "Identity",
    "Softmax",
    "MaxPool2d",
    "AvgPool2d",
];

/// A Conv layer's padding: explicit amounts, or PyTorch's `"same"`
/// (`"valid"` is explicit zeros).
#[derive(Debug, Clone, PartialEq)]
enum Padding {
    Explicit(Vec<i64>),
    Same,
}

/// One layer's configuration, validated; no tensors yet.
#[derive(Debug, Clone, PartialEq)]
enum Spec {
    Linear {
        in_features: i64,
        out_features: i64,
        bias: bool,
    },
    Conv {
        in_channels: i64,
        out_channels: i64,
        kernel_size: Vec<i64>,
        stride: Vec<i64>,
        padding: Padding,
        dilation: Vec<i64>,
        groups: i64,
        bias: bool,
    },
    Embedding {
        num_embeddings: i64,
        embedding_dim: i64,
        padding_idx: Option<i64>,
    },
    LayerNorm {
        normalized_shape: Vec<i64>,
        eps: f64,
        weight: bool,
        bias: bool,
    },
    BatchNorm {
        /// 1 or 2 (BatchNorm1d, BatchNorm2d).
        spatial: usize,
        num_features: i64,
        eps: f64,
        momentum: Option<f64>,
        affine: bool,
        track_running_stats: bool,
    },
    Dropout(f64),
    Flatten(i64, i64),
    Relu,
    LeakyRelu(f64),
    Gelu(&'static str),
    Silu,
    Tanh,
    Sigmoid,
    Identity,
    Softmax(i64),
    MaxPool2d {
        kernel_size: Vec<i64>,
        stride: Vec<i64>,
        padding: Vec<i64>,
        dilation: Vec<i64>,
        ceil_mode: bool,
    },
    AvgPool2d {
        kernel_size: Vec<i64>,
        stride: Vec<i64>,
        padding: Vec<i64>,
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: Option<i64>,
    },
}

/// A JSON value as error messages quote it: with a space after `,` and
/// `:`, as Python's `json.dumps` writes it, so that both implementations
/// word an error the same way.
fn json(v: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    serde::Serialize::serialize(v, &mut ser).expect("a JSON value serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// One layer object of the kwargs, read with errors that name the layer.
struct LayerArgs<'a> {
    index: usize,
    ty: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> LayerArgs<'a> {
    fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::InvalidKwargs {
            class: SEQUENTIAL.into(),
            reason: format!("layer {} ({}): {reason}", self.index, self.ty),
        }
    }

    /// Refuses any argument not in `allowed` (PyTorch's TypeError on an
    /// unexpected keyword argument).
    fn allow(&self, allowed: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| *k != "type" && !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) if allowed.is_empty() => {
                Err(self.error(format!("unexpected argument {k:?} ({} takes no arguments)", self.ty)))
            }
            Some(k) => Err(self.error(format!(
                "unexpected argument {k:?} ({} takes {})",
                self.ty,
                allowed.join(", ")
            ))),
        }
    }

    /// The argument as given; `null` is a value here, refused by every
    /// getter except those of arguments whose PyTorch default is `None`.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    /// An argument whose PyTorch default is `None`: `null` means absent.
    fn get_nullable(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &str) -> Error {
        let why = if self.ty == "Softmax" {
            " (PyTorch's implicit dim is deprecated and not portable)"
        } else {
            ""
        };
        self.error(format!("argument {name:?} is required{why}"))
    }

    fn int_value(&self, name: &str, v: &Value) -> Result<i64> {
        v.as_i64()
            .ok_or_else(|| self.error(format!("argument {name:?} must be an int, got {}", json(v))))
    }

    fn int(&self, name: &str) -> Result<i64> {
        let v = self.get(name).ok_or_else(|| self.required(name))?;
        self.int_value(name, v)
    }

    fn int_at_least(&self, name: &str, min: i64) -> Result<i64> {
        let v = self.int(name)?;
        self.check_at_least(name, v, min)
    }

    /// An int whose PyTorch default is `None`.
    fn nullable_int(&self, name: &str) -> Result<Option<i64>> {
        self.get_nullable(name).map(|v| self.int_value(name, v)).transpose()
    }

    fn int_or(&self, name: &str, default: i64) -> Result<i64> {
        self.get(name).map_or(Ok(default), |v| self.int_value(name, v))
    }

    fn check_at_least(&self, name: &str, v: i64, min: i64) -> Result<i64> {
        if v < min {
            return Err(self.error(format!("argument {name:?} must be >= {min}, got {v}")));
        }
        Ok(v)
    }

    /// An int or an array of exactly `n` ints (PyTorch's `_single` /
    /// `_pair`), each at least `min`; `None` when absent (or null, when
    /// `nullable`).
    fn optional_ints(&self, name: &str, n: usize, min: i64, nullable: bool) -> Result<Option<Vec<i64>>> {
        let given = if nullable {
            self.get_nullable(name)
        } else {
            self.get(name)
        };
        let Some(v) = given else {
            return Ok(None);
        };
        let kind = if n == 1 {
            "an int or 1 int".to_owned()
        } else {
            format!("an int or {n} ints")
        };
        let bad = || self.error(format!("argument {name:?} must be {kind}, got {}", json(v)));
        let values = match v {
            Value::Number(_) => vec![v.as_i64().ok_or_else(bad)?; n],
            Value::Array(items) if items.len() == n => items
                .iter()
                .map(|x| x.as_i64().ok_or_else(bad))
                .collect::<Result<_>>()?,
            _ => return Err(bad()),
        };
        for &x in &values {
            self.check_at_least(name, x, min)?;
        }
        Ok(Some(values))
    }

    fn ints(&self, name: &str, n: usize, min: i64) -> Result<Vec<i64>> {
        self.optional_ints(name, n, min, false)?
            .ok_or_else(|| self.required(name))
    }

    fn ints_or(&self, name: &str, n: usize, min: i64, default: i64) -> Result<Vec<i64>> {
        Ok(self
            .optional_ints(name, n, min, false)?
            .unwrap_or_else(|| vec![default; n]))
    }

    fn number_or(&self, name: &str, default: f64) -> Result<f64> {
        self.get(name).map_or(Ok(default), |v| {
            v.as_f64()
                .ok_or_else(|| self.error(format!("argument {name:?} must be a number, got {}", json(v))))
        })
    }

    fn number_in(&self, name: &str, value: f64, lo: f64, hi: f64) -> Result<f64> {
        if !(lo..=hi).contains(&value) {
            return Err(self.error(format!("argument {name:?} must be in [{lo}, {hi}], got {value}")));
        }
        Ok(value)
    }

    fn positive(&self, name: &str, value: f64) -> Result<f64> {
        if !(value > 0.0 && value.is_finite()) {
            return Err(self.error(format!("argument {name:?} must be > 0, got {value}")));
        }
        Ok(value)
    }

    fn bool_or(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                self.error(format!(
                    "argument {name:?} must be a bool (true or false), got {}",
                    json(v)
                ))
            }),
        }
    }

    /// A string argument that must be one of `choices` (the first is the default).
    fn choice(&self, name: &str, choices: &[&'static str]) -> Result<&'static str> {
        // (`null` is not one of them: it reaches the error below.)
        match self.get(name) {
            None => Ok(choices[0]),
            Some(v) => v
                .as_str()
                .and_then(|s| choices.iter().find(|c| **c == s).copied())
                .ok_or_else(|| {
                    let quoted: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
                    self.error(format!(
                        "argument {name:?} must be {}, got {}",
                        quoted.join(" or "),
                        json(v)
                    ))
                }),
        }
    }

    fn conv(&self, n: usize) -> Result<Spec> {
        self.allow(&[
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "groups",
            "bias",
            "padding_mode",
        ])?;
        let in_channels = self.int_at_least("in_channels", 1)?;
        let out_channels = self.int_at_least("out_channels", 1)?;
        let kernel_size = self.ints("kernel_size", n, 1)?;
        let stride = self.ints_or("stride", n, 1, 1)?;
        let padding = match self.get("padding") {
            Some(Value::String(s)) if s == "valid" => Padding::Explicit(vec![0; n]),
            Some(Value::String(s)) if s == "same" => Padding::Same,
            Some(Value::String(s)) => {
                let ints = if n == 1 {
                    "an int or 1 int".to_owned()
                } else {
                    format!("an int or {n} ints")
                };
                return Err(self.error(format!(
                    "argument \"padding\" must be {ints} or \"valid\" or \"same\", got {}",
                    json(&Value::String(s.clone()))
                )));
            }
            _ => Padding::Explicit(self.ints_or("padding", n, 0, 0)?),
        };
        let dilation = self.ints_or("dilation", n, 1, 1)?;
        let groups = self.int_or("groups", 1)?;
        self.check_at_least("groups", groups, 1)?;
        let bias = self.bool_or("bias", true)?;
        self.choice("padding_mode", &["zeros"])?;
        for (name, channels) in [("in_channels", in_channels), ("out_channels", out_channels)] {
            if channels % groups != 0 {
                return Err(self.error(format!(
                    "argument {name:?} must be divisible by groups ({groups}), got {channels}"
                )));
            }
        }
        if padding == Padding::Same && stride.iter().any(|&s| s != 1) {
            let given = self.get("stride").map(json).unwrap_or_default();
            return Err(self.error(format!(
                "argument \"padding\" \"same\" needs stride 1 (PyTorch does not support it for strided convolutions), got stride {given}"
            )));
        }
        Ok(Spec::Conv {
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
        })
    }

    fn batch_norm(&self, spatial: usize) -> Result<Spec> {
        self.allow(&["num_features", "eps", "momentum", "affine", "track_running_stats"])?;
        let num_features = self.int_at_least("num_features", 1)?;
        let eps = self.positive("eps", self.number_or("eps", 1e-5)?)?;
        // null is PyTorch's None: a cumulative average instead of 0.1.
        let momentum = match self.get("momentum") {
            Some(Value::Null) => None,
            _ => Some(self.number_in("momentum", self.number_or("momentum", 0.1)?, 0.0, 1.0)?),
        };
        Ok(Spec::BatchNorm {
            spatial,
            num_features,
            eps,
            momentum,
            affine: self.bool_or("affine", true)?,
            track_running_stats: self.bool_or("track_running_stats", true)?,
        })
    }

    fn pool(&self, avg: bool) -> Result<Spec> {
        if avg {
            self.allow(&[
                "kernel_size",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
                "divisor_override",
            ])?;
        } else {
            self.allow(&[
                "kernel_size",
                "stride",
                "padding",
                "dilation",
                "ceil_mode",
                "return_indices",
            ])?;
        }
        let kernel_size = self.ints("kernel_size", 2, 1)?;
        let stride = self
            .optional_ints("stride", 2, 1, true)?
            .unwrap_or_else(|| kernel_size.clone());
        let padding = self.ints_or("padding", 2, 0, 0)?;
        let ceil_mode = self.bool_or("ceil_mode", false)?;
        if avg {
            let divisor_override = self.nullable_int("divisor_override")?;
            if let Some(d) = divisor_override {
                self.check_at_least("divisor_override", d, 1)?;
            }
            return Ok(Spec::AvgPool2d {
                kernel_size,
                stride,
                padding,
                ceil_mode,
                count_include_pad: self.bool_or("count_include_pad", true)?,
                divisor_override,
            });
        }
        let dilation = self.ints_or("dilation", 2, 1, 1)?;
        // A Sequential passes one tensor on: no (values, indices) pairs.
        match self.get("return_indices") {
            None | Some(Value::Bool(false)) => {}
            Some(v) => return Err(self.error(format!("argument \"return_indices\" must be false, got {}", json(v)))),
        }
        Ok(Spec::MaxPool2d {
            kernel_size,
            stride,
            padding,
            dilation,
            ceil_mode,
        })
    }

    fn spec(&self) -> Result<Spec> {
        Ok(match self.ty {
            "Linear" => {
                self.allow(&["in_features", "out_features", "bias"])?;
                Spec::Linear {
                    in_features: self.int_at_least("in_features", 1)?,
                    out_features: self.int_at_least("out_features", 1)?,
                    bias: self.bool_or("bias", true)?,
                }
            }
            "Conv1d" => self.conv(1)?,
            "Conv2d" => self.conv(2)?,
            "Embedding" => {
                self.allow(&["num_embeddings", "embedding_dim", "padding_idx"])?;
                let num_embeddings = self.int_at_least("num_embeddings", 1)?;
                let embedding_dim = self.int_at_least("embedding_dim", 1)?;
                let padding_idx = match self.nullable_int("padding_idx")? {
                    None => None,
                    Some(i) if (-num_embeddings..num_embeddings).contains(&i) => {
                        Some(if i < 0 { i + num_embeddings } else { i })
                    }
                    Some(i) => {
                        return Err(self.error(format!(
                            "argument \"padding_idx\" must be in [-{num_embeddings}, {num_embeddings}), got {i}"
                        )))
                    }
                };
                Spec::Embedding {
                    num_embeddings,
                    embedding_dim,
                    padding_idx,
                }
            }
            "LayerNorm" => {
                self.allow(&["normalized_shape", "eps", "elementwise_affine", "bias"])?;
                let normalized_shape = match self.get("normalized_shape") {
                    Some(Value::Array(items)) if !items.is_empty() => {
                        let dims = items
                            .iter()
                            .map(|x| self.int_value("normalized_shape", x))
                            .collect::<Result<Vec<_>>>()?;
                        for &d in &dims {
                            self.check_at_least("normalized_shape", d, 1)?;
                        }
                        dims
                    }
                    Some(Value::Array(_)) => {
                        return Err(self.error(
                            "argument \"normalized_shape\" must be an int or a non-empty array of ints, got []",
                        ))
                    }
                    _ => vec![self.int_at_least("normalized_shape", 1)?],
                };
                let eps = self.positive("eps", self.number_or("eps", 1e-5)?)?;
                let weight = self.bool_or("elementwise_affine", true)?;
                let bias = self.bool_or("bias", true)?;
                Spec::LayerNorm {
                    normalized_shape,
                    eps,
                    weight,
                    bias: weight && bias,
                }
            }
            "BatchNorm1d" => self.batch_norm(1)?,
            "BatchNorm2d" => self.batch_norm(2)?,
            "Dropout" => {
                self.allow(&["p", "inplace"])?;
                let p = self.number_in("p", self.number_or("p", 0.5)?, 0.0, 1.0)?;
                self.bool_or("inplace", false)?;
                Spec::Dropout(p)
            }
            "Flatten" => {
                self.allow(&["start_dim", "end_dim"])?;
                Spec::Flatten(self.int_or("start_dim", 1)?, self.int_or("end_dim", -1)?)
            }
            "ReLU" | "SiLU" => {
                self.allow(&["inplace"])?;
                self.bool_or("inplace", false)?;
                if self.ty == "ReLU" {
                    Spec::Relu
                } else {
                    Spec::Silu
                }
            }
            "LeakyReLU" => {
                self.allow(&["negative_slope", "inplace"])?;
                self.bool_or("inplace", false)?;
                Spec::LeakyRelu(self.number_or("negative_slope", 0.01)?)
            }
            "GELU" => {
                self.allow(&["approximate"])?;
                Spec::Gelu(self.choice("approximate", &["none", "tanh"])?)
            }
            "Tanh" | "Sigmoid" | "Identity" => {
                self.allow(&[])?;
                match self.ty {
                    "Tanh" => Spec::Tanh,
                    "Sigmoid" => Spec::Sigmoid,
                    _ => Spec::Identity,
                }
            }
            "Softmax" => {
                self.allow(&["dim"])?;
                Spec::Softmax(self.int("dim")?)
            }
            "MaxPool2d" => self.pool(false)?,
            "AvgPool2d" => self.pool(true)?,
            other => {
                return Err(self.error(format!(
                    "unknown type {other:?}; the known types are {}",
                    LAYER_TYPES.join(", ")
                )))
            }
        })
    }
}

/// Reads and validates the whole layer list before any tensor exists.
fn parse_layers(kw: &Kwargs<'_>) -> Result<Vec<(String, Spec)>> {
    let layers = match kw.take("layers") {
        None => return Err(kw.error("kwarg \"layers\" is required")),
        Some(Value::Array(layers)) if !layers.is_empty() => layers,
        Some(v) => {
            return Err(kw.error(format!(
                "kwarg \"layers\" must be a non-empty array of layer objects, got {}",
                json(v)
            )))
        }
    };
    layers
        .iter()
        .enumerate()
        .map(|(index, layer)| {
            let map = layer.as_object().ok_or_else(|| {
                kw.error(format!(
                    "layer {index}: must be an object with a string \"type\", got {}",
                    json(layer)
                ))
            })?;
            let ty = match map.get("type") {
                Some(Value::String(ty)) => ty.as_str(),
                None | Some(Value::Null) => {
                    return Err(kw.error(format!(
                        "layer {index}: has no \"type\" (a string naming the layer type)"
                    )))
                }
                Some(other) => {
                    return Err(kw.error(format!("layer {index}: \"type\" must be a string, got {}", json(other))))
                }
            };
            let spec = LayerArgs { index, ty, map }.spec()?;
            Ok((ty.to_owned(), spec))
        })
        .collect()
}

/// A BatchNorm's running statistics (buffers, not parameters).
#[derive(Debug)]
struct RunningStats {
    mean: Tensor,
    var: Tensor,
    num_batches_tracked: Tensor,
}

/// One built layer: its configuration and its tensors (shallow clones of
/// the var store's, so updates reach the state dict).
#[derive(Debug)]
struct Layer {
    ty: String,
    spec: Spec,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    stats: Option<RunningStats>,
}

/// One tensor of a layer's state: its key under the layer, kind, shape,
/// whether it is a parameter, and how PyTorch's `__init__` fills it.
struct StateTensor {
    name: &'static str,
    kind: Kind,
    dims: Vec<i64>,
    trainable: bool,
    init: nn::Init,
}

impl StateTensor {
    fn param(name: &'static str, dims: Vec<i64>, init: nn::Init) -> Self {
        StateTensor {
            name,
            kind: Kind::Float,
            dims,
            trainable: true,
            init,
        }
    }

    fn buffer(name: &'static str, kind: Kind, dims: Vec<i64>, value: f64) -> Self {
        StateTensor {
            name,
            kind,
            dims,
            trainable: false,
            init: nn::Init::Const(value),
        }
    }
}

/// PyTorch's default init of Linear and Conv: uniform in +-1/sqrt(fan_in).
fn fan_in_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

impl Spec {
    /// The layer's state tensors in the state order of docs/MODELS.md
    /// (parameters first: that is the optimizer's order). Arithmetic on
    /// the validated configuration: nothing is allocated, so a loader can
    /// compare it with a file before building anything.
    fn state(&self) -> Vec<StateTensor> {
        match self {
            Spec::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let init = fan_in_uniform(*in_features);
                let mut v = vec![StateTensor::param("weight", vec![*out_features, *in_features], init)];
                if *bias {
                    v.push(StateTensor::param("bias", vec![*out_features], init));
                }
                v
            }
            Spec::Conv {
                in_channels,
                out_channels,
                kernel_size,
                groups,
                bias,
                ..
            } => {
                let mut dims = vec![*out_channels, in_channels / groups];
                dims.extend(kernel_size);
                let fan_in = (in_channels / groups).saturating_mul(kernel_size.iter().product::<i64>());
                let init = fan_in_uniform(fan_in);
                let mut v = vec![StateTensor::param("weight", dims, init)];
                if *bias {
                    v.push(StateTensor::param("bias", vec![*out_channels], init));
                }
                v
            }
            Spec::Embedding {
                num_embeddings,
                embedding_dim,
                ..
            } => vec![StateTensor::param(
                "weight",
                vec![*num_embeddings, *embedding_dim],
                nn::Init::Randn { mean: 0.0, stdev: 1.0 },
            )],
            Spec::LayerNorm {
                normalized_shape,
                weight,
                bias,
                ..
            } => {
                let mut v = Vec::new();
                if *weight {
                    v.push(StateTensor::param(
                        "weight",
                        normalized_shape.clone(),
                        nn::Init::Const(1.0),
                    ));
                }
                if *bias {
                    v.push(StateTensor::param(
                        "bias",
                        normalized_shape.clone(),
                        nn::Init::Const(0.0),
                    ));
                }
                v
            }
            Spec::BatchNorm {
                num_features,
                affine,
                track_running_stats,
                ..
            } => {
                let c = vec![*num_features];
                let mut v = Vec::new();
                if *affine {
                    v.push(StateTensor::param("weight", c.clone(), nn::Init::Const(1.0)));
                    v.push(StateTensor::param("bias", c.clone(), nn::Init::Const(0.0)));
                }
                if *track_running_stats {
                    v.push(StateTensor::buffer("running_mean", Kind::Float, c.clone(), 0.0));
                    v.push(StateTensor::buffer("running_var", Kind::Float, c, 1.0));
                    v.push(StateTensor::buffer("num_batches_tracked", Kind::Int64, vec![], 0.0));
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

impl Layer {
    /// Creates the layer's tensors under `p` from [`Spec::state`]:
    /// initialized as PyTorch does, or uninitialized when the model is
    /// being loaded (`kw.loading()`). Fallible: an allocation libtorch
    /// refuses is an error naming the layer.
    fn build(p: nn::Path<'_>, kw: &Kwargs<'_>, index: usize, ty: String, spec: Spec) -> Result<Layer> {
        let mut layer = Layer {
            ty,
            spec,
            weight: None,
            bias: None,
            stats: None,
        };
        let (mut mean, mut var, mut count) = (None, None, None);
        for t in layer.spec.state() {
            let tensor = match t.trainable {
                true => variable(&p, kw, t.name, &t.dims, t.init),
                false => {
                    let value = match t.init {
                        nn::Init::Const(v) => v,
                        _ => 0.0,
                    };
                    buffer(&p, kw, t.name, &t.dims, t.kind, value)
                }
            }
            .map_err(|e| match e {
                Error::Torch(m) => Error::Torch(format!("layer {index} ({}): {}: {m}", layer.ty, t.name)),
                other => other,
            })?;
            match t.name {
                "weight" => layer.weight = Some(tensor),
                "bias" => layer.bias = Some(tensor),
                "running_mean" => mean = Some(tensor),
                "running_var" => var = Some(tensor),
                _ => count = Some(tensor),
            }
        }
        if let (
            Spec::Embedding {
                padding_idx: Some(i), ..
            },
            Some(w),
            false,
        ) = (&layer.spec, &layer.weight, kw.loading())
        {
            tch::no_grad(|| w.f_get(*i)?.f_zero_().map(drop))?;
        }
        if let (Some(mean), Some(var), Some(num_batches_tracked)) = (mean, var, count) {
            layer.stats = Some(RunningStats {
                mean,
                var,
                num_batches_tracked,
            });
        }
        Ok(layer)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let w = self.weight.as_ref();
        let b = self.bias.as_ref();
        Ok(match &self.spec {
            Spec::Linear { .. } => x.f_linear(w.expect("built"), b)?,
            Spec::Conv {
                kernel_size,
                stride,
                padding,
                dilation,
                groups,
                ..
            } => {
                let w = w.expect("built");
                match (kernel_size.len(), padding) {
                    (1, Padding::Explicit(pad)) => x.f_conv1d(w, b, stride, pad, dilation, *groups)?,
                    (1, Padding::Same) => x.f_conv1d_padding(w, b, stride, "same", dilation, *groups)?,
                    (_, Padding::Explicit(pad)) => x.f_conv2d(w, b, stride, pad, dilation, *groups)?,
                    (_, Padding::Same) => x.f_conv2d_padding(w, b, stride, "same", dilation, *groups)?,
                }
            }
            Spec::Embedding { padding_idx, .. } => {
                Tensor::f_embedding(w.expect("built"), x, padding_idx.unwrap_or(-1), false, false)?
            }
            Spec::LayerNorm {
                normalized_shape, eps, ..
            } => x.f_layer_norm(normalized_shape, w, b, *eps, true)?,
            Spec::BatchNorm {
                spatial, eps, momentum, ..
            } => self.batch_norm(x, train, *spatial, *eps, *momentum)?,
            Spec::Dropout(p) => x.f_dropout(*p, train)?,
            Spec::Flatten(start, end) => x.f_flatten(*start, *end)?,
            Spec::Relu => x.f_relu()?,
            Spec::LeakyRelu(slope) => {
                // PyTorch's kernel: x > 0 ? x : x * negative_slope.
                x.f_where_self(&x.f_gt(0.0)?, &x.f_mul_scalar(*slope)?)?
            }
            Spec::Gelu(approximate) => x.f_gelu(approximate)?,
            Spec::Silu => x.f_silu()?,
            Spec::Tanh => x.f_tanh()?,
            Spec::Sigmoid => x.f_sigmoid()?,
            Spec::Identity => x.shallow_clone(),
            Spec::Softmax(dim) => x.f_softmax(*dim, None::<Kind>)?,
            Spec::MaxPool2d {
                kernel_size,
                stride,
                padding,
                dilation,
                ceil_mode,
            } => x.f_max_pool2d(kernel_size, stride, padding, dilation, *ceil_mode)?,
            Spec::AvgPool2d {
                kernel_size,
                stride,
                padding,
                ceil_mode,
                count_include_pad,
                divisor_override,
            } => x.f_avg_pool2d(
                kernel_size,
                stride,
                padding,
                *ceil_mode,
                *count_include_pad,
                *divisor_override,
            )?,
        })
    }

    /// `torch.nn.modules.batchnorm._BatchNorm.forward`.
    fn batch_norm(&self, x: &Tensor, train: bool, spatial: usize, eps: f64, momentum: Option<f64>) -> Result<Tensor> {
        let rank = x.dim();
        let ranks: &[usize] = if spatial == 1 { &[2, 3] } else { &[4] };
        if !ranks.contains(&rank) {
            let want = if spatial == 1 { "2D or 3D" } else { "4D" };
            return Err(Error::Torch(format!("expected {want} input (got {rank}D input)")));
        }
        let size = x.size();
        if train && size[0] * size[2..].iter().product::<i64>() == 1 {
            return Err(Error::Torch(format!(
                "expected more than 1 value per channel when training, got input size {size:?}"
            )));
        }
        let mut factor = momentum.unwrap_or(0.0);
        if let (true, Some(stats)) = (train, &self.stats) {
            let count = tch::no_grad(|| stats.num_batches_tracked.shallow_clone().f_add_scalar_(1))?;
            if momentum.is_none() {
                factor = 1.0 / count.int64_value(&[]) as f64;
            }
        }
        let (mean, var) = match &self.stats {
            Some(s) => (Some(&s.mean), Some(&s.var)),
            None => (None, None),
        };
        let use_batch_stats = train || self.stats.is_none();
        Ok(x.f_batch_norm(
            self.weight.as_ref(),
            self.bias.as_ref(),
            mean,
            var,
            use_batch_stats,
            factor,
            eps,
            true,
        )?)
    }
}

/// The portable Sequential: layers run in order, each as the PyTorch
/// module of the same name. See docs/MODELS.md for the JSON kwargs.
#[derive(Debug)]
pub struct Sequential {
    layers: Vec<Layer>,
}

impl Sequential {
    /// Builds the model `kwargs` (`{"layers": [...]}`) describe under `p`.
    /// The whole list is validated before any tensor is created.
    pub fn new(p: nn::Path<'_>, kw: &Kwargs<'_>) -> Result<Self> {
        let specs = parse_layers(kw)?;
        let layers = specs
            .into_iter()
            .enumerate()
            .map(|(i, (ty, spec))| Layer::build(&p / i, kw, i, ty, spec))
            .collect::<Result<Vec<_>>>()?;
        Ok(Sequential { layers })
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Always false: a Sequential has at least one layer.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layers' type names (`"Conv2d"`, `"ReLU"`, ...), in order.
    pub fn layer_types(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|l| l.ty.as_str())
    }
}

// SAFETY: the layers hold tch tensors (at::Tensor handles with atomic
// reference counts). Eval-mode forward only reads them; train-mode forward
// updates BatchNorm statistics in place, which is why `as_sync` promises
// concurrency for eval mode only.
unsafe impl Sync for Sequential {}

impl Forward for Sequential {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let run = || {
            let mut x = xs.shallow_clone();
            for (i, layer) in self.layers.iter().enumerate() {
                x = layer.forward(&x, train).map_err(|e| match e {
                    Error::Torch(m) => Error::Torch(format!("layer {i} ({}): {m}", layer.ty)),
                    other => other,
                })?;
            }
            Ok(x)
        };
        // The f_ calls return libtorch's errors; this catches anything else.
        catch_unwind(AssertUnwindSafe(run)).map_err(|p| Error::Torch(torch_message(&panic_message(&*p))))?
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_sync(&self) -> Option<&(dyn Forward + Sync)> {
        Some(self)
    }
}

pub(crate) fn build(p: nn::Path<'_>, kw: &Kwargs<'_>) -> Result<BoxedModel> {
    Ok(Box::new(Sequential::new(p, kw)?))
}

/// The Sequential's state dict from its layer list alone (see
/// [`ModelLayout`](crate::registry::ModelLayout)): `{index}.{name}` for
/// every layer's state, counted before it is listed.
pub(crate) fn layout(kw: &Kwargs<'_>, limit: usize) -> Result<Vec<TensorSpec>> {
    let specs = parse_layers(kw)?;
    let count: usize = specs.iter().map(|(_, spec)| spec.state().len()).sum();
    if count > limit {
        return Err(kw.error(format!(
            "kwarg \"layers\" describes {count} tensors in {} layers; the file holds {limit}",
            specs.len()
        )));
    }
    let mut out = Vec::with_capacity(count);
    for (i, (_, spec)) in specs.iter().enumerate() {
        for t in spec.state() {
            out.push(TensorSpec {
                name: format!("{i}.{}", t.name),
                kind: t.kind,
                shape: t.dims,
            });
        }
    }
    Ok(out)
}
