// Tests of CheckpointManager in pytorch_saver.hpp (docs/FORMAT.md section
// 12): retention by keep_last, keep_best and pins, list and latest,
// background saves, restoring bit for bit, falling back past a truncated
// newest file, and the series lock as an Error with PTS_ERROR_LOCKED.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <pytorch_saver.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using pytorch_saver::CheckpointManager;
using pytorch_saver::Container;
using pytorch_saver::Error;
using pytorch_saver::Policy;

// A freshly (randomly) initialized MLP with SGD.
Container new_mlp() {
  Container c;
  c.initialize("pytorch_saver.models.MLP", R"({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})",
               "torch.optim.SGD", R"({"lr": 0.1})");
  return c;
}

bool same_parameters(const Container& a, const Container& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  if (pa.size() != pb.size() || pa.empty()) return false;
  for (size_t i = 0; i < pa.size(); ++i) {
    if (pa[i].first != pb[i].first || !torch::equal(pa[i].second, pb[i].second)) return false;
  }
  return true;
}

int checkpoint_files(const std::string& dir, const std::string& prefix) {
  int n = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix + "_checkpoint_", 0) == 0 && entry.path().extension() == ".zip") ++n;
  }
  return n;
}

// The top-level objects of a JSON array (paths hold no braces).
std::vector<std::string> json_objects(const std::string& text) {
  std::vector<std::string> out;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '{' && depth++ == 0) start = i;
    if (text[i] == '}' && --depth == 0) out.push_back(text.substr(start, i + 1 - start));
  }
  return out;
}

bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

std::string loss(double value) { return "{\"loss\": " + std::to_string(value) + "}"; }

TEST(CheckpointManager, KeepLastListLatestAndPins) {
  TempDir dir;
  Policy policy;
  policy.prefix = "run";
  policy.keep_last = 2;
  CheckpointManager m(dir.str(), policy);
  Container c = new_mlp();
  std::vector<std::string> paths;
  for (uint64_t step = 1; step <= 4; ++step) paths.push_back(m.save(c, step, loss(1.0 / step)));
  EXPECT_EQ(checkpoint_files(dir.str(), "run"), 2);
  EXPECT_TRUE(fs::exists(paths[2]) && fs::exists(paths[3]));

  const std::string latest = m.latest();
  EXPECT_TRUE(contains(latest, "\"step\":4") && contains(latest, paths[3])) << latest;
  const auto list = json_objects(m.list());
  ASSERT_EQ(list.size(), 2u);
  EXPECT_TRUE(contains(list[0], "\"step\":3") && contains(list[0], paths[2])) << list[0];
  EXPECT_TRUE(contains(list[0], "\"metrics\":{\"loss\":0.333333")) << list[0];
  EXPECT_TRUE(contains(list[0], "\"kept_by\":[\"last\"]")) << list[0];
  EXPECT_TRUE(contains(list[1], "\"kept_by\":[\"latest\",\"last\"]")) << list[1];

  m.pin(paths[2]);
  const std::string fifth = m.save(c, 5, loss(0.2));
  EXPECT_EQ(checkpoint_files(dir.str(), "run"), 3);
  EXPECT_TRUE(contains(json_objects(m.list())[0], "\"kept_by\":[\"pinned\"]"));
  m.unpin(paths[2]);
  const std::string sixth = m.save(c, 6, loss(0.1));
  EXPECT_EQ(checkpoint_files(dir.str(), "run"), 2);
  EXPECT_FALSE(fs::exists(paths[2]));
  EXPECT_TRUE(fs::exists(fifth) && fs::exists(sixth));
}

TEST(CheckpointManager, KeepBestKeepsTheBest) {
  TempDir dir;
  Policy policy;
  policy.prefix = "run";
  policy.keep_last = 1;
  policy.keep_best = 1;
  policy.metric = "loss";
  CheckpointManager m(dir.str(), policy);
  Container c = new_mlp();
  const double losses[] = {0.5, 0.1, 0.7, 0.9};
  std::vector<std::string> paths;
  for (int i = 0; i < 4; ++i) paths.push_back(m.save(c, 10 * (i + 1), loss(losses[i])));
  EXPECT_EQ(checkpoint_files(dir.str(), "run"), 2);
  const auto list = json_objects(m.list());
  ASSERT_EQ(list.size(), 2u);
  EXPECT_TRUE(contains(list[0], "\"step\":20") && contains(list[0], paths[1])) << list[0];
  EXPECT_TRUE(contains(list[0], "\"kept_by\":[\"best\"]")) << list[0];
  EXPECT_TRUE(contains(list[1], "\"step\":40") && contains(list[1], paths[3])) << list[1];
  try {
    m.save(c, 50, R"({"accuracy": 0.5})");
    FAIL() << "a save without the metric was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_INVALID_METADATA);
    EXPECT_TRUE(contains(e.what(), "loss")) << e.what();
  }
  EXPECT_EQ(checkpoint_files(dir.str(), "run"), 2);
}

