// Checkpoints at object-store URLs through pytorch_saver.hpp, against a
// real S3 API server: moto's, on a loopback port, started for the test
// process by a GoogleTest environment through tests/s3/moto_server.py and
// stopped when the process ends. A container saved to s3:// loads back
// from the URL save returned with the same outputs bit for bit; a failing
// store is an Error with PTS_ERROR_STORAGE and kind "Storage" naming the URL.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <pytorch_saver.hpp>
#include <stdexcept>
#include <string>

namespace {

using pytorch_saver::Checkpoint;
using pytorch_saver::Container;
using pytorch_saver::Error;
using pytorch_saver::Model;

constexpr const char* kBucket = "pts-tests";

// moto_server.py, running until its stdin closes. popen reads its stdout;
// its stdin is a pipe of our own, handed to the shell as a numbered fd,
// our write end close-on-exec so that closing it is the server's EOF.
class MotoServer : public testing::Environment {
 public:
  void SetUp() override {
    const std::string root = PTS_REPO_ROOT;
    int fds[2];
    if (pipe(fds) != 0 || fcntl(fds[1], F_SETFD, FD_CLOEXEC) != 0) {
      throw std::runtime_error("pipe for the server's stdin");
    }
    const std::string command = "exec '" + root + "/.venv/bin/python' '" + root +
                                "/tests/s3/moto_server.py' --bucket " + kBucket + " <&" +
                                std::to_string(fds[0]) + " " + std::to_string(fds[0]) + "<&-";
    out_ = popen(command.c_str(), "r");
    close(fds[0]);
    stdin_fd_ = fds[1];
    char line[512] = {};
    if (out_ == nullptr || std::fgets(line, sizeof line, out_) == nullptr) {
      throw std::runtime_error("moto_server.py did not start: " + command);
    }
    // {"endpoint": "http://127.0.0.1:PORT"}
    const std::string text = line;
    const size_t start = text.find("http://");
    const size_t end = text.find('"', start);
    if (start == std::string::npos || end == std::string::npos) {
      throw std::runtime_error("moto_server.py printed " + text);
    }
    endpoint_ = text.substr(start, end - start);
    // moto_server.py's client_env.
    setenv("AWS_ENDPOINT_URL", endpoint_.c_str(), 1);
    setenv("AWS_ALLOW_HTTP", "true", 1);
    setenv("AWS_ACCESS_KEY_ID", "testing", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "testing", 1);
    setenv("AWS_REGION", "us-east-1", 1);
    setenv("AWS_DEFAULT_REGION", "us-east-1", 1);
  }

  void TearDown() override {
    if (stdin_fd_ >= 0) close(stdin_fd_);
    if (out_ != nullptr) {
      EXPECT_EQ(pclose(out_), 0) << "moto_server.py exited with an error";
    }
    stdin_fd_ = -1;
    out_ = nullptr;
  }

  const std::string& endpoint() const { return endpoint_; }

 private:
  FILE* out_ = nullptr;
  int stdin_fd_ = -1;
  std::string endpoint_;
};

MotoServer* const moto = static_cast<MotoServer*>(
    testing::AddGlobalTestEnvironment(new MotoServer));  // owned by GoogleTest

// A loopback endpoint nothing listens on: a port bound, then released.
std::string closed_endpoint() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof addr;
  const bool ok = s >= 0 && bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  getsockname(s, reinterpret_cast<sockaddr*>(&addr), &size) == 0;
  if (s >= 0) close(s);
  if (!ok) throw std::runtime_error("no free loopback port");
  return "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
}

// Points clients at a dead endpoint for the scope, then back at moto.
class DeadEndpoint {
 public:
  DeadEndpoint() { setenv("AWS_ENDPOINT_URL", closed_endpoint().c_str(), 1); }
  ~DeadEndpoint() { setenv("AWS_ENDPOINT_URL", moto->endpoint().c_str(), 1); }
};

Container new_mlp() {
  Container c;
  c.initialize("pytorch_saver.models.MLP", R"({"in_dim": 4, "hidden_dim": 8, "n_classes": 3})",
               "torch.optim.Adam", R"({"lr": 0.01})");
  return c;
}

torch::Tensor fixed_input() {
  return torch::tensor({0.5f, -1.0f, 2.0f, 0.25f, -0.75f, 1.5f, 0.0f, 3.0f}).reshape({2, 4});
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  torch::Tensor x = a.contiguous(), y = b.contiguous();
  return x.scalar_type() == y.scalar_type() && x.sizes() == y.sizes() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

// The call throws pytorch_saver::Error with PTS_ERROR_STORAGE, kind
// "Storage" and a message naming `url`.
template <class F>
void expect_storage_error(F&& call, const std::string& url) {
  try {
    call();
    ADD_FAILURE() << "no error for " << url;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), PTS_ERROR_STORAGE) << e.what();
    EXPECT_EQ(e.kind(), "Storage") << e.what();
    EXPECT_NE(std::string(e.what()).find(url), std::string::npos) << e.what();
  }
}

TEST(S3, ContainerRoundTripsThroughS3BitForBit) {
  Container c = new_mlp();
  const std::string url = c.save(std::string("s3://") + kBucket + "/cpp", "run", R"({"epoch": 3})");
  const std::string prefix = std::string("s3://") + kBucket + "/cpp/run_checkpoint_";
  EXPECT_EQ(url.rfind(prefix, 0), 0u) << url;
  EXPECT_EQ(url.substr(url.size() - 4), ".zip") << url;

  Checkpoint ckpt = Checkpoint::open(url);
  EXPECT_NE(ckpt.metadata_json().find("\"epoch\":3"), std::string::npos);

  auto loaded = Container::load(url);
  EXPECT_NE(loaded.metadata_json.find("\"epoch\":3"), std::string::npos);
  const torch::Tensor x = fixed_input();
  EXPECT_TRUE(same_bytes(c.forward(x), loaded.container.forward(x)));
  EXPECT_EQ(loaded.container.lr(0), 0.01);

  auto model = Model::load(url);
  EXPECT_TRUE(same_bytes(c.forward(x), model.model.forward(x)));
}

TEST(S3, StorageFailuresAreErrorsOfKindStorage) {
  expect_storage_error([] { Container::load("s3://no-such-bucket-xyz/k.zip"); },
                       "s3://no-such-bucket-xyz/k.zip");
  expect_storage_error([] { Checkpoint::open("s3://no-such-bucket-xyz/k.zip"); },
                       "s3://no-such-bucket-xyz/k.zip");
  expect_storage_error([] { Container::load("foo://a/b.zip"); }, "foo://a/b.zip");
  Container c = new_mlp();
  expect_storage_error([&] { c.save("s3://no-such-bucket-xyz/cpp", "run"); },
                       "s3://no-such-bucket-xyz/cpp");

  const std::string url = std::string("s3://") + kBucket + "/cpp/k.zip";
  DeadEndpoint dead;
  expect_storage_error([&] { Container::load(url); }, url);
  expect_storage_error([&] { c.restore(url); }, url);
}

}  // namespace
