// pytorch_saver.hpp: the C++17 binding of pytorch-saver, header-only.
//
// It wraps the C ABI of include/pytorch_saver.h (the reference for every
// call's semantics) in move-only RAII classes that throw
// pytorch_saver::Error, take and return torch::Tensor without copying, and
// register any torch::nn::Module subclass as a model factory:
//
//   pytorch_saver::Registry registry;  // the built-in classes
//   registry.register_module<Net>("my_project.Net", [](const pytorch_saver::Kwargs& kw, bool) {
//     return std::make_shared<Net>(kw.get<int64_t>("in"), kw.get_or<int64_t>("hidden", 16));
//   });
//   pytorch_saver::Container container(registry);
//   container.initialize("my_project.Net", R"({"in": 4})", "torch.optim.Adam", R"({"lr": 0.01})");
//   std::shared_ptr<Net> net = container.module<Net>();  // the module the container trains
//
// For serving, a Model loads the model alone, read-only, and runs
// forward from many threads at once:
//
//   auto [model, metadata] = pytorch_saver::Model::load(path, registry);
//   torch::Tensor y = model.forward(x);  // from any number of threads
//
// Ownership: each class owns its C handle and frees it in its destructor;
// a moved-from object holds none (capi() is nullptr) and every call on it
// throws Error with PTS_ERROR_NULL_ARGUMENT. Thread safety is the C
// header's: a Checkpoint may be read from several threads at once, and a
// Model run by several at once (forward, class_name, concurrent,
// state_tensor); a Registry may be shared for reading, but
// register_module needs exclusive use; a Container is used by one thread
// at a time (it may move between threads), const methods included.
//
// Requirements: the libtorch this program links must be the one the
// library links (the PyTorch 2.13.0 wheel's): torch::Tensor objects cross
// the boundary as pointers.

#ifndef PYTORCH_SAVER_HPP
#define PYTORCH_SAVER_HPP

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <c10/util/Type.h>
#include <pytorch_saver.h>
#include <torch/nn/module.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace pytorch_saver {

/// An error from the library or from this binding: what() is the message,
/// code() the stable PTS_ERROR_* code, kind() the finer stable name of
/// docs/C_API.md, "Error kinds" ("CrcMismatch", "InvalidKwargs", ...).
/// Every fallible call throws it.
class Error : public std::runtime_error {
 public:
  Error(uint32_t code, const std::string& message, std::string kind = "")
      : std::runtime_error(message), code_(code), kind_(std::move(kind)) {}

  /// The PTS_ERROR_* code.
  uint32_t code() const noexcept { return code_; }

  /// The error's kind, as every language reports it; empty for an error
  /// this binding made itself.
  const std::string& kind() const noexcept { return kind_; }

 private:
  uint32_t code_;
  std::string kind_;
};

/// Which tensor member of a checkpoint.
enum class Member : pts_member_t {
  /// model.safetensors: the model's state dict.
  Model = PTS_MEMBER_MODEL,
  /// optimizer.safetensors: the optimizer's per-parameter state
  /// (`state.<index>.<key>`); absent from inference files.
  Optimizer = PTS_MEMBER_OPTIMIZER,
  /// extra.safetensors (format version 2): the tensors of the extra
  /// training state, named by the `tensor` tags of the metadata's
  /// `__pytorch_saver__.extra`; empty in files without extra state.
  Extra = PTS_MEMBER_EXTRA,
};

/// The library's version, "MAJOR.MINOR.PATCH" (compare with PTS_VERSION
/// to detect a header/library mismatch).
inline std::string version() { return pts_version(); }

namespace detail {

struct ErrorDeleter {
  void operator()(pts_error_t* p) const noexcept { pts_error_free(p); }
};
struct StringDeleter {
  void operator()(char* p) const noexcept { pts_string_free(p); }
};
struct TensorDeleter {
  void operator()(pts_tensor_t* p) const noexcept { pts_tensor_free(p); }
};
struct CheckpointDeleter {
  void operator()(pts_checkpoint_t* p) const noexcept { pts_checkpoint_free(p); }
};
struct RegistryDeleter {
  void operator()(pts_registry_t* p) const noexcept { pts_registry_free(p); }
};
struct ContainerDeleter {
  void operator()(pts_container_t* p) const noexcept { pts_container_free(p); }
};
struct LoadOptionsDeleter {
  void operator()(pts_load_options_t* p) const noexcept { pts_load_options_free(p); }
};
struct ModelDeleter {
  void operator()(pts_model_t* p) const noexcept { pts_model_free(p); }
};
struct ManagerDeleter {
  void operator()(pts_manager_t* p) const noexcept { pts_manager_free(p); }
};

/// Throws a non-NULL error as Error, freeing it.
inline void check(pts_error_t* raw) {
  if (raw == nullptr) return;
  std::unique_ptr<pts_error_t, ErrorDeleter> error(raw);
  throw Error(pts_error_code(error.get()), pts_error_message(error.get()),
              pts_error_kind(error.get()));
}

/// Takes a string the library returned: copies it and frees it.
inline std::string take_string(char* raw) {
  std::unique_ptr<char, StringDeleter> owned(raw);
  return owned ? std::string(owned.get()) : std::string();
}

/// NULL for "", the string otherwise (the C API's "none").
inline const char* or_null(const std::string& s) noexcept {
  return s.empty() ? nullptr : s.c_str();
}

/// The exception being handled as an error object for the library (a
/// callback returns it): Error keeps its code, anything else gets
/// `fallback`. Call only inside a catch block.
inline pts_error_t* current_exception_to_error(pts_error_code_t fallback) noexcept {
  try {
    throw;
  } catch (const Error& e) {
    return pts_error_new(e.code(), e.what());
  } catch (const c10::Error& e) {
    return pts_error_new(fallback, e.what_without_backtrace());
  } catch (const std::exception& e) {
    return pts_error_new(fallback, e.what());
  } catch (...) {
    return pts_error_new(fallback, "unknown C++ exception");
  }
}

/// A closure's loss as a double: a double, or a one-element tensor.
inline double loss_value(double loss) noexcept { return loss; }
inline double loss_value(const at::Tensor& loss) { return loss.item<double>(); }

}  // namespace detail

/// An owned pts_tensor_t handle.
using TensorHandle = std::unique_ptr<pts_tensor_t, detail::TensorDeleter>;

/// A new handle sharing `tensor` (storage and autograd state, no copy);
/// `tensor` stays the caller's.
inline TensorHandle tensor_to_capi(const torch::Tensor& tensor) {
  if (!tensor.defined()) throw Error(PTS_ERROR_INVALID_ARGUMENT, "the tensor is undefined");
  pts_tensor_t* out = nullptr;
  detail::check(pts_tensor_from_torch(&tensor, &out));
  return TensorHandle(out);
}

/// The torch::Tensor inside a handle (a reference-count increment, no
/// copy): it outlives the handle.
inline torch::Tensor tensor_from_capi(const pts_tensor_t* handle) {
  const void* ptr = nullptr;
  detail::check(pts_tensor_torch_ptr(handle, &ptr));
  return *static_cast<const at::Tensor*>(ptr);
}

/// A progress callback: `done` of `total` bytes. The first call is
/// (0, total), `done` grows from call to call, and the last call is
/// (total, total), made only when the operation succeeded. Calls come from
/// the calling thread or the library's worker threads, one at a time,
/// never after the call returned. A function that throws is not called
/// again for that operation, and its exception is rethrown once the
/// operation returned (the library never sees it).
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

namespace detail {

/// The C side of a ProgressFn. The library owns a shared_ptr to it
/// (freed by its finalizer when no operation can report any more); the
/// binding holds another, to rethrow what the function threw.
class ProgressRelay {
 public:
  explicit ProgressRelay(ProgressFn fn) : fn_(std::move(fn)) {}

  /// A new C user-data pointer for the library, released by release().
  static void* user_data(const std::shared_ptr<ProgressRelay>& relay) {
    return new std::shared_ptr<ProgressRelay>(relay);
  }

  static void call(uint64_t done, uint64_t total, void* user_data) noexcept {
    ProgressRelay& self = **static_cast<std::shared_ptr<ProgressRelay>*>(user_data);
    std::lock_guard<std::mutex> lock(self.mutex_);
    if (self.error_) return;
    try {
      self.fn_(done, total);
    } catch (...) {
      self.error_ = std::current_exception();
    }
  }

  static void release(void* user_data) noexcept {
    delete static_cast<std::shared_ptr<ProgressRelay>*>(user_data);
  }

  /// Forgets an exception of an earlier operation: called before one starts.
  void reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = nullptr;
  }

