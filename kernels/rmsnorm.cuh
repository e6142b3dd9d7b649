// RMSNorm on the GPU, float32 (HF MambaRMSNorm: y = w * x / sqrt(mean(x^2) + eps)).
// CPU twins: ssmtune::cpu::rmsnorm_forward and rmsnorm_backward (lib/backend/cpu/rmsnorm_cpu.cpp).
// Device pointers, row-major; the work is queued on `stream` and errors surface through
// cudaGetLastError. rows < 2^31, D < 2^21 (grid limits).
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// Rows reduced into one partial dw row by the backward pass: fixed, so dw is summed in the
// same order whatever the GPU.
constexpr std::int64_t kRmsnormDwChunkRows = 64;

// Threads of the one block per row the launchers use for rows of width D: about four
// elements per thread, a multiple of 32 in [32, 1024].
int rmsnorm_threads(std::int64_t D);

// x, y: (rows, D)   w: (D)   rstd: (rows, G) out, 1 / sqrt(mean(x^2) + eps) over each of a
// row's G runs of D/G columns (G = 1: the whole row; G divides D, rows G < 2^31).
// threads: 0 for rmsnorm_threads(D / G), else rounded up to a multiple of 32 in [32, 1024].
void rmsnorm_forward(std::int64_t rows, std::int64_t D, const float* x, const float* w, double eps,
                     float* y, float* rstd, cudaStream_t stream, int threads = 0,
                     std::int64_t G = 1);

// The residual connection fused with the next norm: sum += x, then y = rmsnorm(sum) (the CPU
// backend's add then rmsnorm_forward).   x, sum, y: (rows, D)
void add_rmsnorm_forward(std::int64_t rows, std::int64_t D, const float* x, float* sum,
                         const float* w, double eps, float* y, float* rstd, cudaStream_t stream,
                         int threads = 0);

// Floats of workspace rmsnorm_backward needs: one partial dw row per kRmsnormDwChunkRows rows.
std::int64_t rmsnorm_backward_workspace_floats(std::int64_t rows, std::int64_t D);

// dy, x, dx: (rows, D)   w: (D)   rstd: (rows, G) from forward.  dx overwritten (accumulated
// with accumulate_dx: the residual's gradient fan-in fused in), dw: (D) += .
// workspace: rmsnorm_backward_workspace_floats(rows, D) floats of device memory.
void rmsnorm_backward(std::int64_t rows, std::int64_t D, const float* dy, const float* x,
                      const float* w, const float* rstd, float* dx, float* dw, float* workspace,
                      cudaStream_t stream, int threads = 0, bool accumulate_dx = false,
                      std::int64_t G = 1);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
