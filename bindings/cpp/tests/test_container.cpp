// Tests of pytorch_saver.hpp: a torch::nn::Module registered from C++,
// trained by the container, saved, resumed in a fresh process and compared
// bit for bit with an uninterrupted run; the module the C++ code holds is
// the one the container trains; Rust's golden file gives Rust's output;
// errors become exceptions with codes; moves and finalizers; load options
// (copy, verify); Model serving forward from many threads at once.
//
// The binary has its own main: `test_container --resume-child IN OUT_DIR`
// is the fresh process of ResumeInFreshProcess (it loads IN, trains on and
// saves into OUT_DIR).
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <pytorch_saver.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "temp_dir.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using pytorch_saver::Checkpoint;
using pytorch_saver::Container;
using pytorch_saver::Error;
using pytorch_saver::Kwargs;
using pytorch_saver::LoadOptions;
using pytorch_saver::Member;
using pytorch_saver::Model;
using pytorch_saver::Registry;

constexpr const char* kNetClass = "tests.cpp.Net";
constexpr const char* kNetKwargs = R"({"in": 4, "hidden": 8, "out": 2})";
constexpr const char* kAdam = "torch.optim.Adam";
constexpr const char* kAdamKwargs = R"({"lr": 0.01})";
constexpr const char* kWarmRestarts = "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts";
constexpr const char* kWarmRestartsKwargs = R"({"T_0": 7, "T_mult": 2})";
constexpr int kHalfSteps = 30;

// Two linear layers with a ReLU, and a buffer scaling the output.
struct Net : torch::nn::Module {
  Net(int64_t in, int64_t hidden, int64_t out)
      : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, out))) {
    scale = register_buffer("scale", torch::full({out}, 0.5));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(fc1(x))) * scale; }

  torch::nn::Linear fc1;
  torch::nn::Linear fc2;
  torch::Tensor scale;
};

void register_net(Registry& registry) {
  registry.register_module<Net>(kNetClass, [](const Kwargs& kw, bool /*loading*/) {
    return std::make_shared<Net>(kw.get<int64_t>("in"), kw.get_or<int64_t>("hidden", 16),
                                 kw.get<int64_t>("out"));
  });
}

// The batch of training step `step`: the same in every process.
std::pair<torch::Tensor, torch::Tensor> batch(int step) {
  torch::manual_seed(1000 + step);
  torch::Tensor x = torch::randn({16, 4});
  torch::Tensor y = torch::randn({16, 2});
  return {x, y};
}

// Training steps [from, to): forward, MSE, backward, optimizer and
// scheduler steps, zero_grad.
void train(Container& container, int from, int to) {
  for (int step = from; step < to; ++step) {
    auto [x, y] = batch(step);
    torch::Tensor loss = torch::mse_loss(container.forward(x, /*train=*/true), y);
    loss.backward();
    container.step();
    container.scheduler_step();
    container.zero_grad();
  }
}

// A fresh Net container with Adam and warm restarts; the same initial
// values on every call.
Container new_net_container(const Registry& registry) {
  Container container(registry);
  torch::manual_seed(7);
  container.initialize(kNetClass, kNetKwargs, kAdam, kAdamKwargs, kWarmRestarts,
                       kWarmRestartsKwargs);
  return container;
}

// The Error `f` throws, or nullopt.
template <class F>
std::optional<Error> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

#define EXPECT_PTS_ERROR(statement, expected_code)                                               \
  do {                                                                                           \
    std::optional<Error> pts_error_ = error_of([&] { statement; });                              \
    if (!pts_error_) {                                                                           \
      ADD_FAILURE() << #statement " did not throw pytorch_saver::Error";                         \
    } else {                                                                                     \
      EXPECT_EQ(pts_error_->code(), static_cast<uint32_t>(expected_code)) << pts_error_->what(); \
    }                                                                                            \
  } while (0)

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The one .zip file in `dir`.
std::string only_zip_in(const std::string& dir) {
  std::vector<std::string> zips;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".zip") zips.push_back(entry.path().string());
  }
  if (zips.size() != 1) {
    throw std::runtime_error(dir + " holds " + std::to_string(zips.size()) + " .zip files");
  }
  return zips[0];
}