TEST(CheckpointManager, SaveAsyncThenWait) {
  TempDir dir;
  Policy policy;
  policy.prefix = "bg";
  policy.keep_last = 2;
  CheckpointManager m(dir.str(), policy);
  Container a = new_mlp(), b = new_mlp();
  ASSERT_FALSE(same_parameters(a, b));
  EXPECT_EQ(m.wait(), "");
  m.save_async(a, 1, loss(1));
  m.save_async(b, 2, loss(0.5));
  m.save_async(a, 3, loss(0.25));
  const std::string path = m.wait();
  EXPECT_TRUE(fs::exists(path)) << path;
  EXPECT_EQ(m.wait(), "");
  EXPECT_EQ(checkpoint_files(dir.str(), "bg"), 2);
  EXPECT_TRUE(contains(m.latest(), "\"step\":3") && contains(m.latest(), path));
  auto loaded = m.load_latest();
  ASSERT_TRUE(loaded.resumed.found);
  EXPECT_TRUE(same_parameters(loaded.container, a));
  EXPECT_EQ(loaded.resumed.skipped_json, "[]");
  m.save_async(b, 4, loss(0.125));
  m.close();  // waits
  EXPECT_EQ(checkpoint_files(dir.str(), "bg"), 2);
  EXPECT_THROW(m.list(), Error);
  m.close();  // a no-op
}

TEST(CheckpointManager, RestoreLatestBitForBit) {
  TempDir dir;
  CheckpointManager m(dir.str());
  Container saved = new_mlp(), fresh = new_mlp();
  auto nothing = m.restore_latest(fresh);
  EXPECT_FALSE(nothing.found);
  EXPECT_EQ(nothing.skipped_json, "[]");
  EXPECT_EQ(m.latest(), "null");
  EXPECT_EQ(m.load_latest().container.capi(), nullptr);

  m.save(saved, 100, loss(0.75));
  ASSERT_FALSE(same_parameters(saved, fresh));
  auto resumed = m.restore_latest(fresh);
  EXPECT_TRUE(resumed.found);
  EXPECT_TRUE(same_parameters(saved, fresh));
  EXPECT_TRUE(contains(resumed.metadata_json, "\"loss\":0.75")) << resumed.metadata_json;
  EXPECT_EQ(resumed.skipped_json, "[]");
}

TEST(CheckpointManager, FallsBackPastATruncatedNewest) {
  TempDir dir;
  CheckpointManager m(dir.str());
  Container good = new_mlp(), damaged = new_mlp();
  const std::string good_path = m.save(good, 1, loss(0.5));
  const std::string bad_path = m.save(damaged, 2, loss(0.4));
  fs::resize_file(bad_path, fs::file_size(bad_path) / 2);
  EXPECT_EQ(json_objects(m.list()).size(), 1u);

  auto loaded = m.load_latest();
  ASSERT_TRUE(loaded.resumed.found);
  EXPECT_TRUE(same_parameters(loaded.container, good));
  auto skipped = json_objects(loaded.resumed.skipped_json);
  ASSERT_EQ(skipped.size(), 1u) << loaded.resumed.skipped_json;
  EXPECT_TRUE(contains(skipped[0], bad_path) && contains(skipped[0], "\"kind\":\"")) << skipped[0];

  Container into = new_mlp();
  auto resumed = m.restore_latest(into);
  EXPECT_TRUE(same_parameters(into, good));
  EXPECT_TRUE(contains(resumed.skipped_json, bad_path)) << resumed.skipped_json;

  fs::resize_file(good_path, 10);
  try {
    m.restore_latest(into);
    FAIL() << "every file damaged, yet restore_latest succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_FORMAT);
  }
  EXPECT_TRUE(same_parameters(into, good));
}

TEST(CheckpointManager, ASecondManagerOfTheSeriesIsLocked) {
  TempDir dir;
  Policy policy;
  policy.prefix = "run";
  auto first = std::make_unique<CheckpointManager>(dir.str(), policy);
  try {
    CheckpointManager second(dir.str(), policy);
    FAIL() << "a second manager of the series opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_LOCKED);
    EXPECT_EQ(e.kind(), "Locked");
    EXPECT_TRUE(contains(e.what(), "run")) << e.what();
  }
  Policy other = policy;
  other.prefix = "other";
  CheckpointManager another_series(dir.str(), other);
  first.reset();  // the destructor releases the lock
  CheckpointManager second(dir.str(), policy);
  second.close();
  CheckpointManager third(dir.str(), policy);
}

TEST(CheckpointManager, PolicyErrors) {
  TempDir dir;
  Policy policy;
  policy.keep_best = 1;
  EXPECT_THROW(CheckpointManager(dir.str(), policy), Error);
  Policy mode;
  mode.mode = "lowest";
  try {
    CheckpointManager m(dir.str(), mode);
    FAIL() << "mode \"lowest\" accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(e.what(), "mode")) << e.what();
  }
}

}  // namespace