  /// Throws what the function threw during the operation, if it did.
  void rethrow() {
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      error = std::exchange(error_, nullptr);
    }
    if (error) std::rethrow_exception(error);
  }

 private:
  ProgressFn fn_;
  std::mutex mutex_;  // calls of operations that share the relay may overlap
  std::exception_ptr error_;
};

}  // namespace detail

/// How Container::load, Container::restore, Checkpoint::open and
/// Model::load read a file. The defaults are those of the calls without
/// options: every CRC-32 checked, tensors zero-copy.
struct LoadOptions {
  /// false (default): zero-copy, the tensors point into a private,
  /// copy-on-write mapping of the file: no copy is made, and processes
  /// that load the same file share its page cache. true: the tensors get
  /// memory of their own. Pick true when another process may truncate or
  /// rewrite the file while the model is in use: a truncated mapping
  /// faults (SIGBUS, which kills the process) when a tensor is read, a
  /// copy does not. (Renaming a new file over the path is safe either
  /// way: the mapping keeps the old file.) Ignored by restore, which
  /// always copies into the existing tensors, and by Checkpoint::open.
  bool copy = false;
  /// true (default): the CRC-32 of the tensor data is checked before
  /// anything is handed out, so a flipped bit is PTS_ERROR_FORMAT. false
  /// skips that check (the file's structure is still validated): for
  /// files verified once when they were deployed (`pytorch-saver verify
  /// FILE`), to load them faster; a flipped bit in tensor data then goes
  /// unnoticed.
  bool verify = true;
  /// Hears the load's progress (empty: nobody): the total is the bytes
  /// the call checks (every CRC-32 with verify, metadata.json's alone
  /// without) plus, when it copies (copy, and always for a restore), the
  /// model's and optimizer's tensor data. See ProgressFn.
  ProgressFn progress = nullptr;
};

/// An owned pts_load_options_t handle.
using LoadOptionsHandle = std::unique_ptr<pts_load_options_t, detail::LoadOptionsDeleter>;

/// LoadOptions as C options, with the progress relay of the call.
struct CapiLoadOptions {
  LoadOptionsHandle handle;
  std::shared_ptr<detail::ProgressRelay> progress;

  pts_load_options_t* get() const noexcept { return handle.get(); }

  /// Throws what the progress function threw, once the call returned.
  void rethrow_progress_error() const {
    if (progress) progress->rethrow();
  }
};

/// `options` as a new C handle, for the pts_*_ex calls.
inline CapiLoadOptions load_options_to_capi(const LoadOptions& options) {
  pts_load_options_t* out = nullptr;
  detail::check(pts_load_options_new(&out));
  CapiLoadOptions c_options{LoadOptionsHandle(out), nullptr};
  detail::check(pts_load_options_set_copy(out, options.copy));
  detail::check(pts_load_options_set_verify(out, options.verify));
  if (options.progress) {
    auto relay = std::make_shared<detail::ProgressRelay>(options.progress);
    detail::check(pts_load_options_set_progress(out, &detail::ProgressRelay::call,
                                                detail::ProgressRelay::user_data(relay),
                                                &detail::ProgressRelay::release));
    c_options.progress = std::move(relay);
  }
  return c_options;
}

/// Whether a model registered by Registry::register_module may run its
/// forward on several threads at once when served by a Model.
enum class Concurrency {
  /// Concurrent calls (the default): the module's eval-mode forward only
  /// reads the module, as torch::nn's modules' does.
  Concurrent,
  /// One call at a time: for a module whose forward writes to itself
  /// (a cache, a counter, a non-thread-safe member) even in eval mode.
  Serial,
};

/// The constructor kwargs a model factory receives. Borrowed: valid only
/// during the factory call. A kwarg that no getter reads is refused as
/// unexpected once the factory returns (PTS_ERROR_INVALID_KWARGS), unless
/// the factory took the whole object with json(). Getter errors are
/// thrown as Error with PTS_ERROR_INVALID_KWARGS and name the kwarg; let
/// them propagate out of the factory.
class Kwargs {
 public:
  explicit Kwargs(const pts_kwargs_t* raw) noexcept : raw_(raw) {}

  /// An integer kwarg that must be present (T: any integer type; a value
  /// that does not fit T is refused).
  template <class T>
  T get(const std::string& key) const {
    static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>,
                  "Kwargs::get<T> reads integers; use get_or for numbers and booleans");
    int64_t value = 0;
    detail::check(pts_kwargs_i64(raw_, key.c_str(), &value));
    return narrow<T>(key, value);
  }

  /// A kwarg, `default_value` when absent or null. T: an integer type,
  /// a floating-point type (integers in the JSON accepted, as in Python)
  /// or bool.
  template <class T>
  T get_or(const std::string& key, T default_value) const {
    if constexpr (std::is_same_v<T, bool>) {
      bool value = false;
      detail::check(pts_kwargs_bool_or(raw_, key.c_str(), default_value, &value));
      return value;
    } else if constexpr (std::is_integral_v<T>) {
      static_assert(
          sizeof(T) <= sizeof(int64_t) && (std::is_signed_v<T> || sizeof(T) < sizeof(int64_t)),
          "Kwargs::get_or<T>: T must fit in int64_t");
      int64_t value = 0;
      detail::check(
          pts_kwargs_i64_or(raw_, key.c_str(), static_cast<int64_t>(default_value), &value));
      return narrow<T>(key, value);
    } else {
      static_assert(std::is_floating_point_v<T>,
                    "Kwargs::get_or<T>: T must be an integer, floating-point or bool type");
      double value = 0;
      detail::check(
          pts_kwargs_f64_or(raw_, key.c_str(), static_cast<double>(default_value), &value));
      return static_cast<T>(value);
    }
  }

  /// The whole kwargs object as JSON text, for a factory that parses it
  /// itself (and so answers for refusing what it does not accept).
  std::string json() const {
    char* out = nullptr;
    detail::check(pts_kwargs_json(raw_, &out));
    return detail::take_string(out);
  }

  const pts_kwargs_t* capi() const noexcept { return raw_; }

 private:
  template <class T>
  static T narrow(const std::string& key, int64_t value) {
    if constexpr (std::is_same_v<T, int64_t>) {
      return value;
    } else {
      if (value < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          (value > 0 &&
           static_cast<uint64_t>(value) > static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
        throw Error(PTS_ERROR_INVALID_KWARGS, "kwarg " + key + " = " + std::to_string(value) +
                                                  " is out of range for " +
                                                  c10::demangle(typeid(T).name()));
      }
      return static_cast<T>(value);
    }
  }

  const pts_kwargs_t* raw_;
};

namespace detail {

/// The forward instance of a model built by Registry::register_module:
/// the module (the container shares its tensors) and its forward.
struct ModuleInstance {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> forward;
  /// The module's training mode as of the last switch (or its build):
  /// released after the switch, acquired by every call, so that a call
  /// that finds the mode it needs reads the module's flags after the
  /// write that set them.
  std::atomic<bool> training{true};
  /// Serializes the switches of the training mode.
  std::mutex switching;

  /// Puts the module in training mode `train` unless it is in it already.
  /// Calls that find the mode they need only read (a Model's concurrent
  /// eval-mode calls, after the first): module->train() writes the flag
  /// of every submodule, so that switching on every call would be a data
  /// race between concurrent calls. Concurrent calls must all want the
  /// same mode (a Model's are all eval; a Container's are one at a time).
  void set_training(bool train) {
    // The module's own flag is compared too, for a caller that switched
    // it outside this header (Container::module<M>()->eval()): read only
    // after the acquire load, which orders it after the last switch.
    if (training.load(std::memory_order_acquire) == train && module->is_training() == train) {
      return;
    }
    std::lock_guard<std::mutex> lock(switching);
    if (training.load(std::memory_order_relaxed) == train && module->is_training() == train) {
      return;
    }
    module->train(train);
    training.store(train, std::memory_order_release);
  }
};

inline void delete_module_instance(void* instance) noexcept {
  delete static_cast<ModuleInstance*>(instance);
}

template <class F>
void delete_factory(void* factory) noexcept {
  delete static_cast<F*>(factory);
}

inline pts_error_t* module_forward(void* instance, const pts_tensor_t* input, bool train,
                                   pts_tensor_t** output) noexcept {
  try {
    auto& self = *static_cast<ModuleInstance*>(instance);
    torch::Tensor x = tensor_from_capi(input);
    self.set_training(train);
    torch::Tensor y;
    if (train) {
      y = self.forward(x);
    } else {
      at::NoGradGuard no_grad;
      y = self.forward(x);
    }
    if (!y.defined()) {
      return pts_error_new(PTS_ERROR_CALLBACK, "the module's forward returned an undefined tensor");
    }
    *output = tensor_to_capi(y).release();
    return nullptr;
  } catch (...) {
    return current_exception_to_error(PTS_ERROR_CALLBACK);
  }
}

/// Hands the module's tensors to the builder: parameters in
/// named_parameters() order (the optimizer's), then buffers.
inline void add_module_tensors(const torch::nn::Module& module, pts_model_builder_t* builder) {
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!item.value().defined()) continue;
    TensorHandle handle = tensor_to_capi(item.value());
    check(pts_model_builder_add_parameter(builder, item.key().c_str(), handle.get()));
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    if (!item.value().defined()) continue;
    TensorHandle handle = tensor_to_capi(item.value());
    check(pts_model_builder_add_buffer(builder, item.key().c_str(), handle.get()));
  }
}

