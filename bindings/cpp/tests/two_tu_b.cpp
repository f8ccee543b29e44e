// pytorch_saver.hpp in the second of two translation units of one binary
// (see two_tu_a.cpp).
#include <gtest/gtest.h>

#include <memory>
#include <pytorch_saver.hpp>

namespace {

// y = x + shift, with one buffer and no parameter.
struct ShiftB : torch::nn::Module {
  ShiftB() { shift = register_buffer("shift", torch::ones({1})); }
  torch::Tensor forward(const torch::Tensor& x) { return x + shift; }
  torch::Tensor shift;
};

}  // namespace

TEST(TwoTranslationUnitsB, ErrorsAndVersion) {
  EXPECT_EQ(pytorch_saver::version(), PTS_VERSION);
  pytorch_saver::Registry registry;
  // M deduced from the factory's result type.
  registry.register_module("tests.cpp.ShiftB", [](const pytorch_saver::Kwargs&, bool) {
    return std::make_shared<ShiftB>();
  });
  pytorch_saver::Container container(registry);
  container.initialize("tests.cpp.ShiftB");
  EXPECT_TRUE(torch::equal(container.forward(torch::zeros({2})), torch::ones({2})));
  try {
    pytorch_saver::Container::load("/nonexistent/dir/file.zip", registry);
    FAIL() << "load of a missing file did not throw";
  } catch (const pytorch_saver::Error& e) {
    EXPECT_EQ(e.code(), static_cast<uint32_t>(PTS_ERROR_IO)) << e.what();
  }
}