// Runs this binary with `args`; its exit status (-1 if it did not exit).
int run_self(const std::vector<std::string>& args) {
  std::string exe = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> all = {exe};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), environ);
  if (rc != 0) throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error("waitpid failed");
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The fresh process: loads `in_path` (the registry rebuilds Net by
// name), trains steps 30..59, saves into `out_dir`.
int resume_child(const std::string& in_path, const std::string& out_dir) {
  try {
    torch::set_num_threads(1);
    Registry registry;
    register_net(registry);
    auto [container, metadata] = Container::load(in_path, registry);
    if (!contains(metadata, "\"step\":30")) {
      std::cerr << "child: unexpected metadata " << metadata << "\n";
      return 2;
    }
    train(container, kHalfSteps, 2 * kHalfSteps);
    container.save(out_dir, "resumed", R"({"step": 60})");
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "child: " << e.what() << "\n";
    return 1;
  }
}

// Every tensor of both members, by name, dtype, shape and bits.
void expect_same_tensors(const std::string& path_a, const std::string& path_b) {
  Checkpoint a = Checkpoint::open(path_a);
  Checkpoint b = Checkpoint::open(path_b);
  for (Member member : {Member::Model, Member::Optimizer}) {
    std::vector<std::string> names = a.tensor_names(member);
    ASSERT_EQ(names, b.tensor_names(member));
    ASSERT_FALSE(names.empty());
    for (const std::string& name : names) {
      torch::Tensor ta = a.tensor(member, name);
      torch::Tensor tb = b.tensor(member, name);
      EXPECT_EQ(ta.scalar_type(), tb.scalar_type()) << name;
      EXPECT_EQ(ta.sizes(), tb.sizes()) << name;
      EXPECT_TRUE(torch::equal(ta, tb)) << name << " differs";
    }
  }
}

// The `__pytorch_saver__` object of a checkpoint's metadata (optimizer
// param groups with their lr, scheduler state) as text.
std::string internals_of(const std::string& path) {
  std::string meta = Checkpoint::open(path).metadata_json();
  size_t at = meta.find("\"__pytorch_saver__\"");
  if (at == std::string::npos) throw std::runtime_error("no __pytorch_saver__ in " + meta);
  // The internals carry no timestamp (a flat user-level key); cut one off
  // anyway should it follow them.
  size_t ts = meta.find("\"timestamp\"", at);
  return meta.substr(at, ts == std::string::npos ? std::string::npos : ts - at);
}

TEST(ContainerTraining, ResumeInFreshProcessIsBitIdentical) {
  TempDir tmp;
  Registry registry;
  register_net(registry);

  // 30 steps, saved.
  Container first = new_net_container(registry);
  train(first, 0, kHalfSteps);
  std::string half = first.save(tmp.sub("half"), "half", R"({"step": 30})");

  // 30 more in a fresh process, from the file.
  std::string resumed_dir = tmp.sub("resumed");
  ASSERT_EQ(run_self({"--resume-child", half, resumed_dir}), 0);
  std::string resumed = only_zip_in(resumed_dir);

  // 60 uninterrupted.
  Container whole = new_net_container(registry);
  train(whole, 0, 2 * kHalfSteps);
  std::string uninterrupted = whole.save(tmp.sub("whole"), "whole", R"({"step": 60})");

  expect_same_tensors(resumed, uninterrupted);
  EXPECT_EQ(internals_of(resumed), internals_of(uninterrupted));
  auto loaded = Container::load(resumed, registry);
  EXPECT_EQ(loaded.container.lrs(), whole.lrs());
  EXPECT_NE(whole.lr(), 0.01);  // the scheduler moved it

  // Not vacuous: the second half changed the model.
  EXPECT_FALSE(torch::equal(Checkpoint::open(half).tensor(Member::Model, "fc1.weight"),
                            Checkpoint::open(uninterrupted).tensor(Member::Model, "fc1.weight")));
}

TEST(ContainerModule, IsTheContainersModuleInPlace) {
  TempDir tmp;
  Registry registry;
  register_net(registry);
  Container container(registry);
  container.initialize(kNetClass, kNetKwargs, "torch.optim.SGD", R"({"lr": 0.1})");
  std::shared_ptr<Net> net = container.module<Net>();
  torch::Tensor weight = net->fc1->weight;
  void* storage = weight.data_ptr();

  auto params = container.named_parameters();
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0].first, "fc1.weight");
  EXPECT_EQ(params[3].first, "fc2.bias");
  EXPECT_EQ(params[0].second.data_ptr(), storage);
  EXPECT_EQ(container.state_tensor("fc1.weight").data_ptr(), storage);
  EXPECT_EQ(container.state_tensor("scale").data_ptr(), net->scale.data_ptr());

  std::string saved = container.save(tmp.str(), "in_place");
  EXPECT_TRUE(contains(Checkpoint::open(saved).metadata_json(), "\"language\":\"c++\""));
  torch::Tensor before = weight.detach().clone();

  // Forward through the module the C++ code holds; the container steps it.
  auto [x, y] = batch(0);
  torch::mse_loss(net->forward(x), y).backward();
  container.step();
  EXPECT_EQ(net->fc1->weight.data_ptr(), storage);
  EXPECT_FALSE(torch::equal(net->fc1->weight, before));

  // restore() writes the file's values into the same storage.
  container.restore(saved);
  EXPECT_EQ(net->fc1->weight.data_ptr(), storage);
  EXPECT_TRUE(torch::equal(net->fc1->weight, before));
  EXPECT_TRUE(
      torch::equal(net->fc1->weight, Checkpoint::open(saved).tensor(Member::Model, "fc1.weight")));
}

// The numbers of the array under "key" after position `from` in JSON text.
std::vector<double> json_numbers(const std::string& text, size_t from, const std::string& key) {
  size_t at = text.find("\"" + key + "\"", from);
  size_t open = text.find('[', at);
  size_t close = text.find(']', open);
  if (at == std::string::npos || open == std::string::npos || close == std::string::npos) {
    throw std::runtime_error("no array " + key);
  }
  std::vector<double> out;
  const char* p = text.c_str() + open + 1;
  const char* end = text.c_str() + close;
  while (p < end) {
    char* next = nullptr;
    double value = std::strtod(p, &next);
    if (next == p) {  // a comma or whitespace
      ++p;
      continue;
    }
    out.push_back(value);
    p = next;
  }
  return out;
}

// A golden file's recorded forward (its sidecar's "forward"): the input,
// and the writer's output with one row per example.
struct RecordedForward {
  torch::Tensor input;
  torch::Tensor output;
};

