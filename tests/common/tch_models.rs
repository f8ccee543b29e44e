//! Test models on real libtorch tensors.

use pytorch_saver::{Kwargs, ModelContainer, Registry};
use std::collections::BTreeMap;

use tch::{nn, Kind, Tensor};

pub const ALL_DTYPES: &str = "tests.AllDtypes";

/// A model whose state dict holds every v1 dtype, rank-0 and empty
/// tensors, and float specials (NaN payloads, -0.0, infinities) that only
/// a bit-exact path preserves.
#[derive(Debug)]
struct AllDtypes;

impl nn::Module for AllDtypes {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.shallow_clone()
    }
}

pub fn all_dtypes_factory(p: nn::Path<'_>, kw: &Kwargs<'_>) -> pytorch_saver::Result<pytorch_saver::BoxedModel> {
    let n = kw.i64_or("n", 5)?;
    let r = |kind: Kind| Tensor::randn([n, 3], (Kind::Float, p.device())).to_kind(kind) * 7;
    let specials = Tensor::from_slice(&[
        f32::NAN,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_1234),
    ]);
    let _ = p.add("f64", r(Kind::Double), true);
    let _ = p.add("f32", r(Kind::Float), true);
    let _ = p.add("f32_specials", specials.copy(), false);
    let _ = p.add("f16", r(Kind::Half), false);
    let _ = p.add("bf16", r(Kind::BFloat16), false);
    let _ = p.add("i64", r(Kind::Int64), false);
    let _ = p.add("i32", r(Kind::Int), false);
    let _ = p.add("i16", r(Kind::Int16), false);
    let _ = p.add("i8", r(Kind::Int8), false);
    let _ = p.add("u8", r(Kind::Uint8), false);
    let _ = p.add("bool", r(Kind::Float).gt(0.0), false);
    let _ = p.add("scalar_f32", Tensor::randn([], (Kind::Float, p.device())), true);
    let _ = (&p / "bn").add("num_batches_tracked", Tensor::from(n * 1000 + 7), false);
    let _ = p.add("empty_f32", Tensor::zeros([0], (Kind::Float, p.device())), false);
    let _ = p.add("empty_i64_2d", Tensor::zeros([3, 0], (Kind::Int64, p.device())), false);
    Ok(Box::new(AllDtypes))
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_model(ALL_DTYPES, all_dtypes_factory).unwrap();
    r
}

/// The raw bytes of a tensor, in C order.
pub fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let n = t.numel();
    let mut out = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut out, n);
    out
}

/// The tensors of a safetensors file, as tch tensors.
pub fn read_safetensors(path: &std::path::Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).expect("reference output");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let kind = match view.dtype() {
                safetensors::Dtype::F32 => Kind::Float,
                safetensors::Dtype::F64 => Kind::Double,
                safetensors::Dtype::I64 => Kind::Int64,
                d => panic!("unexpected dtype {d:?}"),
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            (name, Tensor::from_data_size(view.data(), &shape, kind))
        })
        .collect()
}

/// Largest |a - b| / max(|a|, |b|) over the elements (0 where both are 0).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let diff = (&a - &b).abs();
    let scale = a.abs().maximum(&b.abs());
    let rel = diff.where_self(&scale.eq(0.0).logical_not(), &Tensor::from(0.0f64)) / scale.clamp_min(f64::MIN_POSITIVE);
    rel.max().double_value(&[])
}

pub fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.kind() == b.kind() && a.equal(b)
}

/// One training step through the container: MSE of the model on `x`
/// against `y`, optimizer step, then a scheduler step if there is one (the
/// loss as metric for ReduceLROnPlateau). The loop every training test,
/// golden sidecar and tests/python/resume_torch.py repeat.
pub fn mse_step(c: &mut ModelContainer, x: &Tensor, y: &Tensor) {
    c.zero_grad().unwrap();
    let out = c.model().unwrap().forward_t(x, true).unwrap();
    let loss = (out - y).square().mean(Kind::Float);
    loss.backward();
    c.step().unwrap();
    match c.scheduler().map(|s| s.needs_metric()) {
        Some(true) => c.scheduler_step_with_metric(loss.double_value(&[])).unwrap(),
        Some(false) => c.scheduler_step().unwrap(),
        None => {}
    }
}

/// Training data: 8 batches of 8 rows, the same in every process (and in
/// the Python scripts that read it from a safetensors file).
pub fn batch_data() -> (Tensor, Tensor) {
    tch::manual_seed(7);
    let x = Tensor::randn([64, 4], (Kind::Float, tch::Device::Cpu));
    let y = Tensor::randn([64, 3], (Kind::Float, tch::Device::Cpu));
    (x, y)
}

/// Steps `start..start + steps` of the loop the cross-language tests and
/// tests/python/{resume_torch,package_resume}.py run: batch `step % 8`,
/// then [`mse_step`].
pub fn train_batches(c: &mut ModelContainer, (x, y): &(Tensor, Tensor), start: usize, steps: usize) {
    for step in start..start + steps {
        let b = (step % 8) as i64;
        mse_step(c, &x.narrow(0, b * 8, 8), &y.narrow(0, b * 8, 8));
    }
}

/// One optimizer step on the sum of squares of the model's outputs for a
/// batch of ones (two rows, as wide as the first parameter's input): a
/// step that changes every parameter, for tests of what is saved.
pub fn train_step(c: &mut ModelContainer) {
    let model = c.model().unwrap();
    let x = Tensor::ones([2, model.parameters()[0].1.size()[1]], (Kind::Float, tch::Device::Cpu));
    c.zero_grad().unwrap();
    let loss = c
        .model()
        .unwrap()
        .forward_t(&x, true)
        .unwrap()
        .square()
        .sum(Kind::Float);
    loss.backward();
    c.step().unwrap();
}
