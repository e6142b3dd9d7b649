// Elementwise activations of the Mamba mixer on the GPU, float32: SiLU after the conv,
// softplus on dt, the y * silu(z) output gate. CPU twins: the functions of the same names in
// ssmtune::cpu (lib/backend/cpu/elementwise_cpu.cpp). n elements, device pointers; the work is
// queued on `stream`. Backward ops overwrite their outputs.
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// Grid cap of the elementwise launches (a grid-stride loop covers the rest); tests pass a
// small one to exercise the loop.
constexpr int kElementwiseMaxBlocks = 4096;

// y = x sigmoid(x)
void silu_forward(std::int64_t n, const float* x, float* y, cudaStream_t stream,
                  int max_blocks = kElementwiseMaxBlocks);
void silu_backward(std::int64_t n, const float* dy, const float* x, float* dx, cudaStream_t stream,
                   int max_blocks = kElementwiseMaxBlocks);
// y = log(1 + exp(x)), and x itself above 20 (PyTorch's threshold)
void softplus_forward(std::int64_t n, const float* x, float* y, cudaStream_t stream,
                      int max_blocks = kElementwiseMaxBlocks);
void softplus_backward(std::int64_t n, const float* dy, const float* x, float* dx,
                       cudaStream_t stream, int max_blocks = kElementwiseMaxBlocks);
// out = y silu(z)
void gate_forward(std::int64_t n, const float* y, const float* z, float* out, cudaStream_t stream,
                  int max_blocks = kElementwiseMaxBlocks);
void gate_backward(std::int64_t n, const float* dout, const float* y, const float* z, float* dy,
                   float* dz, cudaStream_t stream, int max_blocks = kElementwiseMaxBlocks);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