RecordedForward recorded_forward(const std::string& golden) {
  std::string sidecar = read_file(golden + ".json");
  size_t forward_at = sidecar.find("\"forward\"");
  if (forward_at == std::string::npos) throw std::runtime_error(golden + ": no forward");
  auto to_f32 = [](const std::vector<double>& values, std::vector<int64_t> sizes) {
    std::vector<float> floats(values.begin(), values.end());  // the f32 values, exactly
    return torch::tensor(floats, torch::kFloat32).reshape(sizes);
  };
  std::vector<double> shape = json_numbers(sidecar, forward_at, "input_shape");
  std::vector<int64_t> sizes(shape.begin(), shape.end());
  return {to_f32(json_numbers(sidecar, forward_at, "input"), sizes),
          to_f32(json_numbers(sidecar, forward_at, "output"), {sizes.at(0), -1})};
}

TEST(ContainerGolden, RustMlpInferenceGivesRustsOutput) {
  std::string golden = std::string(PTS_REPO_ROOT) + "/tests/golden/v1/rust_mlp_inference.zip";
  auto [x, expected] = recorded_forward(golden);
  ASSERT_EQ(x.dim(), 2);

  auto loaded = Container::load(golden, Registry());
  EXPECT_TRUE(contains(loaded.metadata_json, "\"in_dim\":4")) << loaded.metadata_json;
  torch::Tensor y = loaded.container.forward(x);
  EXPECT_EQ(y.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(y, expected)) << y << "\nexpected\n" << expected;
  EXPECT_FALSE(y.requires_grad());

  // The same file through Checkpoint.
  Checkpoint checkpoint = Checkpoint::open(golden);
  EXPECT_TRUE(checkpoint.tensor_names(Member::Optimizer).empty());
  pytorch_saver::TensorInfo info = checkpoint.info(Member::Model, "fc1.weight");
  EXPECT_EQ(info.dtype, static_cast<pts_dtype_t>(PTS_DTYPE_F32));
  EXPECT_EQ(info.shape, (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(info.nbytes, 8u * 4u * 4u);
  EXPECT_TRUE(contains(checkpoint.metadata_json(), "pytorch_saver.models.MLP"));
}

// Format version 2's extra member, through Member::Extra: empty in a file
// without extra state; in the Python package's v2 golden file, the RNG
// state tensor with the sidecar's bytes, and the typed kwargs' tags in the
// metadata JSON.
TEST(CheckpointGolden, ExtraMemberHoldsTheRecordedRngState) {
  std::string root = std::string(PTS_REPO_ROOT) + "/tests/golden/";
  EXPECT_TRUE(
      Checkpoint::open(root + "v1/rust_mlp_inference.zip").tensor_names(Member::Extra).empty());

  std::string golden = root + "v2/python_v2_typed_extra_checkpoint.zip";
  ASSERT_TRUE(fs::exists(golden) && fs::exists(golden + ".json"))
      << "version 2 golden file " << golden << " (or its sidecar) is missing";
  std::string sidecar = read_file(golden + ".json");
  Checkpoint checkpoint = Checkpoint::open(golden);
  std::string meta = checkpoint.metadata_json();
  EXPECT_TRUE(contains(meta, R"("betas":{)") && contains(meta, R"("__type__":"tuple")")) << meta;
  EXPECT_TRUE(contains(meta, R"("dtype":{)") && contains(meta, R"("__type__":"dtype")") &&
              contains(meta, R"("name":"float64")"))
      << meta;

  std::vector<std::string> names = checkpoint.tensor_names(Member::Extra);
  ASSERT_NE(std::find(names.begin(), names.end(), "rng.torch.cpu"), names.end());
  torch::Tensor cpu = checkpoint.tensor(Member::Extra, "rng.torch.cpu");
  EXPECT_EQ(cpu.scalar_type(), torch::kUInt8);
  EXPECT_EQ(cpu.dim(), 1);
  EXPECT_EQ(checkpoint.info(Member::Extra, "rng.torch.cpu").nbytes,
            static_cast<size_t>(cpu.numel()));

  // The sidecar's record: tensors["extra.safetensors"]["rng.torch.cpu"].hex.
  size_t at = sidecar.find("\"extra.safetensors\"");
  ASSERT_NE(at, std::string::npos);
  at = sidecar.find("\"rng.torch.cpu\"", at);
  ASSERT_NE(at, std::string::npos);
  at = sidecar.find("\"hex\"", at);
  ASSERT_NE(at, std::string::npos);
  size_t begin = sidecar.find('"', sidecar.find(':', at)) + 1;
  std::string hex = sidecar.substr(begin, sidecar.find('"', begin) - begin);
  ASSERT_EQ(hex.size(), 2 * static_cast<size_t>(cpu.numel()));
  const uint8_t* bytes = cpu.data_ptr<uint8_t>();
  for (int64_t i = 0; i < cpu.numel(); i++) {
    ASSERT_EQ(bytes[i], std::stoul(hex.substr(2 * i, 2), nullptr, 16)) << "byte " << i;
  }
}

// The issue's bar for C++: a portable Sequential (Conv2d, BatchNorm2d, ReLU,
// MaxPool2d, Flatten, Linear) trained in Python loads with no model code and
// gives PyTorch's eval-mode output within 1e-6; then a train-mode step moves
// BatchNorm's statistics as PyTorch's does.
TEST(ContainerGolden, PythonTrainedSequentialGivesPyTorchsOutput) {
  std::string golden = std::string(PTS_REPO_ROOT) +
                       "/tests/golden/v1/python_sequential_convnet_adam_warm_restarts.zip";
  auto [x, expected] = recorded_forward(golden);
  ASSERT_EQ(x.dim(), 4);

  std::string internals = Checkpoint::open(golden).metadata_json();
  EXPECT_TRUE(contains(internals, "\"class\":\"pytorch_saver.models.Sequential\""));
  EXPECT_TRUE(contains(internals, "\"language\":\"python\""));
  auto loaded = Container::load(golden, Registry());
  EXPECT_TRUE(contains(loaded.metadata_json, "\"type\":\"BatchNorm2d\""));
  torch::Tensor y = loaded.container.forward(x);
  ASSERT_EQ(y.sizes(), expected.sizes());
  double worst = ((y - expected).abs() / expected.abs().clamp_min(1.0)).max().item<double>();
  EXPECT_LE(worst, 1e-6) << y << "\nexpected\n" << expected;

  // Training continues in C++: one Adam step through the container.
  torch::Tensor tracked = loaded.container.state_tensor("1.num_batches_tracked");
  const int64_t before = tracked.item<int64_t>();
  loaded.container.zero_grad();
  torch::Tensor loss = loaded.container.forward(x, /*train=*/true).square().mean();
  loss.backward();
  loaded.container.step();
  EXPECT_EQ(loaded.container.state_tensor("1.num_batches_tracked").item<int64_t>(), before + 1);
  EXPECT_FALSE(torch::equal(loaded.container.forward(x), y));
}

TEST(ContainerErrors, BecomeExceptionsWithCodes) {
  TempDir tmp;
  Registry registry;
  register_net(registry);
  registry.register_module<Net>("tests.cpp.Throws",
                                [](const Kwargs&, bool) -> std::shared_ptr<Net> {
                                  throw std::runtime_error("boom from the factory");
                                });
  Container container(registry);

  EXPECT_PTS_ERROR(container.initialize("no.such.Model"), PTS_ERROR_UNKNOWN_NAME);
  EXPECT_PTS_ERROR(container.initialize(kNetClass, "{not json"), PTS_ERROR_INVALID_JSON);
  EXPECT_PTS_ERROR(container.initialize(kNetClass, R"({"in": 4, "out": 2, "bogus": 1})"),
                   PTS_ERROR_INVALID_KWARGS);
  EXPECT_PTS_ERROR(container.initialize(kNetClass, R"({"out": 2})"), PTS_ERROR_INVALID_KWARGS);
  std::optional<Error> factory = error_of([&] { container.initialize("tests.cpp.Throws"); });
  ASSERT_TRUE(factory);
  EXPECT_EQ(factory->code(), static_cast<uint32_t>(PTS_ERROR_FACTORY));
  EXPECT_TRUE(contains(factory->what(), "boom from the factory")) << factory->what();
  EXPECT_PTS_ERROR(container.forward(torch::ones({2, 4})), PTS_ERROR_NOT_INITIALIZED);
  EXPECT_PTS_ERROR(container.step(), PTS_ERROR_NOT_INITIALIZED);

  container.initialize(kNetClass, kNetKwargs, kAdam, kAdamKwargs);
  std::optional<Error> shape = error_of([&] { container.forward(torch::ones({2, 5})); });
  ASSERT_TRUE(shape);
  EXPECT_TRUE(shape->code() == PTS_ERROR_TORCH || shape->code() == PTS_ERROR_CALLBACK)
      << shape->code() << " " << shape->what();
  EXPECT_TRUE(contains(shape->what(), "2x5")) << shape->what();
  EXPECT_PTS_ERROR(container.scheduler_step(), PTS_ERROR_USAGE);
  EXPECT_PTS_ERROR(container.module<torch::nn::LinearImpl>(), PTS_ERROR_USAGE);
  EXPECT_PTS_ERROR(container.state_tensor("fc9.weight"), PTS_ERROR_NOT_FOUND);
  EXPECT_PTS_ERROR(container.save(tmp.str(), "", "[1, 2]"), PTS_ERROR_INVALID_JSON);
  EXPECT_PTS_ERROR(register_net(registry), PTS_ERROR_DUPLICATE_NAME);
  std::optional<Error> duplicate = error_of([&] { register_net(registry); });
  ASSERT_TRUE(duplicate.has_value());
  EXPECT_EQ(duplicate->kind(), "DuplicateName");

  // Files: truncated, missing.
  std::string saved = container.save(tmp.str(), "whole");
  std::string bytes = read_file(saved);
  std::string truncated = tmp.str() + "/truncated.zip";
  std::ofstream(truncated, std::ios::binary).write(bytes.data(), bytes.size() / 2);
  EXPECT_PTS_ERROR(Container::load(truncated, registry), PTS_ERROR_FORMAT);
  EXPECT_PTS_ERROR(Checkpoint::open(truncated), PTS_ERROR_FORMAT);
  std::optional<Error> kinded = error_of([&] { Checkpoint::open(truncated); });
  ASSERT_TRUE(kinded.has_value());
  EXPECT_EQ(kinded->kind(), "NoEndRecord") << kinded->what();
  EXPECT_PTS_ERROR(Container::load(tmp.str() + "/missing.zip", registry), PTS_ERROR_IO);
  EXPECT_PTS_ERROR(Checkpoint::open(saved).tensor(Member::Model, "nope"), PTS_ERROR_NOT_FOUND);

  // A built-in model was built by no C++ factory.
  Container builtin;
  builtin.initialize("torch.nn.Linear", R"({"in_features": 2, "out_features": 1})");
  EXPECT_PTS_ERROR(builtin.module<Net>(), PTS_ERROR_USAGE);
  EXPECT_PTS_ERROR(Container(registry).initialize("torch.optim.Adam"), PTS_ERROR_UNKNOWN_NAME);
}

TEST(ContainerKwargs, GettersDefaultsAndJson) {
  struct Seen {
    int64_t in = 0, hidden = 0;
    int out = 0;
    double gain = 0;
    bool flag = false;
    bool loading = true;
    std::string json;
  };
  auto seen = std::make_shared<Seen>();
  Registry registry;
  registry.register_module<Net>("tests.cpp.Probe", [seen](const Kwargs& kw, bool loading) {
    seen->in = kw.get<int64_t>("in");
    seen->hidden = kw.get_or<int64_t>("hidden", 16);
    seen->out = kw.get_or<int>("out", 2);
    seen->gain = kw.get_or<double>("gain", 1.0);
    seen->flag = kw.get_or<bool>("flag", false);
    seen->loading = loading;
    return std::make_shared<Net>(seen->in, seen->hidden, seen->out);
  });
  registry.register_module<Net>("tests.cpp.JsonProbe", [seen](const Kwargs& kw, bool) {
    seen->json = kw.json();
    return std::make_shared<Net>(1, 1, 1);
  });
  registry.register_module<Net>("tests.cpp.Narrow", [](const Kwargs& kw, bool) {
    int8_t small = kw.get_or<int8_t>("small", 1);
    return std::make_shared<Net>(small, 1, 1);
  });

  Container container(registry);
  container.initialize("tests.cpp.Probe", R"({"in": 3, "gain": 2, "flag": true})");
  EXPECT_EQ(seen->in, 3);
  EXPECT_EQ(seen->hidden, 16);
  EXPECT_EQ(seen->out, 2);
  EXPECT_EQ(seen->gain, 2.0);
  EXPECT_TRUE(seen->flag);
  EXPECT_FALSE(seen->loading);

  TempDir tmp;
  auto loaded = Container::load(container.save_inference(tmp.str()), registry);
  EXPECT_TRUE(seen->loading);
  EXPECT_TRUE(contains(loaded.metadata_json, "\"gain\":2")) << loaded.metadata_json;

  // json() takes every kwarg: none is unexpected.
  container.initialize("tests.cpp.JsonProbe", R"({"anything": [1, 2]})");
  EXPECT_TRUE(contains(seen->json, "anything")) << seen->json;

  EXPECT_PTS_ERROR(container.initialize("tests.cpp.Narrow", R"({"small": 300})"),
                   PTS_ERROR_INVALID_KWARGS);
  EXPECT_PTS_ERROR(container.initialize("tests.cpp.Probe", R"({"in": "three"})"),
                   PTS_ERROR_INVALID_KWARGS);
}

// Counts for Finalizers: modules built and destroyed, factories destroyed.
std::atomic<int> g_modules_built{0};
std::atomic<int> g_modules_destroyed{0};
std::atomic<int> g_factories_destroyed{0};

struct Counted : torch::nn::Module {
  Counted() {
    weight = register_parameter("weight", torch::ones({2}));
    ++g_modules_built;
  }
  ~Counted() override { ++g_modules_destroyed; }
  torch::Tensor forward(const torch::Tensor& x) { return x * weight; }
  torch::Tensor weight;
};

// Move-only; only the object that was moved from last counts its end.
struct CountingFactory {
  CountingFactory() = default;
  CountingFactory(CountingFactory&& other) noexcept : owner(std::exchange(other.owner, false)) {}
  CountingFactory(const CountingFactory&) = delete;
  CountingFactory& operator=(const CountingFactory&) = delete;
  CountingFactory& operator=(CountingFactory&&) = delete;
  ~CountingFactory() {
    if (owner) ++g_factories_destroyed;
  }
  std::shared_ptr<Counted> operator()(const Kwargs&, bool) const {
    return std::make_shared<Counted>();
  }
  bool owner = true;
};

TEST(ContainerLifetime, MovesAndFinalizersRunOnce) {
  g_modules_built = 0;
  g_modules_destroyed = 0;
  g_factories_destroyed = 0;
  TempDir tmp;
  constexpr const char* kCounted = "tests.cpp.Counted";
  constexpr const char* kSgd = "torch.optim.SGD";
  constexpr const char* kSgdKwargs = R"({"lr": 0.1})";
  std::shared_ptr<Counted> held;
  {
    std::optional<Registry> registry;
    {
      Registry original;
      original.register_module<Counted>(kCounted, CountingFactory());
      registry.emplace(std::move(original));
      EXPECT_EQ(original.capi(), nullptr);
      EXPECT_PTS_ERROR(original.contains(kCounted), PTS_ERROR_NULL_ARGUMENT);
      EXPECT_PTS_ERROR(Container{original}, PTS_ERROR_NULL_ARGUMENT);
      // Ownership passes even when registering fails: finalized at once.
      EXPECT_PTS_ERROR(original.register_module<Counted>(kCounted, CountingFactory()),
                       PTS_ERROR_NULL_ARGUMENT);
      EXPECT_EQ(g_factories_destroyed, 1);
      EXPECT_PTS_ERROR(registry->register_module<Counted>(kCounted, CountingFactory()),
                       PTS_ERROR_DUPLICATE_NAME);
      EXPECT_EQ(g_factories_destroyed, 2);
    }  // the moved-from registry destructs safely
    EXPECT_TRUE(registry->contains(kCounted));

    Container a(*registry);
    a.initialize(kCounted, "{}", kSgd, kSgdKwargs);
    Container b(*registry);
    b.initialize(kCounted, "{}", kSgd, kSgdKwargs);
    b.initialize(kCounted, "{}", kSgd, kSgdKwargs);  // drops b's first module
    EXPECT_EQ(g_modules_built, 3);
    EXPECT_EQ(g_modules_destroyed, 1);
    auto loaded = Container::load(a.save(tmp.str(), "a"), *registry);
    EXPECT_EQ(g_modules_built, 4);

    Container c(std::move(a));
    EXPECT_EQ(a.capi(), nullptr);
    EXPECT_PTS_ERROR(a.step(), PTS_ERROR_NULL_ARGUMENT);
    EXPECT_PTS_ERROR(a.module<Counted>(), PTS_ERROR_NULL_ARGUMENT);
    EXPECT_PTS_ERROR(a.forward(torch::ones({2})), PTS_ERROR_NULL_ARGUMENT);
    b = std::move(c);  // drops b's second module
    EXPECT_EQ(c.capi(), nullptr);
    EXPECT_EQ(g_modules_destroyed, 2);
    EXPECT_TRUE(torch::equal(b.forward(torch::ones({2})), torch::ones({2})));
    held = loaded.container.module<Counted>();

    Checkpoint opened = Checkpoint::open(only_zip_in(tmp.str()));
    Checkpoint moved = std::move(opened);
    EXPECT_EQ(opened.capi(), nullptr);
    EXPECT_PTS_ERROR(opened.tensor_names(Member::Model), PTS_ERROR_NULL_ARGUMENT);
    EXPECT_EQ(moved.tensor_names(Member::Model), std::vector<std::string>{"weight"});

    // The factory outlives its registry while containers use it.
    registry.reset();
    EXPECT_EQ(g_factories_destroyed, 2);
  }
  EXPECT_EQ(g_factories_destroyed, 3);
  EXPECT_EQ(g_modules_built, 4);
  EXPECT_EQ(g_modules_destroyed, 3);  // `held` keeps the loaded one alive
  held.reset();
  EXPECT_EQ(g_modules_destroyed, 4);
}

std::string golden_path(const std::string& name) {
  return std::string(PTS_REPO_ROOT) + "/tests/golden/v1/" + name;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// The offset one past the stored data of ZIP member `name` (the files
// store their members uncompressed, sizes in the local headers).
size_t member_data_end(const std::string& zip, const std::string& name) {
  auto u16 = [&](size_t at) {
    return static_cast<size_t>(static_cast<uint8_t>(zip.at(at))) |
           static_cast<size_t>(static_cast<uint8_t>(zip.at(at + 1))) << 8;
  };
  auto u32 = [&](size_t at) { return u16(at) | u16(at + 2) << 16; };
  size_t at = 0;
  while (zip.compare(at, 4, "PK\x03\x04") == 0) {
    size_t name_len = u16(at + 26);
    size_t data = at + 30 + name_len + u16(at + 28);
    size_t end = data + u32(at + 18);
    if (zip.compare(at + 30, name_len, name) == 0) return end;
    at = end;
  }
  throw std::runtime_error("no ZIP member " + name);
}

// Every tensor of a state dict by name: the same values (bit for bit).
void expect_same_parameters(const Container& a, const Container& b) {
  auto pa = a.named_parameters();
  auto pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  ASSERT_FALSE(pa.empty());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].first, pb[i].first);
    EXPECT_TRUE(torch::equal(pa[i].second, pb[i].second)) << pa[i].first;
  }
}

