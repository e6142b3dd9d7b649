// Causal depthwise conv1d (conv1d.cuh). Forward and dx: one thread per output element, a
// grid-stride loop over (b, t, e) with e fastest, so a warp reads 32 neighbouring channels of one
// time step (coalesced) and the K taps of w stay in registers. dw and dbias: no float atomics
// (runs repeat exactly): pass 1 gives each (chunk of kConv1dDwChunkRows rows, channel) one thread
// that sums its rows in order into a partial; pass 2 adds the partials in chunk order
// (column_sum). The conv is memory-bound (K multiply-adds per element read), so nothing here is
// tiled through shared memory.
#include "column_sum.cuh"
#include "conv1d.cuh"
#include "grid_stride.cuh"
#include "launch.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
constexpr int kThreads = kGridStrideThreads;

std::int64_t dw_chunks(std::int64_t rows) {
  return (rows + kConv1dDwChunkRows - 1) / kConv1dDwChunkRows;
}

dim3 grid_for(std::int64_t n) { return grid_stride_blocks(n); }
}  // namespace

// Twin of cpu::conv1d_forward (+ cpu::silu_forward when u is given).
__global__ void conv1d_forward_kernel(std::int64_t B, std::int64_t L, std::int64_t E, int K,
                                      const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ bias, float* __restrict__ c,
                                      float* __restrict__ u) {
  const std::int64_t n = B * L * E;
  SSMTUNE_GRID_STRIDE(i, n) {
    const std::int64_t e = i % E, t = (i / E) % L;
    // The twin's order: the bias first, then the taps k = 0 .. K-1.
    float acc = bias ? bias[e] : 0.0f;
    for (int k = 0; k < K; ++k) {
      const std::int64_t src = t - (K - 1) + k;
      if (src >= 0) acc += w[e * K + k] * x[i + (src - t) * E];
    }
    c[i] = acc;
    if (u) u[i] = acc / (1.0f + expf(-acc));
  }
}

// Twin of cpu::conv1d_backward's dx: dx[t] = sum_k w[k] dc[t + (K-1) - k], k = 0 .. K-1.
__global__ void conv1d_backward_dx_kernel(std::int64_t B, std::int64_t L, std::int64_t E, int K,
                                          const float* __restrict__ dc, const float* __restrict__ w,
                                          float* __restrict__ dx) {
  const std::int64_t n = B * L * E;
  SSMTUNE_GRID_STRIDE(i, n) {
    const std::int64_t e = i % E, t = (i / E) % L;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
      const std::int64_t dst = t + (K - 1) - k;
      if (dst < L) acc += w[e * K + k] * dc[i + (dst - t) * E];
    }
    dx[i] = acc;
  }
}

// Pass 1 of dw / dbias: grid (chunks, ceil(E / blockDim.x)); thread (chunk, e) sums rows
// r = b L + t of its chunk in order. partial: (chunks, E K) of dw, then (chunks, E) of dbias.
__global__ void conv1d_dw_partial_kernel(std::int64_t B, std::int64_t L, std::int64_t E, int K,
                                         const float* __restrict__ dc, const float* __restrict__ x,
                                         float* __restrict__ partial) {
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t e = std::int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (e >= E) return;
  const std::int64_t rows = B * L, r0 = chunk * kConv1dDwChunkRows;
  const std::int64_t r1 = r0 + kConv1dDwChunkRows < rows ? r0 + kConv1dDwChunkRows : rows;
  float dw[kConv1dMaxWidth] = {};
  float db = 0.0f;
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::int64_t t = r % L;
    const float g = dc[r * E + e];
    db += g;
    // Unrolled to the fixed bound with k < K tested inside, so dw[] is indexed by constants
    // and stays in registers (a loop to K would put it in local memory).
    SSMTUNE_UNROLL
    for (int k = 0; k < kConv1dMaxWidth; ++k) {
      const std::int64_t src = t - (K - 1) + k;
      if (k < K && src >= 0) dw[k] += g * x[(r + src - t) * E + e];
    }
  }
  float* out_dw = partial + chunk * E * K;
  SSMTUNE_UNROLL
  for (int k = 0; k < kConv1dMaxWidth; ++k)
    if (k < K) out_dw[e * K + k] = dw[k];
  partial[gridDim.x * E * K + chunk * E + e] = db;
}

void conv1d_forward(std::int64_t B, std::int64_t L, std::int64_t E, int K, const float* x,
                    const float* w, const float* bias, float* c, float* u, cudaStream_t stream) {
  const std::int64_t n = B * L * E;
  if (n <= 0 || K < 1 || K > kConv1dMaxWidth) return;
  SSMTUNE_LAUNCH(conv1d_forward_kernel, grid_for(n), dim3(kThreads), 0, stream, B, L, E, K, x, w,
                 bias, c, u);
}

std::int64_t conv1d_backward_workspace_floats(std::int64_t B, std::int64_t L, std::int64_t E,
                                              int K) {
  return dw_chunks(B * L) * (E * K + E);
}

void conv1d_backward(std::int64_t B, std::int64_t L, std::int64_t E, int K, const float* dc,
                     const float* x, const float* w, float* dx, float* dw, float* dbias,
                     float* workspace, cudaStream_t stream) {
  const std::int64_t n = B * L * E;
  if (n <= 0 || K < 1 || K > kConv1dMaxWidth) return;
  SSMTUNE_LAUNCH(conv1d_backward_dx_kernel, grid_for(n), dim3(kThreads), 0, stream, B, L, E, K, dc,
                 w, dx);
  if (!dw && !dbias) return;  // frozen conv: no weight gradients to form
  const std::int64_t chunks = dw_chunks(B * L);
  const dim3 grid(unsigned(chunks), unsigned((E + kThreads - 1) / kThreads));
  SSMTUNE_LAUNCH(conv1d_dw_partial_kernel, grid, dim3(kThreads), 0, stream, B, L, E, K, dc, x,
                 workspace);
  // Pass 2: the partials added in chunk order.
  if (dw) column_sum(chunks, E * K, workspace, dw, stream);
  if (dbias) column_sum(chunks, E, workspace + chunks * E * K, dbias, stream);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
