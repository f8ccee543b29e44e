// A user optimizer class from C++ (Registry::register_optimizer): a
// sign-momentum step as a lambda over at::Tensor, with a momentum buffer
// of each parameter's shape and a rank-0 step counter. Trained through the
// container, saved, loaded into a fresh container over the same registry
// and trained on: bit-identical to an uninterrupted run. Kwargs are
// checked, exceptions from the step propagate with their code and
// message, an unregistered name is refused listing the registered ones.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <pytorch_saver.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using pytorch_saver::Checkpoint;
using pytorch_saver::Container;
using pytorch_saver::Error;
using pytorch_saver::Member;
using pytorch_saver::OptimizerClass;
using pytorch_saver::OptimizerGroup;
using pytorch_saver::OptimizerState;
using pytorch_saver::Registry;

constexpr const char* kSignMomentum = "my_project.SignMomentum";
constexpr const char* kMlp = "pytorch_saver.models.MLP";
constexpr const char* kMlpKwargs = R"({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})";
constexpr const char* kKwargs = R"({"lr": 0.05, "beta": 0.8})";
constexpr const char* kStepLr = "torch.optim.lr_scheduler.StepLR";
constexpr const char* kStepLrKwargs = R"({"step_size": 5, "gamma": 0.5})";

// m = beta m + (1 - beta) g; p -= lr / sqrt(step) * sign(m).
OptimizerClass sign_momentum(std::shared_ptr<std::atomic<int>> destroyed = nullptr) {
  // Counts the destructions of the class's last copy (the library's).
  struct Witness {
    std::shared_ptr<std::atomic<int>> count;
    ~Witness() {
      if (count) ++*count;
    }
  };
  auto witness = std::make_shared<Witness>();
  witness->count = std::move(destroyed);
  OptimizerClass cls;
  cls.hyperparameters_json = R"({"lr": 0.01, "beta": 0.9})";
  cls.state_keys = {{"momentum_buffer", false, true}, {"step", true, true}};
  cls.step = [witness](const OptimizerGroup& group, at::Tensor& param, const at::Tensor& grad,
                       OptimizerState& state) {
    const double lr = group.lr();
    const double beta = group.get_double("beta");
    torch::Tensor buf = state.get("momentum_buffer");
    torch::Tensor step = state.get("step");
    if (!buf.defined()) {
      buf = torch::zeros_like(param);
      step = torch::zeros({}, torch::kFloat32);
      state.set("momentum_buffer", buf);
      state.set("step", step);
    }
    step.add_(1);
    buf.mul_(beta).add_(grad, 1 - beta);
    param.sub_(buf.sign() * (lr / std::sqrt(step.item<double>())));
  };
  cls.check_group = [](const OptimizerGroup& group) {
    const double beta = group.get_double("beta");
    if (beta < 0 || beta >= 1) throw std::invalid_argument("beta must be in [0, 1)");
  };
  return cls;
}

Registry registry_with_sign_momentum() {
  Registry registry;
  registry.register_optimizer(kSignMomentum, sign_momentum());
  return registry;
}

torch::Tensor batch_x(int step) {
  return torch::sin(torch::arange(32, torch::kFloat32).reshape({8, 4}) + step);
}
torch::Tensor batch_y(int step) {
  return torch::cos(torch::arange(24, torch::kFloat32).reshape({8, 3}) * step);
}

void train(Container& container, int from, int to) {
  for (int step = from; step < to; ++step) {
    container.zero_grad();
    torch::Tensor loss =
        torch::mse_loss(container.forward(batch_x(step), /*train=*/true), batch_y(step));
    loss.backward();
    container.step();
    container.scheduler_step();
  }
}

Container fresh(const Registry& registry) {
  Container container(registry);
  torch::manual_seed(7);
  container.initialize(kMlp, kMlpKwargs, kSignMomentum, kKwargs, kStepLr, kStepLrKwargs);
  return container;
}

void expect_same_member(const std::string& a, const std::string& b, Member member) {
  Checkpoint ca = Checkpoint::open(a);
  Checkpoint cb = Checkpoint::open(b);
  std::vector<std::string> names = ca.tensor_names(member);
  ASSERT_EQ(names, cb.tensor_names(member));
  ASSERT_FALSE(names.empty());
  for (const std::string& name : names) {
    EXPECT_TRUE(torch::equal(ca.tensor(member, name), cb.tensor(member, name))) << name;
  }
}

