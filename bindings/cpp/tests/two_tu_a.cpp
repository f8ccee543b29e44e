// pytorch_saver.hpp in the first of two translation units of one binary
// (two_tu_b.cpp is the second): a definition that is not inline would
// fail to link. Each unit instantiates the header's templates too.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <pytorch_saver.hpp>
#include <string>

namespace {

// y = x * scale, with one parameter.
struct ScaleA : torch::nn::Module {
  explicit ScaleA(int64_t n) { scale = register_parameter("scale", torch::full({n}, 2.0)); }
  torch::Tensor forward(const torch::Tensor& x) { return x * scale; }
  torch::Tensor scale;
};

}  // namespace

TEST(TwoTranslationUnitsA, RegisteredModuleRunsForward) {
  pytorch_saver::Registry registry;
  EXPECT_TRUE(registry.contains("pytorch_saver.models.MLP"));
  registry.register_module<ScaleA>("tests.cpp.ScaleA", [](const pytorch_saver::Kwargs& kw, bool) {
    return std::make_shared<ScaleA>(kw.get<int64_t>("n"));
  });
  pytorch_saver::Container container(registry);
  container.initialize("tests.cpp.ScaleA", R"({"n": 3})");
  torch::Tensor y = container.forward(torch::ones({2, 3}));
  EXPECT_TRUE(torch::equal(y, torch::full({2, 3}, 2.0)));
  EXPECT_EQ(container.module<ScaleA>()->scale.data_ptr(),
            container.state_tensor("scale").data_ptr());
}