template <class M, class F, Concurrency C>
pts_error_t* module_factory(void* user_data, const pts_kwargs_t* kwargs, bool loading,
                            pts_model_builder_t* builder) noexcept {
  try {
    F& factory = *static_cast<F*>(user_data);
    const Kwargs kw(kwargs);
    std::shared_ptr<M> module = factory(kw, loading);
    if (!module) return pts_error_new(PTS_ERROR_FACTORY, "the factory returned a null module");
    auto instance = std::make_unique<ModuleInstance>();
    M* raw = module.get();
    instance->forward = [raw](const torch::Tensor& x) -> torch::Tensor { return raw->forward(x); };
    instance->training.store(module->is_training(), std::memory_order_relaxed);
    instance->module = std::move(module);
    add_module_tensors(*instance->module, builder);
    // The library owns the instance from here on, whatever the outcome.
    check(pts_model_builder_set_forward(builder, &module_forward, instance.release(),
                                        &delete_module_instance));
    if constexpr (C == Concurrency::Concurrent) check(pts_model_builder_set_thread_safe(builder));
    return nullptr;
  } catch (...) {
    return current_exception_to_error(PTS_ERROR_FACTORY);
  }
}

template <class M, class R>
struct FactoryModule {
  using type = M;
};
template <class R>
struct FactoryModule<void, R> {
  using type = typename R::element_type;
};

}  // namespace detail

/// A parameter group's hyperparameters, as an optimizer class's step and
/// group check read them. Borrowed: valid only during the call.
class OptimizerGroup {
 public:
  explicit OptimizerGroup(const pts_optim_group_t* ptr) noexcept : ptr_(ptr) {}

  /// A number (an integer is accepted); missing or not a number throws
  /// Error (PTS_ERROR_INVALID_STATE) naming the key.
  double get_double(const std::string& key) const {
    double out = 0;
    detail::check(pts_optim_group_f64(ptr_, key.c_str(), &out));
    return out;
  }
  int64_t get_int(const std::string& key) const {
    int64_t out = 0;
    detail::check(pts_optim_group_i64(ptr_, key.c_str(), &out));
    return out;
  }
  bool get_bool(const std::string& key) const {
    bool out = false;
    detail::check(pts_optim_group_bool(ptr_, key.c_str(), &out));
    return out;
  }
  /// The learning rate (what schedulers change).
  double lr() const { return get_double("lr"); }

 private:
  const pts_optim_group_t* ptr_;
};

/// One parameter's optimizer state (PyTorch's `optimizer.state[p]`), as a
/// step reads and writes it. Borrowed: valid only during the step.
class OptimizerState {
 public:
  explicit OptimizerState(pts_optim_state_t* ptr) noexcept : ptr_(ptr) {}

  /// The state tensor `key` (sharing its storage: update it in place), or
  /// an undefined tensor when the state has none (the first step).
  torch::Tensor get(const std::string& key) const {
    pts_tensor_t* out = nullptr;
    detail::check(pts_optim_state_get(ptr_, key.c_str(), &out));
    if (out == nullptr) return torch::Tensor();
    TensorHandle handle(out);
    return tensor_from_capi(handle.get());
  }
  /// Sets state `key` (one of the class's state keys) to `tensor` (shared,
  /// no copy).
  void set(const std::string& key, const torch::Tensor& tensor) {
    TensorHandle handle = tensor_to_capi(tensor);
    detail::check(pts_optim_state_set(ptr_, key.c_str(), handle.get()));
  }

 private:
  pts_optim_state_t* ptr_;
};

/// One per-parameter state key of an optimizer class.
struct OptimizerStateKey {
  std::string name;
  /// true: rank 0 (a step counter); false: the parameter's shape.
  bool rank0 = false;
  /// Whether a parameter's non-empty state must hold it.
  bool required = true;
};

/// A user optimizer class (Registry::register_optimizer).
struct OptimizerClass {
  /// The hyperparameters with their defaults, one JSON object in PyTorch's
  /// order, such as `{"lr": 0.01, "beta": 0.9}` (`lr` required).
  std::string hyperparameters_json;
  std::vector<OptimizerStateKey> state_keys;
  /// Updates `param` in place (param.sub_(...), never `param = ...`) from
  /// `grad`, creating or advancing `state`. Called under no_grad.
  std::function<void(const OptimizerGroup& group, at::Tensor& param, const at::Tensor& grad,
                     OptimizerState& state)>
      step;
  /// Optional: throws (Error, or any std::exception) to refuse a group's
  /// hyperparameters, on kwargs and on groups loaded from a file.
  std::function<void(const OptimizerGroup& group)> check_group;
};

namespace detail {

inline pts_error_t* optimizer_step(void* user_data, const pts_optim_group_t* group,
                                   pts_tensor_t* param, const pts_tensor_t* grad,
                                   pts_optim_state_t* state) noexcept {
  try {
    auto& cls = *static_cast<OptimizerClass*>(user_data);
    torch::Tensor p = tensor_from_capi(param);
    const torch::Tensor g = tensor_from_capi(grad);
    const OptimizerGroup view(group);
    OptimizerState st(state);
    at::NoGradGuard no_grad;
    cls.step(view, p, g, st);
    return nullptr;
  } catch (...) {
    return current_exception_to_error(PTS_ERROR_CALLBACK);
  }
}

inline pts_error_t* optimizer_check_group(void* user_data,
                                          const pts_optim_group_t* group) noexcept {
  try {
    auto& cls = *static_cast<OptimizerClass*>(user_data);
    cls.check_group(OptimizerGroup(group));
    return nullptr;
  } catch (...) {
    return current_exception_to_error(PTS_ERROR_INVALID_KWARGS);
  }
}

}  // namespace detail

/// A registry: class name -> model factory, holding the built-in classes
/// (`torch.nn.Linear`, `pytorch_saver.models.MLP`) from construction.
/// Containers take a snapshot when they are created, so registering later
/// does not change them; factories live on while a container built from
/// the registry does. Move-only. A const Registry may be shared between
/// threads; register_module needs exclusive use.
class Registry {
 public:
  /// A new registry holding the built-in classes.
  Registry() {
    pts_registry_t* out = nullptr;
    detail::check(pts_registry_new(&out));
    ptr_.reset(out);
  }

  /// Whether `name` is registered.
  bool contains(const std::string& name) const {
    bool out = false;
    detail::check(pts_registry_contains(ptr_.get(), name.c_str(), &out));
    return out;
  }

