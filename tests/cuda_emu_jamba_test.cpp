// Jamba on the CUDA backend (compiled against the CUDA-on-CPU emulator): the attention, MoE
// routing and MLP layers, the Mamba mixer's norms and the router loss run through the CUDA ops
// (kernels + cuBLAS shim) and must match the CPU backend on the fixture models: forward, losses,
// every gradient (jamba-odd with its padded batch), and the recurrent decoder with its KV cache.
#include <catch2/catch.hpp>

#include <filesystem>

#include "backend/cuda/cuda_backend.h"
#include "decoder_check.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "test_compare.h"

using namespace ssmtune;
using ssmtune::testing::require_close;

namespace {

std::string fixture(const std::string& model) {
  return (std::filesystem::path(SSMTUNE_FIXTURES_DIR) / model).string();
}

struct Pass {
  LmLoss loss;
  Tensor logits;
  ModelWeights grads;
};

Pass run(Backend& be, const ModelConfig& cfg, const ModelWeights& w, const SafetensorsFile& ref) {
  Pass p;
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

}  // namespace

TEST_CASE("Jamba on the emulated CUDA backend matches the CPU backend: forward, losses, gradients",
          "[cuda-emu][jamba]") {
  for (const char* model : {"jamba-tiny", "jamba-odd"}) {
    DYNAMIC_SECTION(model) {
      const ModelConfig cfg = load_model_config(fixture(model));
      const auto ref = SafetensorsFile::open(fixture(model) + "/reference.safetensors");
      const ModelWeights w = load_model_weights(fixture(model), cfg, DType::F32);
      auto cpu = make_cpu_backend();
      const Pass want = run(*cpu, cfg, w, ref);
      const ModelWeights w_gpu = load_model_weights(fixture(model), cfg, DType::F32);
      auto gpu = make_cuda_backend();
      const Pass got = run(*gpu, cfg, w_gpu, ref);
      // float32 on both, sums in other orders (cuBLAS, block reductions, the parallel scan,
      // the tiled attention): 1e-5 of the scale for activations and losses, 1e-4 for gradients.
      require_close("logits", got.logits, want.logits, 1e-5, 0);
      CHECK(got.loss.loss == Approx(want.loss.loss).epsilon(1e-5));
      CHECK(got.loss.aux_loss == Approx(want.loss.aux_loss).epsilon(1e-5));
      ModelWeights g = got.grads, c = want.grads;
      std::vector<ParamSlot> gs = param_slots(cfg, g), cs = param_slots(cfg, c);
      for (std::size_t i = 0; i < gs.size(); ++i) {
        if (gs[i].absent_because || !gs[i].tensor->defined()) continue;
        const Tensor mine = gs[i].tensor->clone();
        bool any = false;  // an unused expert's gradient is zero on both
        const Tensor ref64 = cs[i].tensor->to(DType::F64);
        for (std::int64_t k = 0; k < ref64.numel() && !any; ++k) any = ref64.data<double>()[k] != 0;
        if (any) require_close("grad." + gs[i].name, mine, *cs[i].tensor, 1e-4, 0);
      }
    }
  }
}

TEST_CASE("Jamba decodes on the emulated CUDA backend as its full forward",
          "[cuda-emu][jamba][generate]") {
  const ModelConfig cfg = load_model_config(fixture("jamba-tiny"));
  const auto ref = SafetensorsFile::open(fixture("jamba-tiny") + "/reference.safetensors");
  const ModelWeights w = load_model_weights(fixture("jamba-tiny"), cfg, DType::F32);
  auto gpu = make_cuda_backend();
  const Tensor ids = ref.tensor("input_ids").rows(0, 1);
  CausalLM lm(cfg, w, *gpu);
  lm.forward(ids);
  ssmtune::testing::require_decoder_matches_forward(cfg, w, *gpu, ids, lm.logits(), nullptr,
                                                    nullptr);
}
