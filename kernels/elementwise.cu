// Elementwise kernels (elementwise.cuh): grid-stride loops, 256 threads a block, the math of
// the CPU twins in lib/backend/cpu/elementwise_cpu.cpp written the same way. expf, not the
// approximate __expf: these are memory-bound, so the exact exp costs nothing measurable.
#include "elementwise.cuh"
#include "grid_stride.cuh"
#include "launch.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
constexpr int kThreads = kGridStrideThreads;
constexpr float kSoftplusThreshold = 20.0f;

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
// d silu(v) / dv = s (1 + v (1 - s)), s = sigmoid(v)
__device__ __forceinline__ float silu_grad(float v) {
  const float s = sigmoid(v);
  return s * (1.0f + v * (1.0f - s));
}

dim3 grid_for(std::int64_t n, int max_blocks) { return grid_stride_blocks(n, max_blocks); }
}  // namespace

// Twin of cpu::silu_forward.
__global__ void silu_forward_kernel(std::int64_t n, const float* __restrict__ x,
                                    float* __restrict__ y) {
  SSMTUNE_GRID_STRIDE(i, n) y[i] = x[i] * sigmoid(x[i]);
}

// Twin of cpu::silu_backward.
__global__ void silu_backward_kernel(std::int64_t n, const float* __restrict__ dy,
                                     const float* __restrict__ x, float* __restrict__ dx) {
  SSMTUNE_GRID_STRIDE(i, n) dx[i] = dy[i] * silu_grad(x[i]);
}

// Twin of cpu::softplus_forward.
__global__ void softplus_forward_kernel(std::int64_t n, const float* __restrict__ x,
                                        float* __restrict__ y) {
  SSMTUNE_GRID_STRIDE(i, n) y[i] = x[i] > kSoftplusThreshold ? x[i] : log1pf(expf(x[i]));
}

// Twin of cpu::softplus_backward.
__global__ void softplus_backward_kernel(std::int64_t n, const float* __restrict__ dy,
                                         const float* __restrict__ x, float* __restrict__ dx) {
  SSMTUNE_GRID_STRIDE(i, n) dx[i] = x[i] > kSoftplusThreshold ? dy[i] : dy[i] * sigmoid(x[i]);
}

// Twin of cpu::gate_forward.
__global__ void gate_forward_kernel(std::int64_t n, const float* __restrict__ y,
                                    const float* __restrict__ z, float* __restrict__ out) {
  SSMTUNE_GRID_STRIDE(i, n) out[i] = y[i] * (z[i] * sigmoid(z[i]));
}

// Twin of cpu::gate_backward.
__global__ void gate_backward_kernel(std::int64_t n, const float* __restrict__ dout,
                                     const float* __restrict__ y, const float* __restrict__ z,
                                     float* __restrict__ dy, float* __restrict__ dz) {
  SSMTUNE_GRID_STRIDE(i, n) {
    const float g = dout[i];
    dz[i] = g * y[i] * silu_grad(z[i]);
    dy[i] = g * (z[i] * sigmoid(z[i]));
  }
}

#undef SSMTUNE_GRID_STRIDE

void silu_forward(std::int64_t n, const float* x, float* y, cudaStream_t stream, int max_blocks) {
  if (n <= 0) return;
  SSMTUNE_LAUNCH(silu_forward_kernel, grid_for(n, max_blocks), dim3(kThreads), 0, stream, n, x, y);
}

void silu_backward(std::int64_t n, const float* dy, const float* x, float* dx, cudaStream_t stream,
                   int max_blocks) {
  if (n <= 0) return;
  SSMTUNE_LAUNCH(silu_backward_kernel, grid_for(n, max_blocks), dim3(kThreads), 0, stream, n, dy, x,
                 dx);
}

void softplus_forward(std::int64_t n, const float* x, float* y, cudaStream_t stream,
                      int max_blocks) {
  if (n <= 0) return;
  SSMTUNE_LAUNCH(softplus_forward_kernel, grid_for(n, max_blocks), dim3(kThreads), 0, stream, n, x,
                 y);
}

void softplus_backward(std::int64_t n, const float* dy, const float* x, float* dx,
                       cudaStream_t stream, int max_blocks) {
  if (n <= 0) return;
  SSMTUNE_LAUNCH(softplus_backward_kernel, grid_for(n, max_blocks), dim3(kThreads), 0, stream, n,
                 dy, x, dx);
}

void gate_forward(std::int64_t n, const float* y, const float* z, float* out, cudaStream_t stream,
                  int max_blocks) {
  if (n <= 0) return;
  SSMTUNE_LAUNCH(gate_forward_kernel, grid_for(n, max_blocks), dim3(kThreads), 0, stream, n, y, z,
                 out);
}

void gate_backward(std::int64_t n, const float* dout, const float* y, const float* z, float* dy,
                   float* dz, cudaStream_t stream, int max_blocks) {
  if (n <= 0) return;
  SSMTUNE_LAUNCH(gate_backward_kernel, grid_for(n, max_blocks), dim3(kThreads), 0, stream, n, dout,
                 y, z, dy, dz);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