  /// Registers a factory for a torch::nn::Module subclass M under `name`
  /// (use the Python class's `module.QualName` so that files written by
  /// Python resolve to it). `factory` is any callable
  /// `(const Kwargs&, bool loading) -> std::shared_ptr<M>` (M may be left
  /// to deduction from its result); M needs `forward(torch::Tensor)`.
  /// `loading` is true when the values are about to be overwritten from a
  /// file: the library checks every tensor's dtype and shape against the
  /// file before it writes any value, then overwrites them all, so such a
  /// factory may skip the random initialization (build the parameters
  /// with torch::empty, which leaves the memory untouched, and costs no
  /// resident memory until it is written: a file whose kwargs describe a
  /// huge model is refused without touching that memory). The container
  /// shares the module's named_parameters() (in that order, the
  /// optimizer's) and named_buffers(): optimizer steps and loads change
  /// them in place. Forward switches the module to the wanted training
  /// mode (`module->train(train)`) when it is not in it already, then
  /// runs `module->forward(x)` (under no_grad when not training).
  ///
  /// `concurrency`: with Concurrency::Concurrent (the default), a Model
  /// serving the module (Model::load) runs forward calls from several
  /// threads at once, so the module's eval-mode forward must be safe to
  /// run concurrently: it only reads the module, as torch::nn's modules
  /// do (Linear, Conv2d, BatchNorm2d in eval mode, ...). Register a
  /// module that writes to itself in forward (a cache, a counter) with
  /// Concurrency::Serial: a Model then runs its forward one call at a
  /// time. Containers are not affected (one thread at a time anyway).
  ///
  /// The library owns a copy of `factory` and destroys it once, when the
  /// last registry or container using it is freed (or at once if this
  /// throws). It may be called from any thread that uses a container
  /// built on this registry, concurrently if several do. An exception it
  /// throws becomes the error of the call that ran it: Error keeps its
  /// code, anything else is PTS_ERROR_FACTORY with its message.
  template <class M = void, class F>
  void register_module(const std::string& name, F&& factory,
                       Concurrency concurrency = Concurrency::Concurrent) {
    using Fn = std::decay_t<F>;
    using Result = std::invoke_result_t<Fn&, const Kwargs&, bool>;
    using Module = typename detail::FactoryModule<M, Result>::type;
    static_assert(std::is_base_of_v<torch::nn::Module, Module>,
                  "register_module: M must be a torch::nn::Module subclass");
    static_assert(std::is_convertible_v<Result, std::shared_ptr<Module>>,
                  "register_module: the factory must return std::shared_ptr<M>");
    pts_model_factory_t c_factory =
        concurrency == Concurrency::Concurrent
            ? &detail::module_factory<Module, Fn, Concurrency::Concurrent>
            : &detail::module_factory<Module, Fn, Concurrency::Serial>;
    auto data = std::make_unique<Fn>(std::forward<F>(factory));
    // The library owns `data` from the call on, whatever the outcome.
    detail::check(pts_registry_register_model(ptr_.get(), name.c_str(), c_factory, data.release(),
                                              &detail::delete_factory<Fn>));
  }

  /// Registers an optimizer class under `name` (use the Python class's
  /// `module.QualName`): containers built on this registry initialize,
  /// step, save and load it as a built-in one (kwargs checked against
  /// its hyperparameters, `param_groups`, schedulers changing `lr`, state
  /// checked against its keys on load). A `torch.optim.*` name or a name
  /// taken is PTS_ERROR_DUPLICATE_NAME. The library owns a copy of `cls`
  /// and destroys it once, when the last registry or container using it is
  /// freed (or at once if this throws). An exception the step throws
  /// fails the step call with PTS_ERROR_CALLBACK and the exception's
  /// message; one from check_group fails initialize (or a load) with
  /// PTS_ERROR_INVALID_KWARGS (PTS_ERROR_INVALID_STATE) and its message.
  void register_optimizer(const std::string& name, OptimizerClass cls) {
    if (!cls.step)
      throw Error(PTS_ERROR_NULL_ARGUMENT, "register_optimizer: the class has no step");
    std::vector<std::string> names;
    for (const auto& key : cls.state_keys) names.push_back(key.name);
    std::vector<pts_optim_state_key_t> keys;
    for (size_t i = 0; i < names.size(); i++) {
      keys.push_back({names[i].c_str(), cls.state_keys[i].rank0, cls.state_keys[i].required});
    }
    const std::string json = cls.hyperparameters_json;
    const bool has_check = static_cast<bool>(cls.check_group);
    auto data = std::make_unique<OptimizerClass>(std::move(cls));
    const pts_optimizer_class_t c_cls{json.c_str(), keys.empty() ? nullptr : keys.data(),
                                      keys.size(), &detail::optimizer_step,
                                      has_check ? &detail::optimizer_check_group : nullptr};
    // The library owns `data` from the call on, whatever the outcome.
    detail::check(pts_registry_register_optimizer(ptr_.get(), name.c_str(), &c_cls, data.release(),
                                                  &detail::delete_factory<OptimizerClass>));
  }

  /// Whether `name` is a registered optimizer class.
  bool contains_optimizer(const std::string& name) const {
    bool out = false;
    detail::check(pts_registry_contains_optimizer(ptr_.get(), name.c_str(), &out));
    return out;
  }

  pts_registry_t* capi() noexcept { return ptr_.get(); }
  const pts_registry_t* capi() const noexcept { return ptr_.get(); }

 private:
  std::unique_ptr<pts_registry_t, detail::RegistryDeleter> ptr_;
};

/// A tensor's dtype (a PTS_DTYPE_* value), shape and byte size.
struct TensorInfo {
  pts_dtype_t dtype;
  std::vector<int64_t> shape;
  size_t nbytes;
};

/// An open, fully validated checkpoint file (every CRC and header checked
/// at open), read-only. Move-only; const methods may be called from
/// several threads at once.
class Checkpoint {
 public:
  /// Opens and validates the file at `path`. A malformed file is
  /// PTS_ERROR_FORMAT (or _IO, _UNSUPPORTED_VERSION).
  static Checkpoint open(const std::string& path) {
    pts_checkpoint_t* out = nullptr;
    detail::check(pts_checkpoint_open(path.c_str(), &out));
    return Checkpoint(out);
  }

  /// As open(path), with `options`: with verify false the CRC-32 of the
  /// tensor data is not computed (the structure is still validated);
  /// copy does not apply (tensor() always copies).
  static Checkpoint open(const std::string& path, const LoadOptions& options) {
    CapiLoadOptions c_options = load_options_to_capi(options);
    pts_checkpoint_t* out = nullptr;
    detail::check(pts_checkpoint_open_ex(path.c_str(), c_options.get(), &out));
    Checkpoint opened(out);
    c_options.rethrow_progress_error();
    return opened;
  }

  /// The whole metadata.json object (the flat user keys and the reserved
  /// `__pytorch_saver__` internals) as JSON text.
  std::string metadata_json() const {
    const char* out = nullptr;
    detail::check(pts_checkpoint_metadata(ptr_.get(), &out));
    return out;
  }

  /// The member's tensor names in file order (empty for an absent
  /// optimizer member).
  std::vector<std::string> tensor_names(Member member) const {
    size_t count = 0;
    detail::check(pts_checkpoint_tensor_count(ptr_.get(), to_c(member), &count));
    std::vector<std::string> names;
    names.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      const char* name = nullptr;
      detail::check(pts_checkpoint_tensor_name(ptr_.get(), to_c(member), i, &name));
      names.emplace_back(name);
    }
    return names;
  }

  /// A tensor's dtype, shape and byte size, without reading it.
  TensorInfo info(Member member, const std::string& name) const {
    pts_dtype_t dtype = 0;
    const int64_t* shape = nullptr;
    size_t ndim = 0;
    size_t nbytes = 0;
    detail::check(pts_checkpoint_tensor_info(ptr_.get(), to_c(member), name.c_str(), &dtype, &shape,
                                             &ndim, &nbytes));
    TensorInfo info{dtype, {}, nbytes};
    if (ndim > 0) info.shape.assign(shape, shape + ndim);
    return info;
  }

  /// A tensor as a new CPU torch::Tensor (a copy of the file's bytes, so
  /// it outlives the checkpoint). PTS_ERROR_NOT_FOUND for an unknown name.
  torch::Tensor tensor(Member member, const std::string& name) const {
    pts_tensor_t* out = nullptr;
    detail::check(pts_checkpoint_tensor(ptr_.get(), to_c(member), name.c_str(), &out));
    TensorHandle handle(out);
    return tensor_from_capi(handle.get());
  }

  pts_checkpoint_t* capi() noexcept { return ptr_.get(); }
  const pts_checkpoint_t* capi() const noexcept { return ptr_.get(); }

 private:
  explicit Checkpoint(pts_checkpoint_t* raw) noexcept : ptr_(raw) {}
  static pts_member_t to_c(Member member) noexcept { return static_cast<pts_member_t>(member); }

  std::unique_ptr<pts_checkpoint_t, detail::CheckpointDeleter> ptr_;
};

/// One object's state for a checkpoint (docs/FORMAT.md 11.3), as
/// Stateful::state() returns it: a typed value as JSON text, in which each
/// tensor is a tag {"__type__": "tensor", "name": NAME}, and the tensors
/// those tags name. add_tensor() adds a tensor and returns its tag:
///
///   pytorch_saver::State s;
///   s.value_json = R"({"count": 3, "weight": )" + s.add_tensor("weight", weight) + "}";
struct State {
  /// The typed value, JSON text ("null" until set).
  std::string value_json = "null";
  /// The tensors the value's tags name, by name (shared, not copied).
  std::map<std::string, torch::Tensor> tensors;

  /// Adds `tensor` under `name` and returns the JSON text of the tag that
  /// stands for it in value_json.
  std::string add_tensor(const std::string& name, const torch::Tensor& tensor) {
    tensors[name] = tensor;
    return tensor_tag(name);
  }

