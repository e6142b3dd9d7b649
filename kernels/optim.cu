// AdamW and the sum of squares of the global gradient norm (optim.cuh; docs/cuda.md "Token and
// optimizer kernels"). AdamW: an elementwise grid-stride loop in the twin's float operations.
// Sum of squares: one block per fixed block of the twin's 8192 elements, each adding its
// squares in double (a shuffle tree), the partials in a workspace; then one warp adds the
// partials in block order. The split depends on n alone, so the result is the same on every
// GPU and run.
#include <cmath>

#include "block_reduce.cuh"
#include "grid_stride.cuh"
#include "launch.cuh"
#include "optim.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
// cpu::sum_squares' block: a constant, not derived from the GPU, so the order of the double
// additions (hence the bits) does not change with the device.
constexpr std::int64_t kSquaresBlock = 8192;
constexpr int kSquaresThreads = 256;

std::int64_t square_blocks(std::int64_t n) { return (n + kSquaresBlock - 1) / kSquaresBlock; }
}  // namespace

// Twin of cpu::adamw_update's loop, line for line: the same float operations in the same order,
// so a g++ build (no FMA contraction at the x86-64 baseline) gives the twin's bits; nvcc
// contracts some products into FMAs (an ulp or so per step).   param, grad, m, v: (n)
__global__ void adamw_update_kernel(std::int64_t n, float* __restrict__ param,
                                    const float* __restrict__ grad, float* __restrict__ m,
                                    float* __restrict__ v, AdamWScalars s) {
  SSMTUNE_GRID_STRIDE(i, n) {
    const float g = grad[i];
    float p = param[i] * s.decay;
    const float mi = m[i] + s.w1 * (g - m[i]);  // lerp(m, g, 1 - beta1), as torch
    const float vi = v[i] * s.b2 + s.w2 * g * g;
    const float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
    p += -s.step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
  }
}

// Pass 1 of the twin cpu::sum_squares: partial[b] = sum of double(x[i])^2 over block b's 8192
// elements (fewer in the last), thread k taking i = k, k + 256, ... (coalesced), then a tree.
// x: (n)   partial: (ceil(n / 8192))
__global__ void sum_squares_partial_kernel(std::int64_t n, const float* __restrict__ x,
                                           double* __restrict__ partial) {
  __shared__ double scratch[kSquaresThreads / 32];
  const std::int64_t begin = std::int64_t(blockIdx.x) * kSquaresBlock;
  const std::int64_t end = begin + kSquaresBlock < n ? begin + kSquaresBlock : n;
  double s = 0.0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double xi = x[i];
    s += xi * xi;
  }
  s = block_reduce(s, scratch, 0.0, SumOp{});
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2: one warp adds the partials in block order, as the twin's closing loop.
__global__ void sum_squares_total_kernel(std::int64_t blocks, const double* __restrict__ partial,
                                         double* __restrict__ out) {
  const double total = warp_ordered_sum(blocks, partial);
  if (threadIdx.x == 0) *out = total;
}

// cpu::adamw_update's scalars, the same expressions in the same order (torch computes them as
// Python floats, i.e. double, and the update uses them in the parameters' dtype).
AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                           std::int64_t step) {
  const double bias_correction1 = 1.0 - std::pow(beta1, double(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, double(step));
  AdamWScalars s;
  s.decay = float(1.0 - lr * weight_decay);
  s.w1 = float(1.0 - beta1);
  s.b2 = float(beta2);
  s.w2 = float(1.0 - beta2);
  s.step_size = float(lr / bias_correction1);
  s.bc2_sqrt = float(std::sqrt(bias_correction2));
  s.eps = float(eps);
  return s;
}

void adamw_update(std::int64_t n, float* param, const float* grad, float* m, float* v,
                  const AdamWScalars& s, cudaStream_t stream) {
  if (n <= 0) return;
  SSMTUNE_LAUNCH(adamw_update_kernel, grid_stride_blocks(n), dim3(kGridStrideThreads), 0, stream, n,
                 param, grad, m, v, s);
}

std::int64_t sum_squares_workspace_bytes(std::int64_t n) {
  return (n > 0 ? square_blocks(n) : 0) * std::int64_t(sizeof(double));
}

void sum_squares(std::int64_t n, const float* x, double* out, void* workspace,
                 cudaStream_t stream) {
  const std::int64_t blocks = n > 0 ? square_blocks(n) : 0;
  double* partial = static_cast<double*>(workspace);
  if (blocks > 0)
    SSMTUNE_LAUNCH(sum_squares_partial_kernel, dim3(unsigned(blocks)), dim3(kSquaresThreads), 0,
                   stream, n, x, partial);
  // Also for n == 0, so that *out reads 0, as the twin's.
  SSMTUNE_LAUNCH(sum_squares_total_kernel, dim3(1), dim3(32), 0, stream, blocks, partial, out);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
