// A fixture model on the CUDA backend (compiled against the CUDA-on-CPU emulator) against the
// CPU backend: forward logits, losses and every gradient on the fixture's reference batch. What
// cuda_emu_jamba_test.cpp and cuda_emu_mamba2_test.cpp share, with the recurrent decoder on
// the CUDA backend against its own full forward.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "decoder_check.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "test_compare.h"

namespace ssmtune::testing {

inline std::string fixture_dir(const std::string& model) {
  return (std::filesystem::path(SSMTUNE_FIXTURES_DIR) / model).string();
}

struct BackendPass {
  LmLoss loss;
  Tensor logits;
  ModelWeights grads;
};

// One forward (the reference's input_ids, attention_mask where it pads, the router loss where
// the model has one) and backward on `be`.
inline BackendPass run_reference_batch(Backend& be, const ModelConfig& cfg, const ModelWeights& w,
                                       const SafetensorsFile& ref) {
  BackendPass p;
  p.grads = zeros_like_params(cfg, DType::F32);
  CausalLM lm(cfg, w, be, 4);
  lm.set_router_aux_coef(cfg.router_aux_loss_coef);
  const Tensor mask = ref.contains("attention_mask") ? ref.tensor("attention_mask") : Tensor();
  lm.forward(ref.tensor("input_ids"), mask);
  const Tensor targets = shift_labels(ref.tensor("labels"));
  p.loss = lm.loss(targets);
  p.logits = lm.logits().clone();
  lm.backward(targets, p.grads);
  return p;
}

// float32 on both, sums in other orders (cuBLAS, block reductions, the parallel scans, the
// tiled attention and SSD chunks): 1e-5 of the scale for activations and losses, 1e-4 for
// gradients, which also sum over every token. A gradient that is zero on the CPU (an unused
// expert's) is not compared. Returns how many gradients were compared.
inline int require_cuda_matches_cpu(const std::string& model) {
  const ModelConfig cfg = load_model_config(fixture_dir(model));
  const auto ref = SafetensorsFile::open(fixture_dir(model) + "/reference.safetensors");
  const ModelWeights w = load_model_weights(fixture_dir(model), cfg, DType::F32);
  auto cpu = make_cpu_backend();
  const BackendPass want = run_reference_batch(*cpu, cfg, w, ref);
  const ModelWeights w_gpu = load_model_weights(fixture_dir(model), cfg, DType::F32);
  auto gpu = make_cuda_backend();
  const BackendPass got = run_reference_batch(*gpu, cfg, w_gpu, ref);
  require_close("logits", got.logits, want.logits, 1e-5, 0);
  CHECK(got.loss.loss == Approx(want.loss.loss).epsilon(1e-5));
  CHECK(got.loss.aux_loss == Approx(want.loss.aux_loss).epsilon(1e-5));
  ModelWeights g = got.grads, c = want.grads;
  std::vector<ParamSlot> gs = param_slots(cfg, g), cs = param_slots(cfg, c);
  REQUIRE(gs.size() == cs.size());
  int n_compared = 0;
  for (std::size_t i = 0; i < gs.size(); ++i) {
    if (gs[i].absent_because || !gs[i].tensor->defined()) continue;
    const Tensor mine = gs[i].tensor->clone();
    bool any = false;
    const Tensor ref64 = cs[i].tensor->to(DType::F64);
    for (std::int64_t k = 0; k < ref64.numel() && !any; ++k) any = ref64.data<double>()[k] != 0;
    if (!any) continue;
    require_close("grad." + gs[i].name, mine, *cs[i].tensor, 1e-4, 0);
    ++n_compared;
  }
  return n_compared;
}

// The first sequence of the fixture's reference batch decoded on the CUDA backend
// (decoder_check.h: prefilled in blocks, then stepped) against the full forward there.
inline void require_cuda_decoder_matches_forward(const std::string& model) {
  const ModelConfig cfg = load_model_config(fixture_dir(model));
  const auto ref = SafetensorsFile::open(fixture_dir(model) + "/reference.safetensors");
  const ModelWeights w = load_model_weights(fixture_dir(model), cfg, DType::F32);
  auto gpu = make_cuda_backend();
  const Tensor ids = ref.tensor("input_ids").rows(0, 1);
  CausalLM lm(cfg, w, *gpu);
  lm.forward(ids);
  require_decoder_matches_forward(cfg, w, *gpu, ids, lm.logits(), nullptr, nullptr);
}

}  // namespace ssmtune::testing