  /// The JSON text of the tag naming tensor `name`.
  static std::string tensor_tag(const std::string& name) {
    return R"({"__type__": "tensor", "name": )" + json_string(name) + "}";
  }

  /// `s` as a JSON string literal, quoted and escaped.
  static std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += static_cast<char>(c);
      } else if (c < 0x20) {
        static const char* hex = "0123456789abcdef";
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 15];
      } else {
        out += static_cast<char>(c);
      }
    }
    return out + "\"";
  }
};

/// A state the library read from a file, handed to Stateful::check_state
/// and load_state: borrowed, valid only during that call. Its tensors keep
/// the file's names (`ema.weight` for the tensor an object added as
/// `weight` under the entry `ema`), so find them through their tags with
/// tensor_at(path). Paths are object keys and list indices separated by
/// dots ("weight", "torch.cpu", "history.2"). A missing or mistyped value
/// throws Error with PTS_ERROR_INVALID_STATE naming the entry and path.
class StateView {
 public:
  explicit StateView(const pts_state_t* raw) noexcept : raw_(raw) {}

  /// The typed value as JSON text.
  std::string value_json() const {
    char* out = nullptr;
    detail::check(pts_state_value_json(raw_, &out));
    return detail::take_string(out);
  }

  /// The 64-bit signed integer at `path`.
  int64_t i64_at(const std::string& path) const {
    int64_t out = 0;
    detail::check(pts_state_i64_at(raw_, path.c_str(), &out));
    return out;
  }

  /// The tensor whose tag is at `path` (sharing its storage).
  torch::Tensor tensor_at(const std::string& path) const {
    pts_tensor_t* out = nullptr;
    detail::check(pts_state_tensor_at(raw_, path.c_str(), &out));
    TensorHandle handle(out);
    return tensor_from_capi(handle.get());
  }

  /// The tensor named `name` (PTS_ERROR_NOT_FOUND when there is none).
  torch::Tensor tensor(const std::string& name) const {
    pts_tensor_t* out = nullptr;
    detail::check(pts_state_tensor(raw_, name.c_str(), &out));
    TensorHandle handle(out);
    return tensor_from_capi(handle.get());
  }

  /// Every tensor by name.
  std::map<std::string, torch::Tensor> tensors() const {
    size_t count = 0;
    detail::check(pts_state_tensor_count(raw_, &count));
    std::map<std::string, torch::Tensor> out;
    for (size_t i = 0; i < count; ++i) {
      char* name = nullptr;
      detail::check(pts_state_tensor_name(raw_, i, &name));
      std::string owned = detail::take_string(name);
      out.emplace(owned, tensor(owned));
    }
    return out;
  }

  const pts_state_t* capi() const noexcept { return raw_; }

 private:
  const pts_state_t* raw_;
};

/// An object whose state a Container saves with every checkpoint and
/// restores on load (Container::track): an EMA of the weights, a data
/// loader's position, anything with state_dict() in PyTorch.
///
/// Loading is all or nothing: a container calls check_state on every
/// tracked object before it calls load_state on any, so check_state must
/// throw for whatever load_state could not take. Throw Error with
/// PTS_ERROR_INVALID_STATE (or PTS_ERROR_STATE_MISMATCH) for a state that
/// does not fit: the caller gets that code with the entry's name; any
/// other exception reaches the caller as PTS_ERROR_CALLBACK naming the
/// entry and the method. The methods run on the thread that calls save,
/// load or restore.
class Stateful {
 public:
  virtual ~Stateful() = default;
  /// The class name written with the state ("my_project.EMA"): a file's
  /// entry is restored only into an object of the same class name.
  virtual std::string class_name() const = 0;
  /// The object's current state.
  virtual State state() const = 0;
  /// Throws unless `state` can be loaded; changes nothing.
  virtual void check_state(const StateView& state) const = 0;
  /// Loads `state`, which check_state accepted.
  virtual void load_state(const StateView& state) = 0;
};

namespace detail {

/// A tracked object's user data: the object, shared with the caller.
using StatefulHolder = std::shared_ptr<Stateful>;

inline pts_error_t* stateful_get_state(void* user_data, pts_state_t* out) noexcept {
  try {
    State state = (*static_cast<StatefulHolder*>(user_data))->state();
    check(pts_state_set_value_json(out, state.value_json.c_str()));
    for (const auto& [name, tensor] : state.tensors) {
      check(pts_state_add_tensor(out, name.c_str(), tensor_to_capi(tensor).get()));
    }
    return nullptr;
  } catch (...) {
    return current_exception_to_error(PTS_ERROR_CALLBACK);
  }
}

inline pts_error_t* stateful_check_state(void* user_data, const pts_state_t* state) noexcept {
  try {
    (*static_cast<StatefulHolder*>(user_data))->check_state(StateView(state));
    return nullptr;
  } catch (...) {
    return current_exception_to_error(PTS_ERROR_CALLBACK);
  }
}

inline pts_error_t* stateful_load_state(void* user_data, const pts_state_t* state) noexcept {
  try {
    (*static_cast<StatefulHolder*>(user_data))->load_state(StateView(state));
    return nullptr;
  } catch (...) {
    return current_exception_to_error(PTS_ERROR_CALLBACK);
  }
}

inline void delete_stateful(void* user_data) noexcept {
  delete static_cast<StatefulHolder*>(user_data);
}

}  // namespace detail

/// A container: a model built by class name through a registry, with an
/// optional optimizer over its parameters and scheduler over that
/// optimizer; it saves and loads them together. Move-only. Exclusive: one
/// thread at a time, const methods included (forward switches the
/// module's training mode); it may move between threads.
class Container {
 public:
  struct Loaded;

  /// An empty container over the built-in classes.
  Container() : ptr_(create(nullptr)) {}

  /// An empty container over `registry`'s classes (a snapshot taken now).
  explicit Container(const Registry& registry) : ptr_(create(checked(registry))) {}

  /// Builds the model `model_class` from `model_kwargs_json` (a JSON
  /// object), an optimizer (`optim_class` such as "torch.optim.Adam"; ""
  /// for none) and a scheduler (`sched_class` such as
  /// "torch.optim.lr_scheduler.StepLR"; "" for none; it needs an
  /// optimizer). On error the container is unchanged.
  void initialize(const std::string& model_class, const std::string& model_kwargs_json = "{}",
                  const std::string& optim_class = "", const std::string& optim_kwargs_json = "{}",
                  const std::string& sched_class = "",
                  const std::string& sched_kwargs_json = "{}") {
    const bool optim = !optim_class.empty();
    const bool sched = !sched_class.empty();
    detail::check(pts_container_initialize(
        ptr_.get(), model_class.c_str(), model_kwargs_json.c_str(), detail::or_null(optim_class),
        optim ? optim_kwargs_json.c_str() : nullptr, detail::or_null(sched_class),
        sched ? sched_kwargs_json.c_str() : nullptr));
  }

  /// Loads the file at `path` into a new container over `registry`:
  /// rebuilds the model, optimizer and scheduler it names and loads their
  /// state. Returns the container and the flat metadata (`model_kwargs`,
  /// `optim_kwargs`, `scheduler_kwargs`, `timestamp`, the user's keys) as
  /// JSON text.
  static Loaded load(const std::string& path, const Registry& registry);

  /// As load(path, registry), over the built-in classes.
  static Loaded load(const std::string& path);

  /// As load(path, registry), reading the file as `options` says (copy
  /// instead of zero-copy, skip the CRC check: see LoadOptions).
  static Loaded load(const std::string& path, const Registry& registry, const LoadOptions& options);

  /// As load(path, options), over the built-in classes.
  static Loaded load(const std::string& path, const LoadOptions& options);

  /// Loads the file's state into the objects the container holds, in
  /// place (a module from module() sees the values). The file must name
  /// the same classes. All or nothing. Returns the flat metadata JSON.
  std::string restore(const std::string& path) {
    char* meta = nullptr;
    detail::check(pts_container_restore(ptr_.get(), path.c_str(), &meta));
    return detail::take_string(meta);
  }

  /// As restore(path), with `options` (verify; copy does not apply: a
  /// restore always copies into the existing tensors).
  std::string restore(const std::string& path, const LoadOptions& options) {
    CapiLoadOptions c_options = load_options_to_capi(options);
    char* meta = nullptr;
    detail::check(pts_container_restore_ex(ptr_.get(), path.c_str(), c_options.get(), &meta));
    std::string metadata = detail::take_string(meta);
    c_options.rethrow_progress_error();
    return metadata;
  }

