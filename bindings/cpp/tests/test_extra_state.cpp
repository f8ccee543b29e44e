// Tests of the extra training state of pytorch_saver.hpp (docs/FORMAT.md
// 11.3): a C++ Stateful object saved with a checkpoint and restored into a
// fresh container and object; the counters; a class mismatch and an
// object's own refusal as typed errors; and exact resume of libtorch's RNG
// (save with track_rng, draw, restore, draw again: the same numbers).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <pytorch_saver.hpp>
#include <stdexcept>
#include <string>

#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using pytorch_saver::Container;
using pytorch_saver::Error;
using pytorch_saver::State;
using pytorch_saver::StateView;

constexpr const char* kMlp = "pytorch_saver.models.MLP";
constexpr const char* kMlpKwargs = R"({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})";

// A C++ object with state: a step count and a running average tensor.
struct Ema : pytorch_saver::Stateful {
  explicit Ema(std::string cls = "tests.cpp.Ema") : cls(std::move(cls)) {}

  std::string class_name() const override { return cls; }

  State state() const override {
    State s;
    s.value_json = R"({"count": )" + std::to_string(count) + R"(, "average": )" +
                   s.add_tensor("average", average) + "}";
    return s;
  }

  void check_state(const StateView& s) const override {
    if (s.i64_at("count") < 0) {
      throw Error(PTS_ERROR_INVALID_STATE, "count is negative");
    }
    torch::Tensor t = s.tensor_at("average");
    if (t.scalar_type() != torch::kFloat32 || t.sizes() != average.sizes()) {
      throw Error(PTS_ERROR_INVALID_STATE, "average has the wrong dtype or shape");
    }
  }

  void load_state(const StateView& s) override {
    count = s.i64_at("count");
    average.copy_(s.tensor_at("average"));
  }

  std::string cls;
  int64_t count = 0;
  torch::Tensor average = torch::zeros({2, 3});
};

Container mlp_container() {
  Container c;
  c.initialize(kMlp, kMlpKwargs);
  return c;
}

TEST(ExtraState, StatefulObjectAndCountersRoundTrip) {
  TempDir tmp;
  Container c = mlp_container();
  auto ema = std::make_shared<Ema>();
  ema->count = 42;
  ema->average = torch::arange(6, torch::kFloat32).reshape({2, 3});
  c.track("ema", ema);
  c.track_counters("counters", {{"step", 10}, {"epoch", 1}});
  EXPECT_EQ(c.increment_counter("counters", "step"), 11);
  c.set_counter("counters", "epoch", 2);
  const std::string path = c.save(tmp.str(), "extra");

  // The file holds the entry's tensor under <entry>.<name>.
  pytorch_saver::Checkpoint ckpt = pytorch_saver::Checkpoint::open(path);
  EXPECT_TRUE(torch::equal(ckpt.tensor(pytorch_saver::Member::Extra, "ema.average"), ema->average));

  Container fresh;
  Ema restored;
  fresh.track("ema", restored);
  fresh.track_counters("counters");
  fresh.load_into(path);
  EXPECT_EQ(restored.count, 42);
  EXPECT_TRUE(torch::equal(restored.average, ema->average));
  EXPECT_EQ(fresh.counter("counters", "step"), 11);
  EXPECT_EQ(fresh.counter("counters", "epoch"), 2);

  // Restore into the same objects, in place.
  restored.count = 0;
  restored.average.zero_();
  fresh.set_counter("counters", "step", 0);
  fresh.restore(path);
  EXPECT_EQ(restored.count, 42);
  EXPECT_TRUE(torch::equal(restored.average, ema->average));
  EXPECT_EQ(fresh.counter("counters", "step"), 11);
  fresh.untrack("ema");  // `restored` dies before the container
}

TEST(ExtraState, MismatchesAndRefusalsAreTypedErrors) {
  TempDir tmp;
  Container c = mlp_container();
  auto ema = std::make_shared<Ema>();
  ema->count = 3;
  c.track("ema", ema);
  c.track_counters("counters", {{"step", 5}});
  const std::string path = c.save(tmp.str(), "extra");

  // Another class under the same name: nothing is loaded.
  {
    Container other;
    auto wrong = std::make_shared<Ema>("tests.cpp.Other");
    other.track("ema", wrong);
    other.track_counters("counters", {{"step", 99}});
    try {
      other.load_into(path);
      FAIL() << "a class mismatch loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), PTS_ERROR_STATE_MISMATCH);
      EXPECT_EQ(e.kind(), "StateMismatch");
      EXPECT_NE(std::string(e.what()).find("__pytorch_saver__.extra.ema"), std::string::npos);
      EXPECT_NE(std::string(e.what()).find("tests.cpp.Other"), std::string::npos) << e.what();
    }
    EXPECT_EQ(wrong->count, 0);
    EXPECT_EQ(other.counter("counters", "step"), 99);
  }

  // The object refuses the state (shape): its code, with the entry's path.
  {
    Container other;
    auto narrow = std::make_shared<Ema>();
    narrow->average = torch::zeros({3});
    other.track("ema", narrow);
    try {
      other.load_into(path);
      FAIL() << "a state the object refuses loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), PTS_ERROR_INVALID_STATE);
      EXPECT_NE(std::string(e.what()).find("__pytorch_saver__.extra.ema.state"), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("wrong dtype or shape"), std::string::npos);
    }
  }

  // A name the file lacks; a name tracked twice; the wrong kind of object.
  Container other;
  other.track_rng("rng");
  EXPECT_THROW(
      {
        try {
          other.load_into(path);
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), PTS_ERROR_STATE_MISMATCH);
          EXPECT_NE(std::string(e.what()).find("no extra-state entry"), std::string::npos);
          throw;
        }
      },
      Error);
  EXPECT_THROW(other.track_rng("rng"), Error);
  EXPECT_THROW(other.counter("rng", "step"), Error);
  EXPECT_THROW(other.untrack("nothing"), Error);

  // An exception from state() fails the save, naming the entry; no file.
  struct Broken : Ema {
    State state() const override { throw std::runtime_error("not ready"); }
  };
  TempDir empty;
  Container failing = mlp_container();
  failing.track("broken", std::make_shared<Broken>());
  try {
    failing.save(empty.str(), "broken");
    FAIL() << "a failing state() saved";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_CALLBACK);
    EXPECT_NE(std::string(e.what()).find("get_state of the object tracked as \"broken\""),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("not ready"), std::string::npos);
  }
  EXPECT_EQ(empty.file_count(), 0u);
}

TEST(ExtraState, RngResumesExactly) {
  TempDir tmp;
  Container c = mlp_container();
  c.track_rng("rng");
  torch::manual_seed(1234);
  (void)torch::randn({7});  // some draws before the checkpoint
  const std::string path = c.save(tmp.str(), "rng");
  const torch::Tensor after_save = torch::randn({16});
  const torch::Tensor dropout_mask = torch::rand({4, 4});

  (void)torch::randn({100});  // the run goes on, or another starts
  Container resumed;
  resumed.track_rng("rng");
  resumed.load_into(path);
  EXPECT_TRUE(torch::equal(torch::randn({16}), after_save));
  EXPECT_TRUE(torch::equal(torch::rand({4, 4}), dropout_mask));

  (void)torch::randn({3});
  resumed.restore(path);
  EXPECT_TRUE(torch::equal(torch::randn({16}), after_save));
}

}  // namespace
