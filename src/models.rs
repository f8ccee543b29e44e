//! Built-in models, with state-dict names identical to PyTorch's for the
//! same Python class, so that a file moves between languages unchanged
//! (docs/MODELS.md).

use tch::nn;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::registry::{variable_of_kind, BoxedModel, Forward, Kwargs, Registry, TensorSpec};

mod sequential;
pub use sequential::{Sequential, LAYER_TYPES, SEQUENTIAL};

/// Registry name of `torch.nn.Linear(in_features, out_features, bias=True)`.
pub const LINEAR: &str = "torch.nn.Linear";
/// Registry name of the built-in MLP (see [`Mlp`]).
pub const MLP: &str = "pytorch_saver.models.MLP";

/// A Linear layer initialised as PyTorch's `reset_parameters` does:
/// weight and bias uniform in +-1/sqrt(in_features); uninitialized memory
/// when the model is being loaded (see [`variable`]).
///
/// The weight is created before the bias, as PyTorch registers them (tch's
/// own `nn::linear` creates the bias first): creation order is parameter
/// order, and optimizer state indexes parameters by that order.
pub fn linear(p: nn::Path<'_>, kw: &Kwargs<'_>, in_dim: i64, out_dim: i64, bias: bool) -> Result<nn::Linear> {
    let kind = p.kind();
    linear_of_kind(p, kw, in_dim, out_dim, bias, kind)
}

/// [`linear`] with parameters of `kind` (PyTorch's `dtype=` kwarg).
fn linear_of_kind(
    p: nn::Path<'_>,
    kw: &Kwargs<'_>,
    in_dim: i64,
    out_dim: i64,
    bias: bool,
    kind: Kind,
) -> Result<nn::Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = nn::Init::Uniform { lo: -bound, up: bound };
    let ws = variable_of_kind(&p, kw, "weight", &[out_dim, in_dim], init, kind)?;
    let bs = match bias {
        true => Some(variable_of_kind(&p, kw, "bias", &[out_dim], init, kind)?),
        false => None,
    };
    Ok(nn::Linear { ws, bs })
}

/// The tensors of a Linear layer under `prefix` (`fc1.`), as [`linear`]
/// creates them.
fn linear_layout(out: &mut Vec<TensorSpec>, prefix: &str, in_dim: i64, out_dim: i64, bias: bool) {
    linear_layout_of_kind(out, prefix, in_dim, out_dim, bias, Kind::Float)
}

fn linear_layout_of_kind(out: &mut Vec<TensorSpec>, prefix: &str, in_dim: i64, out_dim: i64, bias: bool, kind: Kind) {
    out.push(TensorSpec {
        name: format!("{prefix}weight"),
        kind,
        shape: vec![out_dim, in_dim],
    });
    if bias {
        out.push(TensorSpec {
            name: format!("{prefix}bias"),
            kind,
            shape: vec![out_dim],
        });
    }
}

/// The MLP of the original pytorch-saver tutorial:
///
/// ```python
/// class MLP(nn.Module):
///     def __init__(self, in_dim, hidden_dim, n_classes, n_layers=3):
///         super().__init__()
///         self.fc1 = nn.Linear(in_dim, hidden_dim)
///         layers = []
///         for _ in range(n_layers - 1):
///             layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
///         layers.append(nn.Linear(hidden_dim, n_classes))
///         self.hidden_layers = nn.Sequential(*layers)
///
///     def forward(self, x):
///         return self.hidden_layers(torch.relu(self.fc1(x)))
/// ```
///
/// State-dict keys: `fc1.weight`, `fc1.bias`, `hidden_layers.0.weight`,
/// `hidden_layers.0.bias`, `hidden_layers.2.weight`, ... (ReLUs hold the
/// odd indices), the last Linear at index `2 * (n_layers - 1)`.
#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    hidden: Vec<nn::Linear>,
}

/// The MLP's kwargs, validated.
struct MlpArgs {
    in_dim: i64,
    hidden_dim: i64,
    n_classes: i64,
    n_layers: i64,
}

impl MlpArgs {
    fn read(kw: &Kwargs<'_>) -> Result<Self> {
        let in_dim = kw.required_i64_at_least("in_dim", 1)?;
        let hidden_dim = kw.required_i64_at_least("hidden_dim", 1)?;
        let n_classes = kw.required_i64_at_least("n_classes", 1)?;
        let n_layers = kw.i64_or("n_layers", 3)?;
        if n_layers < 1 {
            return Err(kw.error(format!("kwarg \"n_layers\" must be at least 1, got {n_layers}")));
        }
        Ok(MlpArgs {
            in_dim,
            hidden_dim,
            n_classes,
            n_layers,
        })
    }
}

impl Mlp {
    /// Builds the MLP under `p` from its kwargs (`in_dim`, `hidden_dim`,
    /// `n_classes`, `n_layers=3`), random-initialized as PyTorch does, or
    /// in uninitialized memory when `kw` says the model is being loaded.
    pub fn new(p: nn::Path<'_>, kw: &Kwargs<'_>) -> Result<Self> {
        let a = MlpArgs::read(kw)?;
        let fc1 = linear(&p / "fc1", kw, a.in_dim, a.hidden_dim, true)?;
        let seq = &p / "hidden_layers";
        let mut hidden = Vec::new();
        for i in 0..(a.n_layers - 1) {
            hidden.push(linear(&seq / (2 * i), kw, a.hidden_dim, a.hidden_dim, true)?);
        }
        hidden.push(linear(
            &seq / (2 * (a.n_layers - 1)),
            kw,
            a.hidden_dim,
            a.n_classes,
            true,
        )?);
        Ok(Mlp { fc1, hidden })
    }
}

