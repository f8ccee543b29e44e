//! The built Sequential: each layer's tensors created from its spec (as
//! PyTorch initializes them, or uninitialized for a load), and the
//! forward pass, each layer as the PyTorch module of the same name.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::nn;
use tch::{Kind, Tensor};

use super::layer_spec::{parse_layers, LayerSpec, Padding};
use crate::error::{panic_message, torch_message, Error, Result};
use crate::registry::{buffer, variable, BoxedModel, Forward, Kwargs};

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
    spec: LayerSpec,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    stats: Option<RunningStats>,
}

impl Layer {
    /// Creates the layer's tensors under `p` from [`LayerSpec::state`]:
    /// initialized as PyTorch does, or uninitialized when the model is
    /// being loaded (`kw.loading()`). Fallible: an allocation libtorch
    /// refuses is an error naming the layer.
    fn build(p: nn::Path<'_>, kw: &Kwargs<'_>, index: usize, ty: String, spec: LayerSpec) -> Result<Layer> {
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
            LayerSpec::Embedding {
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
            LayerSpec::Linear { .. } => x.f_linear(w.expect("built"), b)?,
            LayerSpec::Conv {
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
            LayerSpec::Embedding { padding_idx, .. } => {
                Tensor::f_embedding(w.expect("built"), x, padding_idx.unwrap_or(-1), false, false)?
            }
            LayerSpec::LayerNorm {
                normalized_shape, eps, ..
            } => x.f_layer_norm(normalized_shape, w, b, *eps, true)?,
            LayerSpec::BatchNorm {
                spatial, eps, momentum, ..
            } => self.batch_norm(x, train, *spatial, *eps, *momentum)?,
            LayerSpec::Dropout(p) => x.f_dropout(*p, train)?,
            LayerSpec::Flatten(start, end) => x.f_flatten(*start, *end)?,
            LayerSpec::Relu => x.f_relu()?,
            LayerSpec::LeakyRelu(slope) => {
                // PyTorch's kernel: x > 0 ? x : x * negative_slope.
                x.f_where_self(&x.f_gt(0.0)?, &x.f_mul_scalar(*slope)?)?
            }
            LayerSpec::Gelu(approximate) => x.f_gelu(approximate)?,
            LayerSpec::Silu => x.f_silu()?,
            LayerSpec::Tanh => x.f_tanh()?,
            LayerSpec::Sigmoid => x.f_sigmoid()?,
            LayerSpec::Identity => x.shallow_clone(),
            LayerSpec::Softmax(dim) => x.f_softmax(*dim, None::<Kind>)?,
            LayerSpec::MaxPool2d {
                kernel_size,
                stride,
                padding,
                dilation,
                ceil_mode,
            } => x.f_max_pool2d(kernel_size, stride, padding, dilation, *ceil_mode)?,
            LayerSpec::AvgPool2d {
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