  /// Saves a training checkpoint (model, optimizer, scheduler) atomically
  /// into directory `dir` as `{prefix}_checkpoint_{unix seconds}.zip`
  /// (never overwriting a file) and returns its path. `metadata_json`
  /// ("" for none) is a JSON object of extra keys such as
  /// `{"loss": 0.55, "epoch": 5}`.
  std::string save(const std::string& dir, const std::string& prefix = "",
                   const std::string& metadata_json = "") const {
    if (save_progress_) save_progress_->reset();
    char* path = nullptr;
    detail::check(pts_container_save(ptr_.get(), dir.c_str(), detail::or_null(prefix),
                                     detail::or_null(metadata_json), &path));
    std::string saved = detail::take_string(path);
    if (save_progress_) save_progress_->rethrow();
    return saved;
  }

  /// Saves the model alone, as `{prefix}_inference_{unix seconds}.zip`;
  /// otherwise as save().
  std::string save_inference(const std::string& dir, const std::string& prefix = "",
                             const std::string& metadata_json = "") const {
    if (save_progress_) save_progress_->reset();
    char* path = nullptr;
    detail::check(pts_container_save_inference(ptr_.get(), dir.c_str(), detail::or_null(prefix),
                                               detail::or_null(metadata_json), &path));
    std::string saved = detail::take_string(path);
    if (save_progress_) save_progress_->rethrow();
    return saved;
  }

  /// Reports the progress of every later save of this container (save,
  /// save_inference, CheckpointManager::save and save_async) to
  /// `progress` (empty: to nobody): the total is the file's size, the
  /// count the bytes written. See ProgressFn; what it throws during a save
  /// is rethrown by that save once the file is written (a background
  /// save's is dropped). A background save calls it from the manager's
  /// writing thread until wait() returns.
  void set_save_progress(ProgressFn progress) {
    if (!progress) {
      detail::check(pts_container_set_save_progress(ptr_.get(), nullptr, nullptr, nullptr));
      save_progress_.reset();
      return;
    }
    auto relay = std::make_shared<detail::ProgressRelay>(std::move(progress));
    detail::check(pts_container_set_save_progress(ptr_.get(), &detail::ProgressRelay::call,
                                                  detail::ProgressRelay::user_data(relay),
                                                  &detail::ProgressRelay::release));
    save_progress_ = std::move(relay);
  }

  /// optimizer.zero_grad(): every parameter's gradient becomes undefined.
  void zero_grad() { detail::check(pts_container_zero_grad(ptr_.get())); }

  /// optimizer.step(), with torch.optim's math bit for bit.
  void step() { detail::check(pts_container_step(ptr_.get())); }

  /// optimizer.step(closure), for LBFGS (which calls `closure` as often as
  /// its iterations and line search need; any other optimizer calls it
  /// once, then steps). `closure()` zeroes the gradients (reset() each
  /// named_parameters() tensor's mutable_grad(): the container's own
  /// zero_grad() fails while the step runs, its optimizer being lent to
  /// the step), computes the loss, runs backward and returns the loss as
  /// a double or a one-element tensor. Returns the first call's loss. An
  /// exception the closure throws ends the step and propagates as itself.
  template <class F, class = std::enable_if_t<std::is_invocable_v<F&>>>
  double step(F&& closure) {
    struct Relay {
      F& fn;
      std::exception_ptr error;
      static pts_error_t* call(void* user_data, double* loss) noexcept {
        Relay& self = *static_cast<Relay*>(user_data);
        try {
          *loss = detail::loss_value(self.fn());
          return nullptr;
        } catch (...) {
          self.error = std::current_exception();
          return detail::current_exception_to_error(PTS_ERROR_CALLBACK);
        }
      }
    };
    Relay relay{closure, nullptr};
    double loss = 0;
    pts_error_t* raw = pts_container_step_closure(ptr_.get(), &Relay::call, &relay, &loss);
    if (relay.error) {
      pts_error_free(raw);
      std::rethrow_exception(relay.error);
    }
    detail::check(raw);
    return loss;
  }

  /// scheduler.step() (PTS_ERROR_USAGE without a scheduler).
  void scheduler_step() { detail::check(pts_container_scheduler_step(ptr_.get())); }

  /// scheduler.step(metric), for ReduceLROnPlateau.
  void scheduler_step(double metric) {
    detail::check(pts_container_scheduler_step_metric(ptr_.get(), metric));
  }

  /// The current learning rate of parameter group `group`.
  double lr(size_t group = 0) const {
    double out = 0;
    detail::check(pts_container_lr(ptr_.get(), group, &out));
    return out;
  }

  /// The current learning rate of every parameter group.
  std::vector<double> lrs() const {
    size_t count = 0;
    detail::check(pts_container_param_group_count(ptr_.get(), &count));
    std::vector<double> out;
    out.reserve(count);
    for (size_t i = 0; i < count; ++i) out.push_back(lr(i));
    return out;
  }

  /// Runs the model on `input`. `train` false: eval mode, no gradient
  /// tracking; true: training mode with autograd (call backward() on a
  /// loss built from the result).
  torch::Tensor forward(const torch::Tensor& input, bool train = false) const {
    TensorHandle in = tensor_to_capi(input);
    pts_tensor_t* out = nullptr;
    detail::check(pts_container_forward(ptr_.get(), in.get(), train, &out));
    TensorHandle result(out);
    return tensor_from_capi(result.get());
  }