TEST(OptimRegistry, ResumesBitForBit) {
  TempDir dir;
  Registry registry = registry_with_sign_momentum();
  EXPECT_TRUE(registry.contains_optimizer(kSignMomentum));

  Container straight = fresh(registry);
  train(straight, 0, 24);
  const std::string straight_path = straight.save(dir.str(), "straight");

  Container first = fresh(registry);
  train(first, 0, 12);
  const std::string half = first.save(dir.str(), "half");

  const std::string meta = Checkpoint::open(half).metadata_json();
  EXPECT_NE(meta.find(std::string("\"class\":\"") + kSignMomentum + "\""), std::string::npos)
      << meta;
  EXPECT_NE(meta.find(R"("optim_kwargs":{"lr":0.05,"beta":0.8})"), std::string::npos) << meta;
  EXPECT_EQ(Checkpoint::open(half).tensor(Member::Optimizer, "state.0.step").item<float>(), 12.0f);

  Container::Loaded loaded = Container::load(half, registry);
  train(loaded.container, 12, 24);
  const std::string resumed_path = loaded.container.save(dir.str(), "resumed");
  expect_same_member(straight_path, resumed_path, Member::Model);
  expect_same_member(straight_path, resumed_path, Member::Optimizer);
  EXPECT_EQ(straight.lr(), loaded.container.lr());
  EXPECT_EQ(straight.lr(), 0.05 / 16);

  auto ours = straight.named_parameters();
  auto theirs = loaded.container.named_parameters();
  ASSERT_EQ(ours.size(), theirs.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_EQ(ours[i].first, theirs[i].first);
    EXPECT_TRUE(torch::equal(ours[i].second, theirs[i].second)) << ours[i].first;
  }

  // A registry without the class refuses the file, listing its own.
  Registry other;
  OptimizerClass plain = sign_momentum();
  plain.check_group = nullptr;
  other.register_optimizer("my_project.Other", std::move(plain));
  try {
    Container::load(half, other);
    FAIL() << "an unregistered optimizer loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_UNKNOWN_NAME);
    EXPECT_NE(std::string(e.what()).find("my_project.Other"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(kSignMomentum), std::string::npos) << e.what();
  }
}

TEST(OptimRegistry, KwargsAndErrors) {
  Registry registry = registry_with_sign_momentum();
  Container c(registry);
  auto fails = [&](const std::string& kwargs, pts_error_code_t code, const std::string& needle) {
    try {
      c.initialize(kMlp, kMlpKwargs, kSignMomentum, kwargs);
      ADD_FAILURE() << kwargs << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  fails(R"({"momentum": 0.9})", PTS_ERROR_INVALID_KWARGS, "momentum");
  fails(R"({"beta": "high"})", PTS_ERROR_INVALID_KWARGS, "\"beta\"");
  fails(R"({"beta": 1.5})", PTS_ERROR_INVALID_KWARGS, "beta must be in [0, 1)");
  try {
    registry.register_optimizer("torch.optim.SignMomentum", sign_momentum());
    ADD_FAILURE() << "a torch.optim name was registered";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_DUPLICATE_NAME);
  }

  // An exception from the step reaches the caller: Error with its code,
  // anything else as PTS_ERROR_CALLBACK with its message.
  OptimizerClass throwing = sign_momentum();
  throwing.step = [](const OptimizerGroup&, at::Tensor&, const at::Tensor&, OptimizerState&) {
    throw std::runtime_error("the step was asked to fail");
  };
  registry.register_optimizer("my_project.Throwing", std::move(throwing));
  OptimizerClass erring = sign_momentum();
  erring.step = [](const OptimizerGroup&, at::Tensor&, const at::Tensor&, OptimizerState& state) {
    state.set("exp_avg", torch::zeros({}));  // not one of its keys
  };
  registry.register_optimizer("my_project.Erring", std::move(erring));
  for (const auto& [name, code, needle] :
       {std::tuple{"my_project.Throwing", PTS_ERROR_CALLBACK, "the step was asked to fail"},
        std::tuple{"my_project.Erring", PTS_ERROR_CALLBACK,
                   "\"exp_avg\" is not one of its state keys"}}) {
    Container failing(registry);
    failing.initialize(kMlp, kMlpKwargs, name);
    torch::mse_loss(failing.forward(batch_x(0), true), batch_y(0)).backward();
    try {
      failing.step();
      ADD_FAILURE() << name << ": the step succeeded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

TEST(OptimRegistry, TheClassIsDestroyedOnce) {
  auto destroyed = std::make_shared<std::atomic<int>>(0);
  {
    Registry registry;
    registry.register_optimizer(kSignMomentum, sign_momentum(destroyed));
    Container c = fresh(registry);
    train(c, 0, 2);
    EXPECT_EQ(destroyed->load(), 0);
  }
  EXPECT_EQ(destroyed->load(), 1);
}

}  // namespace
