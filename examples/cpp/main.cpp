// pytorch-saver from C++ in one minute: define a torch::nn::Module,
// register it under a class name, train it with Adam and StepLR through a
// container, save a checkpoint, load it into a new container and run it,
// then load the model alone for serving.
//
// Build and run (bindings/cpp/CMakeLists.txt, target example_cpp):
//   cmake -S bindings/cpp -B build -DCMAKE_PREFIX_PATH=<sdk prefix>
//   cmake --build build --target example_cpp && build/example_cpp [output dir]
#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <pytorch_saver.hpp>
#include <string>

// A two-layer perceptron.
struct TinyNet : torch::nn::Module {
  TinyNet(int64_t in, int64_t hidden, int64_t out)
      : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, out))) {}

  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(fc1(x))); }

  torch::nn::Linear fc1;
  torch::nn::Linear fc2;
};

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  try {
    const fs::path dir = argc > 1 ? fs::path(argv[1]) : fs::temp_directory_path() / "pts_example";
    fs::create_directories(dir);

    // 1. Register the module under a class name: a checkpoint names its
    //    model's class, and loading finds the factory by that name.
    pytorch_saver::Registry registry;
    registry.register_module<TinyNet>(
        "example.TinyNet", [](const pytorch_saver::Kwargs& kw, bool /*loading*/) {
          return std::make_shared<TinyNet>(kw.get<int64_t>("in"), kw.get_or<int64_t>("hidden", 16),
                                           kw.get<int64_t>("out"));
        });

    // 2. Model, optimizer and scheduler, each by class name and kwargs.
    torch::manual_seed(0);  // reproducible initial weights and data
    pytorch_saver::Container container(registry);
    container.initialize("example.TinyNet", R"({"in": 3, "hidden": 16, "out": 1})",
                         "torch.optim.Adam", R"({"lr": 0.01})", "torch.optim.lr_scheduler.StepLR",
                         R"({"step_size": 20, "gamma": 0.5})");

    // 3. Train it to learn y = x0 + 2 x1 - x2.
    torch::Tensor x = torch::randn({64, 3});
    torch::Tensor y = x.matmul(torch::tensor({1.0f, 2.0f, -1.0f})).unsqueeze(1);
    double loss = 0;
    for (int step = 0; step < 50; ++step) {
      torch::Tensor batch_loss = torch::mse_loss(container.forward(x, /*train=*/true), y);
      batch_loss.backward();
      container.step();
      container.scheduler_step();
      container.zero_grad();
      loss = batch_loss.item<double>();
    }

    // 4. Save model, optimizer and scheduler state in one file, with
    //    metadata of our own.
    std::string path = container.save(dir.string(), "tiny",
                                      R"({"epoch": 50, "loss": )" + std::to_string(loss) + "}");
    std::cout << "saved " << path << "\nloss " << loss << ", lr " << container.lr() << "\n";

    // 5. Load it into a new container (the registry rebuilds TinyNet) and
    //    run the model: forward without `train` is eval mode, no autograd.
    auto [loaded, metadata] = pytorch_saver::Container::load(path, registry);
    torch::Tensor prediction = loaded.forward(x);
    std::cout << "loaded model's loss " << torch::mse_loss(prediction, y).item<double>() << ", lr "
              << loaded.lr() << "\nmetadata " << metadata << "\n";

    // 6. Serve it: a Model is the model alone, read-only, in eval mode;
    //    any number of threads may call its forward at once.
    auto served = pytorch_saver::Model::load(path, registry);
    bool same = torch::equal(served.model.forward(x), prediction);
    std::cout << "served " << served.model.class_name() << ", concurrent "
              << served.model.concurrent() << ", same prediction " << same << "\n";
    return same ? 0 : 1;
  } catch (const pytorch_saver::Error& e) {
    std::cerr << "pytorch_saver error " << e.code() << ": " << e.what() << "\n";
    return 1;
  }
}
