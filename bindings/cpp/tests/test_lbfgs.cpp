// LBFGS through the C++ binding: Container::step(closure) with a lambda
// that runs the container's forward and backward. The loss falls; a run
// saved after 5 steps, loaded and continued equals 10 uninterrupted steps
// bit for bit; an exception the lambda throws propagates as itself.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <pytorch_saver.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using pytorch_saver::Container;
using pytorch_saver::Error;

// y = x w + 0.25 with w = (1.5, -2, 0.5), x a fixed grid.
torch::Tensor inputs() { return torch::linspace(-1.0, 1.0, 48).reshape({16, 3}); }
torch::Tensor targets() {
  return torch::matmul(inputs(), torch::tensor({1.5f, -2.0f, 0.5f}).reshape({3, 1})) + 0.25;
}

// Steps of the closure tests/lbfgs.rs runs: gradients reset, MSE, backward.
std::vector<double> train(Container& c, int steps) {
  const torch::Tensor x = inputs(), y = targets();
  std::vector<torch::Tensor> params;
  for (auto& [name, p] : c.named_parameters()) params.push_back(p);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    losses.push_back(c.step([&] {
      for (auto& p : params) p.mutable_grad().reset();
      torch::Tensor loss = (c.forward(x, true) - y).square().mean();
      loss.backward();
      return loss;
    }));
  }
  return losses;
}

Container fresh() {
  Container c;
  c.initialize("torch.nn.Linear", R"({"in_features": 3, "out_features": 1})", "torch.optim.LBFGS",
               R"({"line_search_fn": "strong_wolfe", "history_size": 3, "max_iter": 5})");
  return c;
}

struct Boom {
  int code;
};

TEST(Lbfgs, ClosureTrainsAndResumesBitForBit) {
  TempDir tmp;
  Container straight = fresh();
  std::string init = straight.save(tmp.str(), "init");
  std::vector<double> losses = train(straight, 10);
  EXPECT_LT(losses[9], losses[0] * 1e-3);

  auto first = Container::load(init).container;
  std::vector<double> resumed_losses = train(first, 5);
  std::string half = first.save(tmp.str(), "half");
  auto resumed = Container::load(half).container;
  for (double l : train(resumed, 5)) resumed_losses.push_back(l);
  EXPECT_EQ(losses, resumed_losses);
  auto a = straight.named_parameters(), b = resumed.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second));
}

TEST(Lbfgs, StepNeedsAClosureAndExceptionsPropagateAsThemselves) {
  Container c = fresh();
  try {
    c.step();
    FAIL() << "LBFGS stepped without a closure";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_USAGE);
    EXPECT_NE(std::string(e.what()).find("closure"), std::string::npos);
  }
  EXPECT_THROW(c.step([]() -> double { throw Boom{7}; }), Boom);
  try {
    c.step([]() -> double { throw std::out_of_range("no more batches"); });
    FAIL() << "no exception";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "no more batches");
  }
  // A closure returning a double; the optimizer is back after a throw.
  double loss = c.step([&] {
    torch::Tensor l = c.forward(inputs(), true).square().mean();
    l.backward();
    return l.item<double>();
  });
  EXPECT_GT(loss, 0.0);
}

}  // namespace
