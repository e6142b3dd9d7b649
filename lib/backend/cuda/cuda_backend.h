// The CUDA backend (docs/architecture.md "The model code is written once"): the op interface of
// backend/backend.h on one GPU, with the hand-written kernels of kernels/ and cuBLAS for every
// matrix product. float32 throughout (fp32 state and accumulation). Tensors the ops touch move
// to the GPU and stay there (core/tensor.h "Residency"); token ids, labels and SDT's indices
// stay on the host, where they are checked, and travel as per-op copies.
//
// Built twice from the same source: against the CUDA toolkit into the ssmtune binary
// (namespace ssmtune::gpu), and against the tests' CUDA-on-CPU emulator (ssmtune::emu), where
// the whole training loop runs and is compared with the CPU backend.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "kernels/kernel_abi.h"

namespace ssmtune {
inline namespace SSMTUNE_KERNEL_ABI {

struct CudaOptions {
  // Matrix products with bf16 inputs (rounded from the fp32 tensors per product) and fp32
  // accumulation, on the tensor cores: several times the fp32 rate, ~3 significant digits per
  // input. Everything else stays fp32.
  bool bf16_matmul = false;
};

// Device `device` of this process; throws Error saying why when there is no usable GPU (or
// this build has no CUDA parts).
std::unique_ptr<Backend> make_cuda_backend(int device = 0, CudaOptions options = {});

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune
