// Evaluation's memory on the CUDA backend (compiled against the CUDA-on-CPU emulator, whose
// allocator counts the device bytes in use): CausalLM::eval_loss keeps one layer's
// activations at a time and no (B, L, V) logits, so its peak hardly grows with the number of
// layers, where forward's (which keeps every layer's for backward) grows with each. And its
// loss and picked logits on the device match the CPU backend's.
#include <catch2/catch.hpp>

#include "backend/cuda/cuda_backend.h"
#include "gradient_check.h"
#include "model/causal_lm.h"
#include "model/model_init.h"

using namespace ssmtune;

namespace {

ModelConfig mamba_with(std::int64_t n_layer) {
  const nlohmann::json j = {{"model_type", "mamba"}, {"vocab_size", 64}, {"hidden_size", 16},
                            {"num_hidden_layers", n_layer}, {"state_size", 4}, {"expand", 2}};
  return parse_model_config(j, "config.json");
}

struct Peaks {
  std::size_t forward = 0, eval = 0;
};

// Device bytes at the peak of forward, and of eval_loss, each on a fresh backend with its own
// copy of the weights (2 x 128 tokens).
Peaks peaks_with(std::int64_t n_layer) {
  const ModelConfig cfg = mamba_with(n_layer);
  const Tensor ids = testing::random_ids(2, 128, cfg.vocab_size, 5);
  Peaks p;
  {
    const ModelWeights w = init_model_weights(cfg, 1);
    auto gpu = make_cuda_backend();
    CausalLM lm(cfg, w, *gpu);
    lm.forward(ids);
    p.forward = gpu->peak_device_bytes();
  }
  {
    const ModelWeights w = init_model_weights(cfg, 1);
    auto gpu = make_cuda_backend();
    CausalLM lm(cfg, w, *gpu);
    lm.eval_loss(ids, Tensor(), shift_labels(ids));
    p.eval = gpu->peak_device_bytes();
  }
  return p;
}

}  // namespace

TEST_CASE("eval_loss's device memory does not grow with the layers as forward's does",
          "[cuda-emu][eval-loss]") {
  const Peaks two = peaks_with(2), eight = peaks_with(8);
  INFO("forward peak " << two.forward << " -> " << eight.forward << " bytes; eval_loss peak "
                       << two.eval << " -> " << eight.eval);
  // Per layer, forward keeps a dozen (2, 128, 32) tensors (about 0.2 MB) and the weights are
  // about 10 kB: four times the layers give about three times forward's peak, while
  // eval_loss's grows by the six layers' weights and nothing else (about 15%).
  CHECK(eight.forward > 2.5 * double(two.forward));
  CHECK(double(eight.eval) < 1.3 * double(two.eval));
  CHECK(double(eight.eval) < 0.3 * double(eight.forward));
}

TEST_CASE("eval_loss on the emulated CUDA backend matches the CPU backend's",
          "[cuda-emu][eval-loss]") {
  const ModelConfig cfg = mamba_with(3);
  const ModelWeights w = init_model_weights(cfg, 2);
  const Tensor ids = testing::random_ids(3, 40, cfg.vocab_size, 7);
  const Tensor targets = shift_labels(ids);
  const std::vector<std::int64_t> picks = {0, 64 * 50 + 3, 64 * 119 + 63, 64 * 7 + 9};
  auto cpu = make_cpu_backend();
  CausalLM cpu_lm(cfg, w, *cpu);
  cpu_lm.set_head_chunk_rows(25);  // 5 blocks: the picks fall in different ones
  std::vector<double> want;
  const LmLoss cpu_loss = cpu_lm.eval_loss(ids, Tensor(), targets, picks, &want);

  const ModelWeights w_gpu = init_model_weights(cfg, 2);
  auto gpu = make_cuda_backend();
  CausalLM gpu_lm(cfg, w_gpu, *gpu);
  gpu_lm.set_head_chunk_rows(25);
  std::vector<double> got;
  const LmLoss gpu_loss = gpu_lm.eval_loss(ids, Tensor(), targets, picks, &got);
  // float32 both, sums in other orders (cuBLAS, block reductions, the parallel scan): 1e-5.
  CHECK(gpu_loss.n_tokens == cpu_loss.n_tokens);
  CHECK(gpu_loss.loss == Approx(cpu_loss.loss).epsilon(1e-5));
  REQUIRE(got.size() == picks.size());
  for (std::size_t j = 0; j < picks.size(); ++j)
    CHECK(got[j] == Approx(want[j]).epsilon(1e-5).margin(1e-6));
}