TEST(LoadOptionsTest, CopyAndNoVerifyLoadTheSameTensors) {
  TempDir tmp;
  Registry registry;
  register_net(registry);
  Container trained = new_net_container(registry);
  train(trained, 0, 3);
  std::string path = trained.save(tmp.str(), "options", R"({"step": 3})");
  auto [x, y] = batch(0);

  auto plain = Container::load(path, registry);
  auto copied = Container::load(path, registry, LoadOptions{/*copy=*/true, /*verify=*/true});
  auto unverified = Container::load(path, registry, LoadOptions{/*copy=*/false, /*verify=*/false});
  EXPECT_EQ(plain.metadata_json, copied.metadata_json);
  EXPECT_EQ(plain.metadata_json, unverified.metadata_json);
  expect_same_parameters(plain.container, trained);
  expect_same_parameters(copied.container, trained);
  expect_same_parameters(unverified.container, trained);
  const torch::Tensor expected = trained.forward(x);
  EXPECT_TRUE(torch::equal(plain.container.forward(x), expected));
  EXPECT_TRUE(torch::equal(copied.container.forward(x), expected));
  EXPECT_TRUE(torch::equal(unverified.container.forward(x), expected));
  EXPECT_EQ(copied.container.lrs(), trained.lrs());

  // Training goes on from a copied load as from a mapped one.
  train(plain.container, 3, 5);
  train(copied.container, 3, 5);
  expect_same_parameters(plain.container, copied.container);

  // restore() and Checkpoint::open() with options; the built-in classes.
  Container restored = new_net_container(registry);
  restored.restore(path, LoadOptions{false, false});
  expect_same_parameters(restored, trained);
  expect_same_tensors(path, path);
  Checkpoint unchecked = Checkpoint::open(path, LoadOptions{false, false});
  EXPECT_TRUE(torch::equal(unchecked.tensor(Member::Model, "fc1.weight"),
                           Checkpoint::open(path).tensor(Member::Model, "fc1.weight")));
  std::string golden = golden_path("rust_mlp_inference.zip");
  auto builtin = Container::load(golden, LoadOptions{true, false});
  EXPECT_TRUE(torch::equal(builtin.container.forward(recorded_forward(golden).input),
                           recorded_forward(golden).output));
}

