// Generation on the CUDA backend (compiled against the CUDA-on-CPU emulator): the mamba-tiny
// fixture's full forward on the emulated backend matches the CPU backend's, and the recurrent
// decoder (prefill blocks and single steps, what `ssmtune generate --device cuda` runs) matches
// that forward token by token.
#include <catch2/catch.hpp>

#include "backend/cuda/cuda_backend.h"
#include "decoder_check.h"
#include "model/causal_lm.h"
#include "test_compare.h"
#include "tiny_model.h"

TEST_CASE("the emulated CUDA backend decodes as its full forward, which matches the CPU's",
          "[cuda-emu][generate]") {
  ssmtune::test::TinyModel m(ssmtune::DType::F32);
  const ssmtune::Tensor ids = m.ids.rows(0, 1);  // one sequence (1, 9)
  ssmtune::CausalLM cpu_lm(m.cfg, m.w, *m.be);
  cpu_lm.forward(ids);
  const ssmtune::Tensor cpu_logits = cpu_lm.logits().clone();

  const ssmtune::ModelWeights w = m.w;  // the same storages: they move to the emulated GPU
  auto gpu = ssmtune::make_cuda_backend();
  ssmtune::CausalLM gpu_lm(m.cfg, w, *gpu);
  gpu_lm.forward(ids);
  REQUIRE(gpu_lm.logits().device() == ssmtune::Device::CUDA);
  // float32 both, sums in other orders (cuBLAS, block reductions, the parallel scan): 1e-5.
  ssmtune::testing::require_close("logits", gpu_lm.logits().clone(), cpu_logits, 1e-5, 0);
  ssmtune::testing::require_decoder_matches_forward(m.cfg, w, *gpu, ids, gpu_lm.logits(), nullptr,
                                                    nullptr);
}
