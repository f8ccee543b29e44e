//! The tensors of a Sequential computed from its validated layer specs
//! alone: each layer's state (key, kind, shape, parameter or buffer, and
//! PyTorch's init), and the model's state-dict layout that a loader
//! compares with a file before building anything.

use tch::{nn, Kind};

use super::layer_spec::{parse_layers, LayerSpec};
use crate::error::Result;
use crate::registry::{Kwargs, TensorSpec};

/// One tensor of a layer's state: its key under the layer, kind, shape,
/// whether it is a parameter, and how PyTorch's `__init__` fills it.
pub(super) struct StateTensor {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    pub(super) dims: Vec<i64>,
    pub(super) trainable: bool,
    pub(super) init: nn::Init,
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

impl LayerSpec {
    /// The layer's state tensors in the state order of docs/MODELS.md
    /// (parameters first: that is the optimizer's order). Arithmetic on
    /// the validated configuration: nothing is allocated, so a loader can
    /// compare it with a file before building anything.
    pub(super) fn state(&self) -> Vec<StateTensor> {
        match self {
            LayerSpec::Linear {
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
            LayerSpec::Conv {
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
            LayerSpec::Embedding {
                num_embeddings,
                embedding_dim,
                ..
            } => vec![StateTensor::param(
                "weight",
                vec![*num_embeddings, *embedding_dim],
                nn::Init::Randn { mean: 0.0, stdev: 1.0 },
            )],
            LayerSpec::LayerNorm {
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
            LayerSpec::BatchNorm {
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
