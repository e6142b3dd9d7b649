// Every PEFT method trains on the CUDA backend (compiled against the CUDA-on-CPU emulator) as it
// does on the CPU backend: each config of configs/methods/ (its "peft" section and learning
// rate) on a small experiment (train_experiment_fixture.h's model, batches of 2 sequences of up
// to 16 tokens), 3 steps, against the same run on the CPU backend. The longer SDLoRA and
// state-offset runs with evals and checkpoints are in cuda_emu_train_test.cpp.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_backend.h"
#include "test_compare.h"
#include "train/experiment_config.h"
#include "train/trainer.h"
#include "train_experiment_fixture.h"

namespace fs = std::filesystem;
using nlohmann::json;
using ssmtune::test::Experiment;
using ssmtune::test::read_file;

namespace {

std::vector<double> losses(const fs::path& run) {
  std::vector<double> out;
  for (const json& j : ssmtune::test::metrics_lines(run))
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  return out;
}

}  // namespace

TEST_CASE("every method config trains on the emulated CUDA backend as on the CPU backend",
          "[cuda-emu][train][methods][slow]") {
  const std::vector<fs::path> configs = ssmtune::test::method_configs();
  REQUIRE(configs.size() >= 19);
  Experiment e(3, 0, 0);
  const json base = json::parse(read_file(e.config));
  for (const fs::path& method : configs) {
    const json m = json::parse(read_file(method));
    json cfg = base;
    cfg["peft"] = m["peft"];
    if (cfg["peft"].contains("sdt")) cfg["peft"]["sdt"]["warmup_steps"] = 1;  // then 2 masked
    cfg["optimizer"]["lr"] = m["optimizer"]["lr"];
    cfg["training"] = {{"steps", 3}, {"batch_size", 2}, {"grad_accum", 1}};
    cfg["data"]["max_length"] = 16;
    cfg.erase("eval");
    cfg["data"].erase("eval");
    cfg["checkpoint"] = {{"every", 0}};
    const std::string name = method.stem().string();
    INFO(name);
    std::ofstream(e.config) << cfg.dump(2);
    for (const bool cuda : {false, true}) {
      const fs::path run = e.dir / (name + (cuda ? "-cuda" : "-cpu"));
      ssmtune::TrainOptions opts;
      if (cuda) opts.make_backend = [] { return ssmtune::make_cuda_backend(); };
      const ssmtune::TrainResult r =
          ssmtune::train(ssmtune::load_experiment_config(
                             e.config.string(), {"output_dir=" + json(run.string()).dump()}),
                         opts);
      CHECK(r.step_moves_to_host == 0);  // every method's steps stay on the GPU
    }
    const std::vector<double> cpu = losses(e.dir / (name + "-cpu")),
                              gpu = losses(e.dir / (name + "-cuda"));
    REQUIRE(cpu.size() == 3);
    REQUIRE(gpu.size() == 3);
    // float32 on both, other summation orders on the GPU (cuda_emu_train_test.cpp): 1e-4.
    for (std::size_t i = 0; i < cpu.size(); ++i) CHECK(gpu[i] == Approx(cpu[i]).epsilon(1e-4));
  }
}