TEST(LoadOptionsTest, FlippedByteIsFoundUnlessVerifyIsOff) {
  TempDir tmp;
  const std::string golden = golden_path("rust_mlp_inference.zip");
  std::string bytes = read_file(golden);
  const size_t at = member_data_end(bytes, "model.safetensors") - 3;  // in the last tensor
  bytes[at] = static_cast<char>(bytes[at] ^ 0x40);
  const std::string flipped = tmp.str() + "/flipped.zip";
  write_file(flipped, bytes);

  EXPECT_PTS_ERROR(Container::load(flipped), PTS_ERROR_FORMAT);
  EXPECT_PTS_ERROR(Container::load(flipped, LoadOptions{/*copy=*/true}), PTS_ERROR_FORMAT);
  EXPECT_PTS_ERROR(Model::load(flipped), PTS_ERROR_FORMAT);
  EXPECT_PTS_ERROR(Checkpoint::open(flipped), PTS_ERROR_FORMAT);
  Container container;
  container.initialize("pytorch_saver.models.MLP",
                       R"({"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 3})");
  EXPECT_PTS_ERROR(container.restore(flipped), PTS_ERROR_FORMAT);

  const LoadOptions unverified{/*copy=*/false, /*verify=*/false};
  auto loaded = Container::load(flipped, unverified);
  auto reference = Container::load(golden);
  auto params = loaded.container.named_parameters();
  auto good = reference.container.named_parameters();
  ASSERT_EQ(params.size(), good.size());
  int differing = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!torch::equal(params[i].second, good[i].second)) ++differing;
  }
  EXPECT_EQ(differing, 1);  // the flipped bit went unnoticed, as asked
  EXPECT_NO_THROW(Container::load(flipped, LoadOptions{/*copy=*/true, /*verify=*/false}));
  EXPECT_NO_THROW(Model::load(flipped, unverified));
  EXPECT_NO_THROW(Checkpoint::open(flipped, unverified));
  EXPECT_NO_THROW(container.restore(flipped, unverified));
}

