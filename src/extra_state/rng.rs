//! [`Rng`]: libtorch's default generators as a [`Stateful`] object,
//! class `pytorch_saver.RNG` (FORMAT.md 11.3), through the shim in
//! src/rng.cpp.

use serde_json::{Map, Value};
use tch::{Cuda, Kind, Tensor};
use torch_sys::C_tensor;

use super::{ExtraState, Stateful};
use crate::error::Result;
use crate::optim::kernels::{check, owned};

extern "C" {
    // src/rng.cpp; a negative `cuda_index` is the CPU generator.
    fn pts_rng_get_state(cuda_index: i32, out: *mut *mut C_tensor) -> *mut std::ffi::c_char;
    fn pts_rng_set_state(cuda_index: i32, state: *const C_tensor) -> *mut std::ffi::c_char;
}

/// The class name of [`Rng`]'s state.
pub const RNG_CLASS: &str = "pytorch_saver.RNG";

/// The process's default random number generators: libtorch's CPU
/// generator (what `Tensor::randn`, `randperm`, dropout and weight init
/// draw from, Python's `torch.get_rng_state()`), and each CUDA device's
/// when CUDA is present.
///
/// Its state is `{"torch": {"cpu": tensor, "cuda": [tensor, ...]}}`, each
/// tensor the generator's `uint8` state. Loading restores `torch.cpu`, and
/// `torch.cuda` for the devices this process has; the `python` and
/// `numpy` parts a Python writer adds are left alone, as is a `cuda` part
/// without CUDA here.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rng;

impl Rng {
    pub fn new() -> Self {
        Rng
    }

    /// The CPU generator's state (`torch.get_rng_state()`): a new `uint8`
    /// tensor.
    pub fn cpu_state() -> Result<Tensor> {
        generator_state(-1)
    }

    /// Sets the CPU generator's state (`torch.set_rng_state(state)`).
    pub fn set_cpu_state(state: &Tensor) -> Result<()> {
        set_generator_state(-1, state)
    }

    /// The number of CUDA devices whose generators this process has.
    fn cuda_devices() -> i32 {
        match Cuda::is_available() {
            true => i32::try_from(Cuda::device_count()).unwrap_or(0),
            false => 0,
        }
    }
}

fn generator_state(cuda_index: i32) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    // SAFETY: the shim catches every C++ exception; `out` receives a heap
    // at::Tensor that `owned` takes over.
    check(unsafe { pts_rng_get_state(cuda_index, &mut out) })?;
    owned(out)
}

fn set_generator_state(cuda_index: i32, state: &Tensor) -> Result<()> {
    // SAFETY: `state` is a valid at::Tensor for the call; the shim catches
    // every C++ exception (a wrong dtype or size is one).
    check(unsafe { pts_rng_set_state(cuda_index, state.as_ptr()) })
}

impl Stateful for Rng {
    fn class_name(&self) -> &str {
        RNG_CLASS
    }

    fn state(&self) -> Result<ExtraState> {
        let mut state = ExtraState::new(Value::Null);
        let mut torch = Map::new();
        torch.insert("cpu".into(), state.add_tensor("torch.cpu", Rng::cpu_state()?));
        let devices = Rng::cuda_devices();
        if devices > 0 {
            let cuda = (0..devices)
                .map(|i| Ok(state.add_tensor(format!("torch.cuda.{i}"), generator_state(i)?)))
                .collect::<Result<Vec<_>>>()?;
            torch.insert("cuda".into(), Value::Array(cuda));
        }
        let mut value = Map::new();
        value.insert("torch".into(), Value::Object(torch));
        state.value = Value::Object(value);
        Ok(state)
    }

    fn check_state(&self, state: &ExtraState) -> Result<()> {
        let value = state
            .value
            .as_object()
            .ok_or_else(|| state.invalid("", "a pytorch_saver.RNG state is an object".into()))?;
        let Some(torch) = value.get("torch") else {
            return Ok(());
        };
        let torch = torch
            .as_object()
            .ok_or_else(|| state.invalid("torch", "is not an object".into()))?;
        if let Some(cpu) = torch.get("cpu") {
            let current = Rng::cpu_state()?;
            state.tensor_of(cpu, "torch.cpu", Kind::Uint8, &current.size())?;
        }
        let devices = Rng::cuda_devices();
        if let (Some(cuda), true) = (torch.get("cuda"), devices > 0) {
            let cuda = cuda
                .as_array()
                .ok_or_else(|| state.invalid("torch.cuda", "is not a list".into()))?;
            for (i, tag) in (0..devices).zip(cuda) {
                let current = generator_state(i)?;
                state.tensor_of(tag, &format!("torch.cuda.{i}"), Kind::Uint8, &current.size())?;
            }
        }
        Ok(())
    }

    fn load_state(&mut self, state: &ExtraState) -> Result<()> {
        self.check_state(state)?;
        let Some(torch) = state.value.get("torch") else {
            return Ok(());
        };
        if let Some(cpu) = torch.get("cpu") {
            Rng::set_cpu_state(state.tensor(cpu, "torch.cpu")?)?;
        }
        if let Some(cuda) = torch.get("cuda").and_then(Value::as_array) {
            for (i, tag) in (0..Rng::cuda_devices()).zip(cuda) {
                set_generator_state(i, state.tensor(tag, &format!("torch.cuda.{i}"))?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Replaying numbers from a restored state is tests/resume.rs's: lib
    // tests share the generator with every other test thread.
    #[test]
    fn a_state_of_the_wrong_size_or_dtype_is_an_error_not_a_crash() {
        let state = Rng::cpu_state().unwrap();
        assert_eq!(state.kind(), Kind::Uint8);
        assert_eq!(state.dim(), 1);
        let e = Rng::set_cpu_state(&Tensor::zeros([3], (Kind::Uint8, tch::Device::Cpu))).unwrap_err();
        assert_eq!(e.kind(), "Torch");
        let wrong_dtype = Tensor::zeros(state.size(), (Kind::Float, tch::Device::Cpu));
        assert!(Rng::set_cpu_state(&wrong_dtype).is_err());
    }
}
