//! Built-in models, with state-dict names identical to PyTorch's for the
//! same Python class, so that a file moves between languages unchanged
//! (docs/MODELS.md).

use tch::nn;
use tch::Tensor;

use crate::error::Result;
use crate::registry::{BoxedModel, Forward, Kwargs, Registry};

mod sequential;
pub use sequential::{Sequential, LAYER_TYPES, SEQUENTIAL};

/// Registry name of `torch.nn.Linear(in_features, out_features, bias=True)`.
pub const LINEAR: &str = "torch.nn.Linear";
/// Registry name of the built-in MLP (see [`Mlp`]).
pub const MLP: &str = "pytorch_saver.models.MLP";

/// A Linear layer initialised as PyTorch's `reset_parameters` does:
/// weight and bias uniform in +-1/sqrt(in_features); zeros when
/// `random_init` is false (the values are about to be loaded).
///
/// The weight is created before the bias, as PyTorch registers them (tch's
/// own `nn::linear` creates the bias first): creation order is parameter
/// order, and optimizer state indexes parameters by that order.
pub fn linear(p: nn::Path<'_>, in_dim: i64, out_dim: i64, bias: bool, random_init: bool) -> nn::Linear {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = if random_init {
        nn::Init::Uniform { lo: -bound, up: bound }
    } else {
        nn::Init::Const(0.0)
    };
    let ws = p.var("weight", &[out_dim, in_dim], init);
    let bs = bias.then(|| p.var("bias", &[out_dim], init));
    nn::Linear { ws, bs }
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

impl Mlp {
    /// The MLP under `p`; `random_init` as in [`linear`].
    pub fn new(
        p: nn::Path<'_>,
        in_dim: i64,
        hidden_dim: i64,
        n_classes: i64,
        n_layers: i64,
        random_init: bool,
    ) -> Self {
        let fc1 = linear(&p / "fc1", in_dim, hidden_dim, true, random_init);
        let seq = &p / "hidden_layers";
        let mut hidden = Vec::new();
        for i in 0..(n_layers - 1) {
            hidden.push(linear(&seq / (2 * i), hidden_dim, hidden_dim, true, random_init));
        }
        hidden.push(linear(
            &seq / (2 * (n_layers - 1)),
            hidden_dim,
            n_classes,
            true,
            random_init,
        ));
        Mlp { fc1, hidden }
    }
}

/// `xs @ weight^T + bias` through libtorch's fallible call: a wrong input
/// shape is an error, not a panic (a server should not print a panic and
/// a C++ backtrace for each bad request).
fn linear_forward(layer: &nn::Linear, xs: &Tensor) -> Result<Tensor> {
    Ok(xs.f_linear(&layer.ws, layer.bs.as_ref())?)
}

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
}

/// The built-in `torch.nn.Linear`: tch's [`nn::Linear`] with a fallible
/// forward (`model.module::<nn::Linear>()` still finds the tch module).
#[derive(Debug)]
struct BuiltinLinear(nn::Linear);

impl Forward for BuiltinLinear {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        linear_forward(&self.0, xs)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        &self.0
    }
}

fn build_linear(p: nn::Path<'_>, kw: &Kwargs<'_>) -> Result<BoxedModel> {
    let in_features = kw.required_i64_at_least("in_features", 1)?;
    let out_features = kw.required_i64_at_least("out_features", 1)?;
    let bias = kw.bool_or("bias", true)?;
    Ok(Box::new(BuiltinLinear(linear(
        p,
        in_features,
        out_features,
        bias,
        !kw.loading(),
    ))))
}

fn build_mlp(p: nn::Path<'_>, kw: &Kwargs<'_>) -> Result<BoxedModel> {
    let in_dim = kw.required_i64_at_least("in_dim", 1)?;
    let hidden_dim = kw.required_i64_at_least("hidden_dim", 1)?;
    let n_classes = kw.required_i64_at_least("n_classes", 1)?;
    let n_layers = kw.i64_or("n_layers", 3)?;
    if n_layers < 1 {
        return Err(kw.error(format!("kwarg \"n_layers\" must be at least 1, got {n_layers}")));
    }
    Ok(Box::new(Mlp::new(
        p,
        in_dim,
        hidden_dim,
        n_classes,
        n_layers,
        !kw.loading(),
    )))
}

pub(crate) fn register_builtins(r: &mut Registry) {
    r.register_model(LINEAR, build_linear).expect("fresh registry");
    r.register_model(MLP, build_mlp).expect("fresh registry");
    r.register_model(SEQUENTIAL, sequential::build).expect("fresh registry");
}