  /// The trainable parameters in optimizer order with their state-dict
  /// names; the tensors share the container's storage.
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const {
    size_t count = 0;
    detail::check(pts_container_parameter_count(ptr_.get(), &count));
    std::vector<std::pair<std::string, torch::Tensor>> out;
    out.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      const char* name = nullptr;
      pts_tensor_t* tensor = nullptr;
      detail::check(pts_container_parameter(ptr_.get(), i, &name, &tensor));
      TensorHandle handle(tensor);
      out.emplace_back(name, tensor_from_capi(handle.get()));
    }
    return out;
  }

  /// A tensor of the model's state dict (parameter or buffer) by name,
  /// sharing its storage. PTS_ERROR_NOT_FOUND for an unknown name.
  torch::Tensor state_tensor(const std::string& name) const {
    pts_tensor_t* out = nullptr;
    detail::check(pts_container_state_tensor(ptr_.get(), name.c_str(), &out));
    TensorHandle handle(out);
    return tensor_from_capi(handle.get());
  }

  /// The module that Registry::register_module's factory built for this
  /// container (shared: the container trains it in place). Throws Error
  /// with PTS_ERROR_USAGE when the model was not built by a factory
  /// registered through this header, or is not an M.
  template <class M>
  std::shared_ptr<M> module() const {
    // The library hands out the instance only if the model's forward is
    // this header's module_forward, so the cast below is to our own type.
    void* raw = nullptr;
    detail::check(pts_container_model_instance(ptr_.get(), &detail::module_forward, &raw));
    auto* instance = static_cast<detail::ModuleInstance*>(raw);
    std::shared_ptr<M> module = std::dynamic_pointer_cast<M>(instance->module);
    if (!module) {
      const torch::nn::Module& actual = *instance->module;
      throw Error(PTS_ERROR_USAGE, "the model's module is a " +
                                       c10::demangle(typeid(actual).name()) + ", not a " +
                                       c10::demangle(typeid(M).name()));
    }
    return module;
  }

  /// Tracks `object` under `name` (docs/FORMAT.md 11.3): every checkpoint
  /// save() writes carries its state as the extra-state entry `name`, and
  /// every file load_into() or restore() reads must have that entry, of
  /// the object's class, which is checked and loaded into it. The
  /// container shares the object until untrack() or its destruction. A
  /// name already tracked throws PTS_ERROR_DUPLICATE_NAME.
  void track(const std::string& name, std::shared_ptr<Stateful> object) {
    if (!object) throw Error(PTS_ERROR_NULL_ARGUMENT, "the tracked object is null");
    std::string class_name = object->class_name();
    auto* holder = new detail::StatefulHolder(std::move(object));
    pts_stateful_t table{class_name.c_str(),           holder,
                         &detail::stateful_get_state,  &detail::stateful_check_state,
                         &detail::stateful_load_state, &detail::delete_stateful};
    // The library owns `holder` from here on, whatever the outcome.
    detail::check(pts_container_track(ptr_.get(), name.c_str(), &table));
  }

  /// As track(name, shared_ptr), for an object the caller keeps alive
  /// (not owned: it must outlive the container or be untracked first).
  void track(const std::string& name, Stateful& object) {
    track(name, std::shared_ptr<Stateful>(std::shared_ptr<Stateful>(), &object));
  }

  /// Tracks libtorch's default random number generators under `name`
  /// (class pytorch_saver.RNG): the CPU generator (torch::randn, dropout,
  /// weight init) and each CUDA device's are saved and restored, so that
  /// a resumed run draws the numbers an uninterrupted one would have.
  void track_rng(const std::string& name) {
    detail::check(pts_container_track_rng(ptr_.get(), name.c_str()));
  }

  /// Tracks named integers (class pytorch_saver.Counters: step, epoch)
  /// under `name`, starting from `counters` in this order.
  void track_counters(const std::string& name,
                      const std::vector<std::pair<std::string, int64_t>>& counters = {}) {
    std::string json = "{";
    for (const auto& [key, value] : counters) {
      if (json.size() > 1) json += ", ";
      json += State::json_string(key) + ": " + std::to_string(value);
    }
    json += "}";
    detail::check(pts_container_track_counters(ptr_.get(), name.c_str(), json.c_str()));
  }

  /// Counter `key` of the counters tracked as `name` (PTS_ERROR_NOT_FOUND
  /// when unset).
  int64_t counter(const std::string& name, const std::string& key) {
    int64_t out = 0;
    detail::check(pts_container_counter_get(ptr_.get(), name.c_str(), key.c_str(), &out));
    return out;
  }

  /// Sets counter `key` of the counters tracked as `name`.
  void set_counter(const std::string& name, const std::string& key, int64_t value) {
    detail::check(pts_container_counter_set(ptr_.get(), name.c_str(), key.c_str(), value));
  }

  /// Adds 1 to counter `key` (from 0 when unset); returns the new value.
  int64_t increment_counter(const std::string& name, const std::string& key) {
    int64_t out = 0;
    detail::check(pts_container_counter_increment(ptr_.get(), name.c_str(), key.c_str(), &out));
    return out;
  }

  /// Stops tracking `name` (PTS_ERROR_USAGE when nothing is tracked under
  /// it), releasing the container's share of the object.
  void untrack(const std::string& name) {
    detail::check(pts_container_untrack(ptr_.get(), name.c_str()));
  }

  /// Loads the file at `path` into this container (rebuilding the model,
  /// optimizer and scheduler it names, as load() does into a new one) and
  /// restores every tracked object from its extra state. All or nothing.
  /// Returns the flat metadata JSON.
  std::string load_into(const std::string& path, const LoadOptions& options = {}) {
    CapiLoadOptions c_options = load_options_to_capi(options);
    char* meta = nullptr;
    detail::check(pts_container_load_into(ptr_.get(), path.c_str(), c_options.get(), &meta));
    std::string metadata = detail::take_string(meta);
    c_options.rethrow_progress_error();
    return metadata;
  }

  pts_container_t* capi() noexcept { return ptr_.get(); }
  const pts_container_t* capi() const noexcept { return ptr_.get(); }

 private:
  friend class CheckpointManager;
  explicit Container(pts_container_t* raw) noexcept : ptr_(raw) {}

  static pts_container_t* create(const pts_registry_t* registry) {
    pts_container_t* out = nullptr;
    detail::check(pts_container_new(registry, &out));
    std::unique_ptr<pts_container_t, detail::ContainerDeleter> owned(out);
    detail::check(pts_container_set_producer_language(out, kProducerLanguage));
    return owned.release();
  }

  // What the files a C++ program saves record as their producer's language.
  static constexpr const char* kProducerLanguage = "c++";

  // A moved-from Registry must not silently mean "the built-in classes".
  static const pts_registry_t* checked(const Registry& registry) {
    if (registry.capi() == nullptr) {
      throw Error(PTS_ERROR_NULL_ARGUMENT, "the registry is empty (moved from)");
    }
    return registry.capi();
  }

  static Loaded load_from(const pts_registry_t* registry, const std::string& path,
                          const pts_load_options_t* options);

  std::unique_ptr<pts_container_t, detail::ContainerDeleter> ptr_;
  // The relay of set_save_progress, to rethrow what its function threw.
  std::shared_ptr<detail::ProgressRelay> save_progress_;
};

/// What Container::load returns.
struct Container::Loaded {
  Container container;
  /// The flat metadata as JSON text.
  std::string metadata_json;
};

inline Container::Loaded Container::load_from(const pts_registry_t* registry,
                                              const std::string& path,
                                              const pts_load_options_t* options) {
  pts_container_t* out = nullptr;
  char* meta = nullptr;
  detail::check(pts_container_load_ex(registry, path.c_str(), options, &out, &meta));
  Container container(out);
  std::string metadata = detail::take_string(meta);
  detail::check(pts_container_set_producer_language(out, kProducerLanguage));
  return Loaded{std::move(container), std::move(metadata)};
}

inline Container::Loaded Container::load(const std::string& path, const Registry& registry) {
  return load_from(checked(registry), path, nullptr);
}

inline Container::Loaded Container::load(const std::string& path) {
  return load_from(nullptr, path, nullptr);
}

inline Container::Loaded Container::load(const std::string& path, const Registry& registry,
                                         const LoadOptions& options) {
  const pts_registry_t* c_registry = checked(registry);
  CapiLoadOptions c_options = load_options_to_capi(options);
  Loaded loaded = load_from(c_registry, path, c_options.get());
  c_options.rethrow_progress_error();
  return loaded;
}

inline Container::Loaded Container::load(const std::string& path, const LoadOptions& options) {
  CapiLoadOptions c_options = load_options_to_capi(options);
  Loaded loaded = load_from(nullptr, path, c_options.get());
  c_options.rethrow_progress_error();
  return loaded;
}

/// A model loaded for inference, read-only: eval mode, no gradients, no
/// optimizer (one in the file is ignored). Move-only. Unlike a Container,
/// a Model may be used by many threads at once (an inference server's
/// request handlers): forward calls run in parallel for the built-in
/// models and for modules registered with Concurrency::Concurrent (the
/// default), one at a time for the others (concurrent() says which).
/// Destroy it only once no forward call is running.
class Model {
 public:
  struct Loaded;

  /// Loads the model of the file at `path` over `registry`'s classes,
  /// with every check of Container::load, reading the file as `options`
  /// says. Returns the model and the flat metadata as JSON text.
  static Loaded load(const std::string& path, const Registry& registry,
                     const LoadOptions& options = {});

  /// As load(path, registry, options), over the built-in classes.
  static Loaded load(const std::string& path, const LoadOptions& options = {});

  /// Runs the model on `input` in eval mode with no gradient tracking.
  /// Thread-safe: may be called from many threads at once.
  torch::Tensor forward(const torch::Tensor& input) const {
    TensorHandle in = tensor_to_capi(input);
    pts_tensor_t* out = nullptr;
    detail::check(pts_model_forward(ptr_.get(), in.get(), &out));
    TensorHandle result(out);
    return tensor_from_capi(result.get());
  }

  /// The model's registry class name (`pytorch_saver.models.Sequential`,
  /// ...).
  std::string class_name() const {
    const char* out = nullptr;
    detail::check(pts_model_class(ptr_.get(), &out));
    return out;
  }

  /// Whether forward calls run concurrently (true) or one at a time.
  bool concurrent() const {
    bool out = false;
    detail::check(pts_model_is_concurrent(ptr_.get(), &out));
    return out;
  }

  /// A tensor of the model's state dict (parameter or buffer) by name,
  /// sharing its storage: read it, never write to it (a data race with
  /// forward calls; with zero-copy loads the pages are the file's until
  /// written). PTS_ERROR_NOT_FOUND for an unknown name.
  torch::Tensor state_tensor(const std::string& name) const {
    pts_tensor_t* out = nullptr;
    detail::check(pts_model_state_tensor(ptr_.get(), name.c_str(), &out));
    TensorHandle handle(out);
    return tensor_from_capi(handle.get());
  }

  pts_model_t* capi() noexcept { return ptr_.get(); }
  const pts_model_t* capi() const noexcept { return ptr_.get(); }

 private:
  explicit Model(pts_model_t* raw) noexcept : ptr_(raw) {}

  static Loaded load_from(const pts_registry_t* registry, const std::string& path,
                          const LoadOptions& options);

  std::unique_ptr<pts_model_t, detail::ModelDeleter> ptr_;
};

/// What Model::load returns.
struct Model::Loaded {
  Model model;
  /// The flat metadata as JSON text.
  std::string metadata_json;
};

inline Model::Loaded Model::load_from(const pts_registry_t* registry, const std::string& path,
                                      const LoadOptions& options) {
  CapiLoadOptions c_options = load_options_to_capi(options);
  pts_model_t* out = nullptr;
  char* meta = nullptr;
  detail::check(pts_model_load(registry, path.c_str(), c_options.get(), &out, &meta));
  Model model(out);
  Loaded loaded{std::move(model), detail::take_string(meta)};
  c_options.rethrow_progress_error();
  return loaded;
}

