// Causal depthwise conv1d on the GPU, float32, channel-last (B, L, E) as the mixer keeps x:
//   c[b, t, e] = bias[e] + sum_k w[e, k] x[b, t - (K-1) + k, e]     (zero left padding)
// CPU twins: ssmtune::cpu::conv1d_forward / conv1d_backward (lib/backend/cpu/conv1d_cpu.cpp),
// and cpu::silu_forward for the fused SiLU. Device pointers; work queued on `stream`.
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// Kernel widths the launchers take: 1 .. kConv1dMaxWidth (Mamba uses 4).
constexpr int kConv1dMaxWidth = 8;
// Rows (b, t) summed into one partial of dw / dbias by backward: fixed, so the sums run in the
// same order on every GPU.
constexpr std::int64_t kConv1dDwChunkRows = 64;

// x, c: (B, L, E)   w: (E, K)   bias: (E) or null   u: (B, L, E) = silu(c), or null (not fused)
void conv1d_forward(std::int64_t B, std::int64_t L, std::int64_t E, int K, const float* x,
                    const float* w, const float* bias, float* c, float* u, cudaStream_t stream);

// Floats of workspace conv1d_backward needs: per chunk of rows a partial dw (E K) and dbias (E).
std::int64_t conv1d_backward_workspace_floats(std::int64_t B, std::int64_t L, std::int64_t E,
                                              int K);

// dc, x, dx: (B, L, E). dx overwritten; dw: (E, K) and dbias: (E) accumulated (+=), each null
// when not wanted (a frozen conv).
void conv1d_backward(std::int64_t B, std::int64_t L, std::int64_t E, int K, const float* dc,
                     const float* x, const float* w, float* dx, float* dw, float* dbias,
                     float* workspace, cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
