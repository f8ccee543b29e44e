// Tests of the progress callbacks of pytorch_saver.hpp: a real save, load
// and open of a 16 MiB checkpoint report (0, T) first, growing counts and
// (T, T) last, T being the file's size for a save; a failing open never
// reports its end; an exception thrown by the callback is rethrown once
// the call returned.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <pytorch_saver.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using pytorch_saver::Checkpoint;
using pytorch_saver::CheckpointManager;
using pytorch_saver::Container;
using pytorch_saver::Error;
using pytorch_saver::LoadOptions;
using pytorch_saver::Policy;
using pytorch_saver::ProgressFn;

// What a callback heard; the library serializes the calls.
struct Record {
  std::mutex mutex;
  std::vector<std::pair<uint64_t, uint64_t>> calls;

  ProgressFn fn() {
    return [this](uint64_t done, uint64_t total) {
      std::lock_guard<std::mutex> lock(mutex);
      calls.emplace_back(done, total);
    };
  }

  std::vector<std::pair<uint64_t, uint64_t>> take() {
    std::lock_guard<std::mutex> lock(mutex);
    return std::exchange(calls, {});
  }
};

// The contract of a successful operation; returns its total.
uint64_t expect_complete(const std::vector<std::pair<uint64_t, uint64_t>>& calls) {
  EXPECT_GE(calls.size(), 2u);
  if (calls.size() < 2) return 0;
  const uint64_t total = calls.front().second;
  EXPECT_GT(total, 0u);
  EXPECT_EQ(calls.front().first, 0u);
  EXPECT_EQ(calls.back(), std::make_pair(total, total));
  for (size_t i = 1; i < calls.size(); i++) {
    EXPECT_EQ(calls[i].second, total);
    EXPECT_GT(calls[i].first, calls[i - 1].first);
  }
  return total;
}

// A 16 MiB model: one 2048 x 2048 layer.
Container big_mlp() {
  Container c;
  c.initialize("pytorch_saver.models.MLP",
               R"({"in_dim": 2048, "hidden_dim": 2048, "n_classes": 3, "n_layers": 1})",
               "torch.optim.SGD", R"({"lr": 0.1})");
  return c;
}

TEST(Progress, SaveReportsTheFileSize) {
  TempDir dir;
  Record record;
  Container c = big_mlp();
  c.set_save_progress(record.fn());
  const std::string path = c.save(dir.str(), "p");
  const auto calls = record.take();
  EXPECT_EQ(expect_complete(calls), fs::file_size(path));
  EXPECT_GT(calls.size(), 4u);
  EXPECT_GT(fs::file_size(path), 16u << 20);

  const std::string inference = c.save_inference(dir.str(), "p");
  EXPECT_EQ(expect_complete(record.take()), fs::file_size(inference));

  Policy policy;
  policy.prefix = "run";
  CheckpointManager manager(dir.str() + "/series", policy);
  const std::string managed = manager.save(c, 1);
  EXPECT_EQ(expect_complete(record.take()), fs::file_size(managed));
  manager.close();

  c.set_save_progress(nullptr);
  c.save(dir.str(), "p");
  EXPECT_TRUE(record.take().empty());
}

TEST(Progress, LoadsAndOpensReportTheBytesTheyProcess) {
  TempDir dir;
  const std::string path = big_mlp().save(dir.str(), "p");
  Record record;
  LoadOptions options;
  options.progress = record.fn();

  Checkpoint::open(path, options);
  const uint64_t checked = expect_complete(record.take());
  EXPECT_GT(checked, 16u << 20);
  EXPECT_LT(checked, fs::file_size(path));

  Container::load(path, options);
  EXPECT_EQ(expect_complete(record.take()), checked);

  options.copy = true;
  auto loaded = Container::load(path, options);
  EXPECT_GT(expect_complete(record.take()), checked + (16u << 20));

  loaded.container.restore(path, options);
  EXPECT_GT(expect_complete(record.take()), checked + (16u << 20));
}

TEST(Progress, ACorruptedFileNeverReportsItsEnd) {
  TempDir dir;
  const std::string path = big_mlp().save(dir.str(), "p");
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  bytes[bytes.size() / 2] ^= 0x40;
  const std::string corrupted = dir.str() + "/corrupted.zip";
  std::ofstream(corrupted, std::ios::binary) << bytes;

  Record record;
  LoadOptions options;
  options.progress = record.fn();
  try {
    Checkpoint::open(corrupted, options);
    ADD_FAILURE() << "a corrupted file opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_FORMAT);
  }
  const auto calls = record.take();
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.front().first, 0u);
  for (const auto& [done, total] : calls) EXPECT_LT(done, total);
}

TEST(Progress, AnExceptionOfTheCallbackIsRethrownAfterTheCall) {
  TempDir dir;
  Container c = big_mlp();
  int heard = 0;
  c.set_save_progress([&heard](uint64_t, uint64_t) {
    heard++;
    throw std::runtime_error("the display is gone");
  });
  EXPECT_THROW(
      {
        try {
          c.save(dir.str(), "p");
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "the display is gone");
          throw;
        }
      },
      std::runtime_error);
  EXPECT_EQ(heard, 1);  // not called again once it threw
  // The file was written all the same: the library never saw the exception.
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir.str())) files += entry.is_regular_file();
  EXPECT_EQ(files, 1u);

  LoadOptions options;
  options.progress = [](uint64_t, uint64_t) { throw std::runtime_error("no screen"); };
  c.set_save_progress(nullptr);
  const std::string path = c.save(dir.str(), "q");
  EXPECT_THROW(Checkpoint::open(path, options), std::runtime_error);
}

}  // namespace
