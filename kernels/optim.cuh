// Optimizer kernels on the GPU, float32: AdamW and the global gradient norm's sum of squares.
// CPU twins: ssmtune::cpu::adamw_update / sum_squares (lib/backend/cpu/optim_cpu.cpp). Device
// pointers; work queued on `stream`. Masked tuning (SDT) needs no mask here: a masked tensor's
// trainable entries are a compact (k) vector, and its optimizer moments are sized to it.
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// The float scalars of one AdamW step, computed on the host exactly as the CPU twin computes
// them (in double, as torch's Python floats, then rounded to float).
struct AdamWScalars {
  float decay, w1, b2, w2, step_size, bc2_sqrt, eps;
};
AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps,
                           double weight_decay, std::int64_t step);

// In place over n elements: param, m, v updated from grad in the twin's operation order.
void adamw_update(std::int64_t n, float* param, const float* grad, float* m, float* v,
                  const AdamWScalars& s, cudaStream_t stream);

// Bytes of workspace sum_squares needs for n elements.
std::int64_t sum_squares_workspace_bytes(std::int64_t n);
// out: one double on the device = sum of double(x[i])^2, summed in double in an order fixed by
// n alone (fixed-size blocks of the twin's 8192 elements, then the blocks in order).
void sum_squares(std::int64_t n, const float* x, double* out, void* workspace,
                 cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
