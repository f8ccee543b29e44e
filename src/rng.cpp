// The state of libtorch's default generators, as torch.get_rng_state()
// and torch.cuda.get_rng_state() see it: tch 0.26 can seed the global
// generator but cannot read or restore its state, which exact resumption
// needs. Every access holds the generator's mutex, as PyTorch's own
// get_state/set_state bindings do.
//
// `cuda_index` < 0 means the CPU generator, otherwise that CUDA device's.
// Returns NULL on success or a malloc'ed message (pts_kernel_free_error
// frees it, as for the optimizer kernels).

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <mutex>

#include "shim_guard.h"

namespace {

at::Generator default_generator(int cuda_index) {
  if (cuda_index < 0) return at::detail::getDefaultCPUGenerator();
  return at::globalContext().defaultGenerator(
      at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_index)));
}

}  // namespace

extern "C" {

// *out = a new uint8 CPU tensor holding the generator's state.
char *pts_rng_get_state(int cuda_index, at::Tensor **out) {
  return pts_shim::guard([&] {
    at::Generator generator = default_generator(cuda_index);
    std::lock_guard<std::mutex> lock(generator.mutex());
    *out = new at::Tensor(generator.get_state());
  });
}

// Sets the generator's state from `state` (uint8, the size get_state
// returns; libtorch checks both and throws otherwise).
char *pts_rng_set_state(int cuda_index, const at::Tensor *state) {
  return pts_shim::guard([&] {
    at::Generator generator = default_generator(cuda_index);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(*state);
  });
}

}  // extern "C"