constexpr int kThreads = 8;
constexpr int kForwards = 64;

// forward(inputs[i]) for every i, input i on thread i % kThreads; the
// threads start together. Errors are reported as test failures.
std::vector<torch::Tensor> forward_from_threads(const Model& model,
                                                const std::vector<torch::Tensor>& inputs) {
  std::vector<torch::Tensor> outputs(inputs.size());
  std::vector<std::string> errors(kThreads);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ++ready;
      while (ready.load() < kThreads) std::this_thread::yield();
      try {
        for (size_t i = t; i < inputs.size(); i += kThreads) outputs[i] = model.forward(inputs[i]);
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const std::string& error : errors) EXPECT_EQ(error, "");
  return outputs;
}

// kForwards forwards from kThreads threads equal the sequential ones bit
// for bit, and `expected` (the same model run elsewhere) when given.
void expect_threads_match_sequential(const Model& model, const std::vector<torch::Tensor>& inputs,
                                     const std::vector<torch::Tensor>& expected = {}) {
  std::vector<torch::Tensor> threaded = forward_from_threads(model, inputs);
  for (size_t i = 0; i < inputs.size(); ++i) {
    torch::Tensor sequential = model.forward(inputs[i]);
    ASSERT_TRUE(threaded[i].defined()) << i;
    EXPECT_TRUE(torch::equal(threaded[i], sequential)) << "input " << i;
    if (!expected.empty()) {
      EXPECT_TRUE(torch::equal(sequential, expected[i])) << "input " << i;
    }
    EXPECT_FALSE(threaded[i].requires_grad());
  }
}