/// The MLP's state dict from its kwargs alone (see [`ModelLayout`](crate::registry::ModelLayout)).
fn mlp_layout(kw: &Kwargs<'_>, limit: usize) -> Result<Vec<TensorSpec>> {
    let a = MlpArgs::read(kw)?;
    let count = (a.n_layers as u64).saturating_mul(2).saturating_add(2);
    if count > limit as u64 {
        return Err(kw.error(format!(
            "kwarg \"n_layers\" = {} describes {count} tensors; the file holds {limit}",
            a.n_layers
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    linear_layout(&mut out, "fc1.", a.in_dim, a.hidden_dim, true);
    for i in 0..(a.n_layers - 1) {
        linear_layout(
            &mut out,
            &format!("hidden_layers.{}.", 2 * i),
            a.hidden_dim,
            a.hidden_dim,
            true,
        );
    }
    let last = format!("hidden_layers.{}.", 2 * (a.n_layers - 1));
    linear_layout(&mut out, &last, a.hidden_dim, a.n_classes, true);
    Ok(out)
}

/// `xs @ weight^T + bias` through libtorch's fallible call: a wrong input
/// shape is an error, not a panic (a server should not print a panic and
/// a C++ backtrace for each bad request).
fn linear_forward(layer: &nn::Linear, xs: &Tensor) -> Result<Tensor> {
    Ok(xs.f_linear(&layer.ws, layer.bs.as_ref())?)
}

// SAFETY: the fields are tch tensors (at::Tensor handles, whose reference
// counts are atomic); `&self` methods only pass them to libtorch ops that
// read them, so sharing them between threads is sound.
unsafe impl Sync for Mlp {}

impl Forward for Mlp {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        let mut x = linear_forward(&self.fc1, xs)?.f_relu()?;
        let last = self.hidden.len() - 1;
        for (i, layer) in self.hidden.iter().enumerate() {
            x = linear_forward(layer, &x)?;
            if i < last {
                x = x.f_relu()?;
            }
        }
        Ok(x)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_sync(&self) -> Option<&(dyn Forward + Sync)> {
        Some(self)
    }
}

/// The built-in `torch.nn.Linear`: tch's [`nn::Linear`] with a fallible
/// forward (`model.module::<nn::Linear>()` still finds the tch module).
#[derive(Debug)]
struct BuiltinLinear(nn::Linear);

// SAFETY: as for `Mlp`: forward only reads the weight and bias.
unsafe impl Sync for BuiltinLinear {}

impl Forward for BuiltinLinear {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        linear_forward(&self.0, xs)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        &self.0
    }

    fn as_sync(&self) -> Option<&(dyn Forward + Sync)> {
        Some(self)
    }
}

/// `torch.nn.Linear`'s kwargs, validated: `in_features`, `out_features`,
/// `bias` and `dtype` (a `dtype` tag naming a floating-point dtype;
/// float32 when absent).
fn linear_args(kw: &Kwargs<'_>) -> Result<(i64, i64, bool, Kind)> {
    let in_features = kw.required_i64_at_least("in_features", 1)?;
    let out_features = kw.required_i64_at_least("out_features", 1)?;
    let bias = kw.bool_or("bias", true)?;
    let kind = match kw.dtype("dtype")? {
        None => Kind::Float,
        Some("float32") => Kind::Float,
        Some("float64") => Kind::Double,
        Some("float16") => Kind::Half,
        Some("bfloat16") => Kind::BFloat16,
        Some(other) => {
            return Err(kw.error(format!(
                "kwarg \"dtype\" must be a floating-point dtype (float32, float64, float16, bfloat16), got {other}"
            )))
        }
    };
    Ok((in_features, out_features, bias, kind))
}

fn build_linear(p: nn::Path<'_>, kw: &Kwargs<'_>) -> Result<BoxedModel> {
    let (in_features, out_features, bias, kind) = linear_args(kw)?;
    Ok(Box::new(BuiltinLinear(linear_of_kind(
        p,
        kw,
        in_features,
        out_features,
        bias,
        kind,
    )?)))
}

fn builtin_linear_layout(kw: &Kwargs<'_>, _limit: usize) -> Result<Vec<TensorSpec>> {
    let (in_features, out_features, bias, kind) = linear_args(kw)?;
    let mut out = Vec::with_capacity(2);
    linear_layout_of_kind(&mut out, "", in_features, out_features, bias, kind);
    Ok(out)
}

fn build_mlp(p: nn::Path<'_>, kw: &Kwargs<'_>) -> Result<BoxedModel> {
    Ok(Box::new(Mlp::new(p, kw)?))
}

pub(crate) fn register_builtins(r: &mut Registry) {
    r.register_model_with_layout(LINEAR, build_linear, builtin_linear_layout)
        .expect("fresh registry");
    r.register_model_with_layout(MLP, build_mlp, mlp_layout)
        .expect("fresh registry");
    r.register_model_with_layout(SEQUENTIAL, sequential::build, sequential::layout)
        .expect("fresh registry");
}
