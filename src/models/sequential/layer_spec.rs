//! The Sequential's kwargs language (docs/MODELS.md): the layer list read
//! and validated, each layer into a [`LayerSpec`], with errors worded as
//! the Python package words them. No tensors here.

use serde_json::{Map, Value};

use super::SEQUENTIAL;
use crate::error::{Error, Result};
use crate::registry::Kwargs;

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
pub(super) enum Padding {
    Explicit(Vec<i64>),
    Same,
}

/// One layer's configuration, validated; no tensors yet.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum LayerSpec {
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

    fn conv(&self, n: usize) -> Result<LayerSpec> {
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
        Ok(LayerSpec::Conv {
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

    fn batch_norm(&self, spatial: usize) -> Result<LayerSpec> {
        self.allow(&["num_features", "eps", "momentum", "affine", "track_running_stats"])?;
        let num_features = self.int_at_least("num_features", 1)?;
        let eps = self.positive("eps", self.number_or("eps", 1e-5)?)?;
        // null is PyTorch's None: a cumulative average instead of 0.1.
        let momentum = match self.get("momentum") {
            Some(Value::Null) => None,
            _ => Some(self.number_in("momentum", self.number_or("momentum", 0.1)?, 0.0, 1.0)?),
        };
        Ok(LayerSpec::BatchNorm {
            spatial,
            num_features,
            eps,
            momentum,
            affine: self.bool_or("affine", true)?,
            track_running_stats: self.bool_or("track_running_stats", true)?,
        })
    }

    fn pool(&self, avg: bool) -> Result<LayerSpec> {
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
            return Ok(LayerSpec::AvgPool2d {
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
        Ok(LayerSpec::MaxPool2d {
            kernel_size,
            stride,
            padding,
            dilation,
            ceil_mode,
        })
    }

    fn spec(&self) -> Result<LayerSpec> {
        Ok(match self.ty {
            "Linear" => {
                self.allow(&["in_features", "out_features", "bias"])?;
                LayerSpec::Linear {
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
                LayerSpec::Embedding {
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
                LayerSpec::LayerNorm {
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
                LayerSpec::Dropout(p)
            }
            "Flatten" => {
                self.allow(&["start_dim", "end_dim"])?;
                LayerSpec::Flatten(self.int_or("start_dim", 1)?, self.int_or("end_dim", -1)?)
            }
            "ReLU" | "SiLU" => {
                self.allow(&["inplace"])?;
                self.bool_or("inplace", false)?;
                if self.ty == "ReLU" {
                    LayerSpec::Relu
                } else {
                    LayerSpec::Silu
                }
            }
            "LeakyReLU" => {
                self.allow(&["negative_slope", "inplace"])?;
                self.bool_or("inplace", false)?;
                LayerSpec::LeakyRelu(self.number_or("negative_slope", 0.01)?)
            }
            "GELU" => {
                self.allow(&["approximate"])?;
                LayerSpec::Gelu(self.choice("approximate", &["none", "tanh"])?)
            }
            "Tanh" | "Sigmoid" | "Identity" => {
                self.allow(&[])?;
                match self.ty {
                    "Tanh" => LayerSpec::Tanh,
                    "Sigmoid" => LayerSpec::Sigmoid,
                    _ => LayerSpec::Identity,
                }
            }
            "Softmax" => {
                self.allow(&["dim"])?;
                LayerSpec::Softmax(self.int("dim")?)
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
pub(super) fn parse_layers(kw: &Kwargs<'_>) -> Result<Vec<(String, LayerSpec)>> {
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