inline Model::Loaded Model::load(const std::string& path, const Registry& registry,
                                 const LoadOptions& options) {
  if (registry.capi() == nullptr) {
    throw Error(PTS_ERROR_NULL_ARGUMENT, "the registry is empty (moved from)");
  }
  return load_from(registry.capi(), path, options);
}

inline Model::Loaded Model::load(const std::string& path, const LoadOptions& options) {
  return load_from(nullptr, path, options);
}

/// A checkpoint manager's prefix and retention policy (docs/FORMAT.md
/// section 12.4). Zero counts and empty strings are unset; setting none of
/// keep_last, keep_best, keep_every_steps keeps every checkpoint. The
/// newest checkpoint and pinned ones are always kept.
struct Policy {
  /// The series' file name stem (`{prefix}_checkpoint_{ts}.zip`).
  std::string prefix = "checkpoint";
  /// Keep the N newest (0: unset).
  uint64_t keep_last = 0;
  /// Keep the K best by `metric` (0: unset); needs `metric`.
  uint64_t keep_best = 0;
  /// The user-metadata key every save must then carry as a finite number.
  std::string metric;
  /// Which way `metric` improves: "min" (a loss) or "max".
  std::string mode = "min";
  /// Keep every checkpoint whose step is a multiple of it (0: unset).
  uint64_t keep_every_steps = 0;
};

namespace detail {

/// `s` as a JSON string literal.
inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      static const char* hex = "0123456789abcdef";
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 0xF];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

/// The policy as pts_manager_open takes it: the set fields only.
inline std::string policy_json(const Policy& p) {
  std::string out = "{\"prefix\": " + json_string(p.prefix) + ", \"mode\": " + json_string(p.mode);
  if (p.keep_last != 0) out += ", \"keep_last\": " + std::to_string(p.keep_last);
  if (p.keep_best != 0) out += ", \"keep_best\": " + std::to_string(p.keep_best);
  if (!p.metric.empty()) out += ", \"metric\": " + json_string(p.metric);
  if (p.keep_every_steps != 0)
    out += ", \"keep_every_steps\": " + std::to_string(p.keep_every_steps);
  return out + "}";
}

}  // namespace detail

/// A series of checkpoints in one directory under one prefix
/// (docs/FORMAT.md section 12), shared with the managers of every other
/// language: each save names its step and metrics in the file, retention
/// deletes what the policy no longer keeps, and load_latest and
/// restore_latest resume from the newest checkpoint that loads.
///
///     pytorch_saver::Policy policy;
///     policy.prefix = "run";
///     policy.keep_last = 3;
///     pytorch_saver::CheckpointManager manager("ckpt", policy);
///     auto resumed = manager.restore_latest(container);  // resumed.found
///     manager.save_async(container, step, R"({"loss": 0.42})");
///
/// It holds the series' lock until close() or destruction: a second
/// manager of the same directory and prefix, in this process or another,
/// throws Error with PTS_ERROR_LOCKED. list() and latest() give JSON text
/// (docs/C_API.md). Move-only; one thread at a time.
class CheckpointManager {
 public:
  /// What restore_latest and load_latest found.
  struct Resumed {
    /// False when the series has no checkpoint (metadata_json is then "").
    bool found = false;
    /// The flat metadata of the checkpoint resumed from, as JSON text.
    std::string metadata_json;
    /// The files skipped, newest first, as a JSON array of `{"path",
    /// "kind", "message"}`.
    std::string skipped_json;
  };
  struct Loaded;

  /// Opens the series of `policy.prefix` in `dir` (created with its
  /// parents if missing).
  explicit CheckpointManager(const std::string& dir, const Policy& policy = {}) {
    pts_manager_t* out = nullptr;
    detail::check(pts_manager_open(dir.c_str(), detail::policy_json(policy).c_str(), &out));
    ptr_.reset(out);
  }

  /// Saves `container` as the checkpoint of `step` with the user metadata
  /// `metadata_json` (a JSON object; its finite numbers are the metrics),
  /// then deletes what the policy no longer keeps. Returns the path.
  std::string save(const Container& container, uint64_t step,
                   const std::string& metadata_json = "{}") {
    if (container.save_progress_) container.save_progress_->reset();
    char* path = nullptr;
    detail::check(pts_manager_save(live(), container.capi(), step, metadata_json.c_str(), &path));
    std::string saved = detail::take_string(path);
    if (container.save_progress_) container.save_progress_->rethrow();
    return saved;
  }

  /// As save(), in the background: copies the container's tensors and
  /// returns; the container may change at once. wait() collects the
  /// outcome.
  void save_async(const Container& container, uint64_t step,
                  const std::string& metadata_json = "{}") {
    detail::check(pts_manager_save_async(live(), container.capi(), step, metadata_json.c_str()));
  }

  /// Waits for the background save and returns its path ("" when nothing
  /// was in flight), or throws its error.
  std::string wait() {
    char* path = nullptr;
    detail::check(pts_manager_wait(live(), &path));
    return detail::take_string(path);
  }

  /// The series' checkpoints, oldest first, as a JSON array of `{"path",
  /// "step", "timestamp", "metrics", "kept_by"}`.
  std::string list() const {
    char* out = nullptr;
    detail::check(pts_manager_list(live(), &out));
    return detail::take_string(out);
  }

  /// The newest checkpoint as a JSON object, or "null".
  std::string latest() const {
    char* out = nullptr;
    detail::check(pts_manager_latest(live(), &out));
    return detail::take_string(out);
  }

  /// Pins a checkpoint of the series (by path or file name): retention
  /// keeps it until unpin().
  void pin(const std::string& path) { detail::check(pts_manager_pin(live(), path.c_str(), true)); }

  /// Unpins a checkpoint: retention applies to it again at the next save.
  void unpin(const std::string& path) {
    detail::check(pts_manager_pin(live(), path.c_str(), false));
  }

  /// Restores the newest checkpoint that restores into the objects
  /// `container` holds, trying older ones when it fails (a failed one
  /// leaves the container as it was).
  Resumed restore_latest(Container& container, const LoadOptions& options = {}) const {
    CapiLoadOptions c_options = load_options_to_capi(options);
    char* meta = nullptr;
    char* skipped = nullptr;
    detail::check(
        pts_manager_restore_latest(live(), container.capi(), c_options.get(), &meta, &skipped));
    Resumed found = resumed(meta, skipped);
    c_options.rethrow_progress_error();
    return found;
  }

  /// Loads the newest checkpoint that loads into a new container over the
  /// built-in classes, trying older ones when it fails.
  Loaded load_latest(const LoadOptions& options = {}) const;

  /// Waits for the background save, releases the lock and frees the
  /// manager; throws the error of a background save nobody collected
  /// (the manager is closed either way). A no-op when already closed.
  void close() {
    if (ptr_ != nullptr) detail::check(pts_manager_close(ptr_.release()));
  }

  pts_manager_t* capi() noexcept { return ptr_.get(); }
  const pts_manager_t* capi() const noexcept { return ptr_.get(); }

 private:
  pts_manager_t* live() const {
    if (ptr_ == nullptr) throw Error(PTS_ERROR_USAGE, "the checkpoint manager is closed");
    return ptr_.get();
  }

  static Resumed resumed(char* meta, char* skipped) {
    Resumed out;
    out.found = meta != nullptr;
    out.metadata_json = detail::take_string(meta);
    out.skipped_json = detail::take_string(skipped);
    return out;
  }

  std::unique_ptr<pts_manager_t, detail::ManagerDeleter> ptr_;
};

/// What CheckpointManager::load_latest returns.
struct CheckpointManager::Loaded {
  /// The loaded container; empty (capi() NULL) when nothing was found.
  Container container;
  Resumed resumed;
};

inline CheckpointManager::Loaded CheckpointManager::load_latest(const LoadOptions& options) const {
  CapiLoadOptions c_options = load_options_to_capi(options);
  pts_container_t* out = nullptr;
  char* meta = nullptr;
  char* skipped = nullptr;
  detail::check(pts_manager_load_latest(live(), nullptr, c_options.get(), &out, &meta, &skipped));
  Container container(out);
  Resumed found = resumed(meta, skipped);
  if (out != nullptr) {
    detail::check(pts_container_set_producer_language(out, Container::kProducerLanguage));
  }
  c_options.rethrow_progress_error();
  return Loaded{std::move(container), std::move(found)};
}

}  // namespace pytorch_saver

#endif  // PYTORCH_SAVER_HPP
