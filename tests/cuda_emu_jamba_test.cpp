// Jamba on the CUDA backend (compiled against the CUDA-on-CPU emulator): the attention, MoE
// routing and MLP layers, the Mamba mixer's norms and the router loss run through the CUDA ops
// (kernels + cuBLAS shim) and must match the CPU backend on the fixture models: forward, losses,
// every gradient (jamba-odd with its padded batch), and the recurrent decoder with its KV cache.
#include <catch2/catch.hpp>

#include "cuda_emu_model_check.h"

TEST_CASE("Jamba on the emulated CUDA backend matches the CPU backend: forward, losses, gradients",
          "[cuda-emu][jamba]") {
  for (const char* model : {"jamba-tiny", "jamba-odd"}) {
    DYNAMIC_SECTION(model) { ssmtune::testing::require_cuda_matches_cpu(model); }
  }
}

TEST_CASE("Jamba decodes on the emulated CUDA backend as its full forward",
          "[cuda-emu][jamba][generate]") {
  ssmtune::testing::require_cuda_decoder_matches_forward("jamba-tiny");
}
