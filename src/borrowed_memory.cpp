// Tensors over memory that libtorch does not own: a checkpoint's private
// file mapping, handed out without a copy. tch 0.26 can wrap a pointer
// (Tensor::from_blob) but cannot attach a deleter, so nothing would keep
// the mapping alive for as long as a tensor uses it; ATen's TensorMaker
// can. The context travels with the tensor's storage and is released
// exactly once: when the last tensor sharing that storage is freed, or
// here if making the tensor fails.
//
// Returns NULL on success or a malloc'ed message (pts_kernel_free_error
// frees it, as for the optimizer kernels).

#include <ATen/ops/from_blob.h>

#include <cstdint>
#include <memory>

#include "shim_guard.h"

extern "C" {

// *out = a CPU tensor of `dtype` (a c10::ScalarType value) and `sizes`
// (contiguous) whose data is `data`; `release(context)` runs when its
// storage dies. On error `release(context)` has already run.
char *pts_tensor_over_memory(void *data, const int64_t *sizes, size_t ndim, int dtype,
                             void (*release)(void *), void *context, at::Tensor **out) {
  // Owns the context from here on, whatever happens below.
  std::unique_ptr<void, void (*)(void *)> owner(context, release);
  return pts_shim::guard([&] {
    auto options = at::TensorOptions().dtype(static_cast<c10::ScalarType>(dtype)).device(at::kCPU);
    at::Tensor tensor = at::for_blob(data, at::IntArrayRef(sizes, ndim))
                            .context(owner.release(), release)
                            .options(options)
                            .make_tensor();
    *out = new at::Tensor(std::move(tensor));
  });
}

}  // extern "C"
