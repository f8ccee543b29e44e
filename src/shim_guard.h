// How the C++ shims (src/optim/kernels.cpp, src/borrowed_memory.cpp)
// report failure to Rust: every exception is caught at the boundary and
// becomes a malloc'ed message, freed by pts_kernel_free_error; NULL means
// success.

#ifndef PYTORCH_SAVER_SHIM_GUARD_H
#define PYTORCH_SAVER_SHIM_GUARD_H

#include <cstdlib>
#include <cstring>
#include <exception>

namespace pts_shim {

inline char *message(const char *text) {
  size_t n = std::strlen(text) + 1;
  char *copy = static_cast<char *>(std::malloc(n));
  if (copy != nullptr) std::memcpy(copy, text, n);
  return copy;
}

// Runs f; NULL when it returns, the exception's message when it throws.
template <typename F>
char *guard(F &&f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}

}  // namespace pts_shim

#endif  // PYTORCH_SAVER_SHIM_GUARD_H
