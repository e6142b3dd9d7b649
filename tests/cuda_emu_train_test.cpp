// The whole training loop on the CUDA backend compiled against the CUDA-on-CPU emulator
// (lib/backend/cuda, tests/cuda_emu): a short SDLoRA run (LoRA + SDT's warmup, selection and
// masked phase) and a state-offset run train as they do on the CPU backend, step for step.
// The experiment is train_experiment_fixture.h's (2 layers, d_model 32, d_inner 64, d_state 8,
// vocab 1024, batches of 4 x 2 micro-batches of up to 24 tokens), 6 steps, eval and
// checkpoints every 3.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_backend.h"
#include "io/safetensors.h"
#include "test_compare.h"
#include "train/experiment_config.h"
#include "train/trainer.h"
#include "train_experiment_fixture.h"

namespace fs = std::filesystem;
using nlohmann::json;
using ssmtune::test::Experiment;
using ssmtune::test::metrics_lines;
using ssmtune::test::read_file;

namespace {

ssmtune::TrainResult train_on(const Experiment& e, const std::string& run, bool cuda) {
  const ssmtune::ExperimentConfig cfg = ssmtune::load_experiment_config(
      e.config.string(), {"output_dir=" + json((e.dir / run).string()).dump()});
  ssmtune::TrainOptions opts;
  if (cuda) opts.make_backend = [] { return ssmtune::make_cuda_backend(); };
  return ssmtune::train(cfg, opts);
}

// Both runs compute in float32; the GPU twins sum in other orders (cuBLAS, block reductions,
// the parallel scan), so every op differs by a few float ulps (~1e-6 relative). Over 6 AdamW
// steps that stays far below 1e-4 in the loss and the gradient norm; the trained tensors move
// by lr-sized steps normalised by sqrt(v), where the relative differences of the gradients
// reappear: 1e-3 of the largest entry of each tensor.
void require_same_run(const Experiment& e, const std::vector<std::string>& adapter_files) {
  const std::vector<json> cpu = metrics_lines(e.dir / "cpu"), gpu = metrics_lines(e.dir / "cuda");
  REQUIRE(cpu.size() == gpu.size());
  REQUIRE(cpu.size() >= 6);
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    INFO("metrics line " << i << ": cpu " << cpu[i].dump() << "\ncuda " << gpu[i].dump());
    REQUIRE(cpu[i]["step"] == gpu[i]["step"]);
    for (const char* k : {"loss", "grad_norm"})
      if (cpu[i].contains(k))
        CHECK(gpu[i][k].get<double>() == Approx(cpu[i][k].get<double>()).epsilon(1e-4));
    if (cpu[i].contains("eval"))
      CHECK(gpu[i]["eval"]["loss"].get<double>() ==
            Approx(cpu[i]["eval"]["loss"].get<double>()).epsilon(1e-4));
  }
  for (const std::string& file : adapter_files) {
    const auto a = ssmtune::SafetensorsFile::open(e.dir / "cpu" / "adapter" / file);
    const auto b = ssmtune::SafetensorsFile::open(e.dir / "cuda" / "adapter" / file);
    REQUIRE(a.entries().size() == b.entries().size());
    for (const auto& entry : a.entries()) {
      INFO(file << ": " << entry.name);
      const ssmtune::Tensor ta = a.tensor(entry.name), tb = b.tensor(entry.name);
      REQUIRE(ta.shape() == tb.shape());
      if (ta.dtype() == ssmtune::DType::I64) {  // SDT's masks: the same selection
        REQUIRE(std::equal(ta.data<std::int64_t>(), ta.data<std::int64_t>() + ta.numel(),
                           tb.data<std::int64_t>()));
        continue;
      }
      ssmtune::testing::require_close(entry.name, tb, ta, 1e-3, 1e-7);
    }
  }
}

}  // namespace

TEST_CASE("SDLoRA trains on the emulated CUDA backend as on the CPU backend",
          "[cuda-emu][train][slow]") {
  Experiment e(6, 3, 3);
  json cfg = json::parse(read_file(e.config));
  cfg["peft"]["sdt"] = {
      {"warmup_steps", 2}, {"channel_freeze_fraction", 0.9}, {"state_freeze_fraction", 0.5}};
  std::ofstream(e.config) << cfg.dump(2);
  train_on(e, "cpu", false);
  const ssmtune::TrainResult r = train_on(e, "cuda", true);
  CHECK(r.steps == 6);
  // After the first, steps (and the evals and checkpoints between them) read nothing back; they
  // upload, once, what SDT's switch re-initialised on the host, and no LoRA dropout mask (made
  // on the GPU: 3 targets x 2 layers x 2 micro-batches of them per step).
  CHECK(r.step_moves_to_host == 0);
  CHECK(r.step_moves_to_device > 0);
  CHECK(r.step_moves_to_device < 12);
  require_same_run(e, {"adapter_model.safetensors", "ssmtune_params.safetensors"});
}

TEST_CASE("state-offset tuning trains on the emulated CUDA backend as on the CPU backend",
          "[cuda-emu][train][slow]") {
  Experiment e(6, 3, 3);
  json cfg = json::parse(read_file(e.config));
  cfg["peft"] = {{"state_offset", "h"}};
  cfg["optimizer"]["lr"] = 1e-2;
  std::ofstream(e.config) << cfg.dump(2);
  train_on(e, "cpu", false);
  const ssmtune::TrainResult r = train_on(e, "cuda", true);
  CHECK(r.step_moves_to_host == 0);  // no dropout here: the steps move nothing either way
  CHECK(r.step_moves_to_device == 0);
  std::vector<std::string> files;
  for (const auto& f : fs::directory_iterator(e.dir / "cpu" / "adapter"))
    if (f.path().extension() == ".safetensors") files.push_back(f.path().filename().string());
  REQUIRE(!files.empty());
  require_same_run(e, files);
}

TEST_CASE("LoRA trains with bf16 matmuls on the emulated CUDA backend close to fp32 on the CPU",
          "[cuda-emu][train][bf16]") {
  Experiment e(3, 0, 0);
  json cfg = json::parse(read_file(e.config));
  cfg["training"] = {{"steps", 3}, {"batch_size", 2}, {"grad_accum", 1}};
  cfg["data"]["max_length"] = 16;
  cfg.erase("eval");
  cfg["data"].erase("eval");
  cfg["checkpoint"] = {{"every", 0}};
  std::ofstream(e.config) << cfg.dump(2);
  train_on(e, "cpu", false);
  const ssmtune::ExperimentConfig bf16 = ssmtune::load_experiment_config(
      e.config.string(),
      {"output_dir=" + json((e.dir / "cuda").string()).dump(), "training.matmul=\"bf16\""});
  ssmtune::TrainOptions opts;
  opts.make_backend = [] { return ssmtune::make_cuda_backend(0, ssmtune::CudaOptions{true}); };
  ssmtune::train(bf16, opts);
  const std::vector<json> cpu = metrics_lines(e.dir / "cpu"), gpu = metrics_lines(e.dir / "cuda");
  REQUIRE(cpu.size() == gpu.size());
  // bf16 inputs move every product by ~4e-3 relative (cuda_emu_backend_test.cpp); the loss, an
  // average over tokens of log-probabilities, moves far less: 1e-2 bounds it with room, and a
  // run that trained something else (a wrong operand, a lost update) misses it by far more.
  for (std::size_t i = 0; i < cpu.size(); ++i)
    if (cpu[i].contains("loss"))
      CHECK(gpu[i]["loss"].get<double>() == Approx(cpu[i]["loss"].get<double>()).epsilon(1e-2));
}