std::vector<torch::Tensor> random_inputs(std::vector<int64_t> sizes) {
  torch::manual_seed(42);
  std::vector<torch::Tensor> inputs;
  for (int i = 0; i < kForwards; ++i) inputs.push_back(torch::randn(sizes));
  return inputs;
}

TEST(ModelServing, BuiltInModelsRunConcurrentlyBitForBit) {
  // Rust's MLP gives Rust's recorded output.
  const std::string mlp = golden_path("rust_mlp_inference.zip");
  auto [x, expected] = recorded_forward(mlp);
  auto [model, metadata] = Model::load(mlp);
  EXPECT_TRUE(contains(metadata, "\"in_dim\":4")) << metadata;
  EXPECT_EQ(model.class_name(), "pytorch_saver.models.MLP");
  EXPECT_TRUE(model.concurrent());
  EXPECT_TRUE(torch::equal(model.forward(x), expected));
  EXPECT_TRUE(torch::equal(model.state_tensor("fc1.weight"),
                           Checkpoint::open(mlp).tensor(Member::Model, "fc1.weight")));
  EXPECT_PTS_ERROR(model.state_tensor("fc9.weight"), PTS_ERROR_NOT_FOUND);
  expect_threads_match_sequential(model, random_inputs({5, 4}));

  // The Python-trained convnet (Conv2d, BatchNorm2d, ...): its optimizer is
  // ignored; copied or mapped, the same outputs.
  const std::string convnet = golden_path("python_sequential_convnet_adam_warm_restarts.zip");
  const torch::Tensor image = recorded_forward(convnet).input;
  auto mapped = Model::load(convnet, Registry());
  auto copied = Model::load(convnet, LoadOptions{/*copy=*/true});
  EXPECT_EQ(mapped.model.class_name(), "pytorch_saver.models.Sequential");
  EXPECT_TRUE(mapped.model.concurrent());
  std::vector<int64_t> sizes(image.sizes().begin(), image.sizes().end());
  std::vector<torch::Tensor> images = random_inputs(sizes);
  std::vector<torch::Tensor> reference;
  for (const auto& input : images) reference.push_back(copied.model.forward(input));
  expect_threads_match_sequential(mapped.model, images, reference);

  // Moved from.
  Model moved = std::move(mapped.model);
  EXPECT_EQ(mapped.model.capi(), nullptr);
  EXPECT_PTS_ERROR(mapped.model.forward(image), PTS_ERROR_NULL_ARGUMENT);
  EXPECT_PTS_ERROR(mapped.model.concurrent(), PTS_ERROR_NULL_ARGUMENT);
  EXPECT_TRUE(torch::equal(moved.forward(images[0]), reference[0]));
  EXPECT_PTS_ERROR(Model::load(mlp + ".missing"), PTS_ERROR_IO);
}

