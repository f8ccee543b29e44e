// The few ATen calls the optimizers need that tch 0.26 does not expose:
// tch's generated API drops defaulted Scalar arguments, so it has
// `add_(other)` but not `add_(other, alpha)`, and `addcmul_` without
// `value`. torch.optim passes those scalars, and the kernels use them
// inside a fused multiply-add, so rewriting `add_(b, alpha=a)` as
// `add_(b * a)` changes the last bit. Calling the same ATen op with the
// same arguments keeps Rust bit-identical to torch.optim.
//
// Every function catches every exception; it returns NULL on success or
// a malloc'ed message that the caller frees with pts_kernel_free_error.
// Tensors are tch's handles (heap-allocated at::Tensor); a returned
// tensor is heap-allocated for tch's Tensor::from_ptr to own.

#include <ATen/core/Tensor.h>
#include <ATen/ops/linalg_vector_norm.h>

#include <cstdlib>

#include "../shim_guard.h"

using pts_shim::guard;

extern "C" {

void pts_kernel_free_error(char *error) { std::free(error); }

// *out = self + alpha * other
char *pts_kernel_add(const at::Tensor *self, const at::Tensor *other, double alpha,
                     at::Tensor **out) {
  return guard([&] { *out = new at::Tensor(self->add(*other, alpha)); });
}

// self += alpha * other
char *pts_kernel_add_(at::Tensor *self, const at::Tensor *other, double alpha) {
  return guard([&] { self->add_(*other, alpha); });
}

// *out = self + value * t1 * t2
char *pts_kernel_addcmul(const at::Tensor *self, const at::Tensor *t1, const at::Tensor *t2,
                         double value, at::Tensor **out) {
  return guard([&] { *out = new at::Tensor(self->addcmul(*t1, *t2, value)); });
}

// self += value * t1 * t2
char *pts_kernel_addcmul_(at::Tensor *self, const at::Tensor *t1, const at::Tensor *t2,
                          double value) {
  return guard([&] { self->addcmul_(*t1, *t2, value); });
}

// self += value * t1 / t2
char *pts_kernel_addcdiv_(at::Tensor *self, const at::Tensor *t1, const at::Tensor *t2,
                          double value) {
  return guard([&] { self->addcdiv_(*t1, *t2, value); });
}

// *out = beta * self + alpha * (mat1 @ mat2) (torch.addmm with beta and alpha)
char *pts_kernel_addmm(const at::Tensor *self, const at::Tensor *mat1, const at::Tensor *mat2,
                       double beta, double alpha, at::Tensor **out) {
  return guard([&] { *out = new at::Tensor(self->addmm(*mat1, *mat2, beta, alpha)); });
}

// *out = self.clamp(min=min) (torch.clamp with no max; tch requires both)
char *pts_kernel_clamp_min(const at::Tensor *self, double min, at::Tensor **out) {
  return guard([&] { *out = new at::Tensor(self->clamp(min, c10::nullopt)); });
}

// self.clamp_(min=min)
char *pts_kernel_clamp_min_(at::Tensor *self, double min) {
  return guard([&] { self->clamp_(min, c10::nullopt); });
}

// *out = torch.linalg.vector_norm(self, 2, dim, keepdim): the whole tensor
// when dim_len < 0, else over the dim_len dims at dim (Tensor.norm's path).
char *pts_kernel_vector_norm(const at::Tensor *self, const int64_t *dim, int64_t dim_len,
                             bool keepdim, at::Tensor **out) {
  return guard([&] {
    at::OptionalIntArrayRef dims = c10::nullopt;
    if (dim_len >= 0) {
      dims = at::IntArrayRef(dim, static_cast<size_t>(dim_len));
    }
    *out = new at::Tensor(at::linalg_vector_norm(*self, 2, dims, keepdim, c10::nullopt));
  });
}

// self.grad = None (PyTorch's zero_grad(set_to_none=True)); tch can only zero it.
char *pts_kernel_clear_grad(at::Tensor *self) {
  return guard([&] { self->mutable_grad().reset(); });
}

}  // extern "C"
