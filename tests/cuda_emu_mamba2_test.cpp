// Mamba-2 on the CUDA backend (compiled against the CUDA-on-CPU emulator): the SSD scan
// (kernels/ssd.cu, twin of lib/backend/cpu/ssd_cpu.cpp), the per-group RMSNorm, the dt clamp
// and the projections run through the CUDA ops and must match the CPU backend on the fixture
// models (data_scripts/make_mamba2_fixtures.py): forward, loss and every gradient (mamba2-odd
// with its padded batch and binding dt clamp, mamba2-groups with 2 groups), the recurrent
// decoder against the full forward and the CPU decoder, and a short LoRA run of the trainer.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cuda_emu_model_check.h"
#include "io_test_util.h"
#include "model/causal_lm.h"
#include "test_compare.h"
#include "train/experiment_config.h"
#include "train/trainer.h"
#include "train_experiment_fixture.h"

using namespace ssmtune;
using nlohmann::json;
using ssmtune::testing::fixture_dir;
using ssmtune::testing::require_close;
namespace fs = std::filesystem;

TEST_CASE("Mamba-2 on the emulated CUDA backend matches the CPU backend: forward, loss, gradients",
          "[cuda-emu][mamba2]") {
  for (const char* model : {"mamba2-tiny", "mamba2-odd", "mamba2-groups"}) {
    DYNAMIC_SECTION(model) {
      // embedding, norm_f, and in each of the 2 or more layers at least in_proj, conv1d, A_log,
      // D, the gated norm, out_proj and the layer norm
      CHECK(ssmtune::testing::require_cuda_matches_cpu(model) >= 2 + 7 * 2);
    }
  }
}

TEST_CASE("Mamba-2 decodes on the emulated CUDA backend as its full forward and the CPU decoder",
          "[cuda-emu][mamba2][generate]") {
  SECTION("mamba2-tiny, mamba2-groups: the full forward") {
    for (const char* model : {"mamba2-tiny", "mamba2-groups"}) {
      INFO(model);
      ssmtune::testing::require_cuda_decoder_matches_forward(model);
    }
  }
  SECTION("mamba2-odd: the CPU decoder's logits and the reference's greedy tokens") {
    const auto gen = SafetensorsFile::open(fixture_dir("mamba2-odd") + "/generation.safetensors");
    const ModelConfig cfg = load_model_config(fixture_dir("mamba2-odd"));
    const ModelWeights w = load_model_weights(fixture_dir("mamba2-odd"), cfg, DType::F32);
    auto cpu = make_cpu_backend();
    auto gpu = make_cuda_backend();
    const Tensor prompt_ids = gen.tensor("prompt_ids"), sequences = gen.tensor("sequences");
    const std::int64_t P = prompt_ids.dim(1), n_new = gen.tensor("step_logits").dim(1);
    Decoder on_cpu(cfg, w, *cpu, /*prefill_block=*/3), on_gpu(cfg, w, *gpu, 3);
    on_cpu.reset();
    on_gpu.reset();
    const std::int64_t* prompt = prompt_ids.data<std::int64_t>();
    Tensor want = on_cpu.prefill({prompt, prompt + P}).clone();
    Tensor got = on_gpu.prefill({prompt, prompt + P}).clone();
    for (std::int64_t s = 0; s < n_new; ++s) {
      // float32, as the decoder's parity with the full forward (decoder_check.h)
      require_close("step " + std::to_string(s), got, want, 1e-5, 1e-6);
      const std::int64_t next = sequences.data<std::int64_t>()[P + s];
      if (s + 1 < n_new) {
        want = on_cpu.step(next).clone();
        got = on_gpu.step(next).clone();
      }
    }
  }
}

TEST_CASE("LoRA on Mamba-2 trains on the emulated CUDA backend as on the CPU backend",
          "[cuda-emu][mamba2][train][lora]") {
  ssmtune::test::TempDir dir;
  const fs::path train_file = ssmtune::test::make_fixture_experiment(dir.path(), "mamba2-tiny");
  json cfg = {
      {"model", (dir / "model").string()},
      {"seed", 3},
      {"data", {{"train", train_file.string()}, {"format", "tokens"}, {"max_length", 16}}},
      {"peft",
       {{"lora",
         {{"targets", {"in_proj", "out_proj"}}, {"rank", 2}, {"alpha", 4}, {"dropout", 0.1}}}}},
      {"optimizer", {{"lr", 1e-2}, {"grad_clip", 1.0}}},
      {"training", {{"steps", 4}, {"batch_size", 2}}},
      {"checkpoint", {{"every", 0}}}};
  for (const bool cuda : {false, true}) {
    cfg["output_dir"] = (dir / (cuda ? "cuda" : "cpu")).string();
    std::ofstream(dir / "config.json") << cfg.dump(2);
    TrainOptions opts;
    if (cuda) opts.make_backend = [] { return make_cuda_backend(); };
    REQUIRE(train(load_experiment_config((dir / "config.json").string(), {}), opts).steps == 4);
  }
  // As cuda_emu_train_test.cpp: float32 on both, sums in other orders (~1e-6 relative per op);
  // 1e-4 in the loss and gradient norm after 4 AdamW steps, 1e-3 of each adapter tensor's
  // scale (its steps are lr-sized and normalised by sqrt(v), where gradient differences show).
  const std::vector<json> cpu = ssmtune::test::metrics_lines(dir / "cpu");
  const std::vector<json> gpu = ssmtune::test::metrics_lines(dir / "cuda");
  REQUIRE(cpu.size() == gpu.size());
  int n_losses = 0;
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    INFO("metrics line " << i << ": cpu " << cpu[i].dump() << "\ncuda " << gpu[i].dump());
    for (const char* k : {"loss", "grad_norm"})
      if (cpu[i].contains(k)) {
        CHECK(gpu[i][k].get<double>() == Approx(cpu[i][k].get<double>()).epsilon(1e-4));
        n_losses += *k == 'l';
      }
  }
  CHECK(n_losses >= 4);  // a line per step
  const auto a = SafetensorsFile::open(dir / "cpu" / "adapter" / "adapter_model.safetensors");
  const auto b = SafetensorsFile::open(dir / "cuda" / "adapter" / "adapter_model.safetensors");
  REQUIRE(a.entries().size() == b.entries().size());
  REQUIRE(a.entries().size() == 2 * 2 * 2);  // A and B of in_proj and out_proj in 2 layers
  for (const auto& entry : a.entries())
    require_close(entry.name, b.tensor(entry.name), a.tensor(entry.name), 1e-3, 1e-7);
}