// Linear, Dropout, Linear: its output shows the training mode (dropout
// zeroes half the hidden units in training mode only).
struct DropNet : torch::nn::Module {
  DropNet(int64_t in, int64_t hidden, int64_t out)
      : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
        drop(register_module("drop", torch::nn::Dropout(0.5))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, out))) {}
  torch::Tensor forward(torch::Tensor x) { return fc2(drop(torch::relu(fc1(x)))); }

  torch::nn::Linear fc1;
  torch::nn::Dropout drop;
  torch::nn::Linear fc2;
};

constexpr const char* kDropNetKwargs = R"({"in": 4, "hidden": 64, "out": 3})";

void register_drop_net(Registry& registry, const std::string& name,
                       pytorch_saver::Concurrency concurrency) {
  registry.register_module<DropNet>(
      name,
      [](const Kwargs& kw, bool) {
        return std::make_shared<DropNet>(kw.get<int64_t>("in"), kw.get<int64_t>("hidden"),
                                         kw.get<int64_t>("out"));
      },
      concurrency);
}

TEST(ModelServing, RegisteredModuleRunsConcurrentlyInEvalMode) {
  TempDir tmp;
  Registry registry;
  register_drop_net(registry, "tests.cpp.DropNet", pytorch_saver::Concurrency::Concurrent);
  register_drop_net(registry, "tests.cpp.SerialDropNet", pytorch_saver::Concurrency::Serial);
  std::vector<torch::Tensor> inputs = random_inputs({16, 4});

  for (const char* name : {"tests.cpp.DropNet", "tests.cpp.SerialDropNet"}) {
    SCOPED_TRACE(name);
    Container container(registry);
    torch::manual_seed(3);
    container.initialize(name, kDropNetKwargs, "torch.optim.SGD", R"({"lr": 0.1})");
    std::vector<torch::Tensor> expected;  // eval mode: no dropout
    for (const auto& input : inputs) expected.push_back(container.forward(input));
    std::string path = container.save_inference(tmp.str(), name);

    // The module the factory builds starts in training mode; the first
    // forward calls, from 8 threads at once, switch it to eval once.
    auto [model, metadata] = Model::load(path, registry);
    EXPECT_EQ(model.class_name(), name);
    EXPECT_EQ(model.concurrent(), std::string(name) == "tests.cpp.DropNet");
    expect_threads_match_sequential(model, inputs, expected);

    // The container switches the mode when asked, also when the caller
    // switched the module itself since the last call.
    const torch::Tensor& x = inputs[0];
    std::shared_ptr<DropNet> module = container.module<DropNet>();
    torch::manual_seed(5);
    EXPECT_FALSE(torch::equal(container.forward(x, /*train=*/true), expected[0]));
    EXPECT_TRUE(module->drop->is_training());
    module->eval();
    EXPECT_FALSE(torch::equal(container.forward(x, /*train=*/true), expected[0]));
    EXPECT_TRUE(module->drop->is_training());
    EXPECT_TRUE(torch::equal(container.forward(x), expected[0]));
    EXPECT_FALSE(module->drop->is_training());
    module->train();
    EXPECT_TRUE(torch::equal(container.forward(x), expected[0]));
    EXPECT_FALSE(module->drop->is_training());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--resume-child") {
    return resume_child(argv[2], argv[3]);
  }
  // One thread: reductions in the same order in every process.
  torch::set_num_threads(1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
