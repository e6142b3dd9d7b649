// RMSNorm forward and backward kernels (rmsnorm.cuh; docs/cuda.md "RMSNorm").
// Forward and dx: one block per row, each thread strides over the row (coalesced), one block
// sum (block_reduce.cuh) per row. dw: no float atomics, so the sum is the same on every run:
// pass 1 writes one partial row per chunk of kRmsnormDwChunkRows rows, pass 2 (column_sum)
// adds the partials in chunk order.
#include <algorithm>

#include "block_reduce.cuh"
#include "column_sum.cuh"
#include "launch.cuh"
#include "rmsnorm.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
// dw pass 1 tiles: 32 columns (one warp, coalesced) x 8 row lanes.
constexpr int kDwCols = 32;
constexpr int kDwRowLanes = 8;

int row_threads(std::int64_t D, int threads) {
  if (threads <= 0) threads = rmsnorm_threads(D);
  return std::clamp((threads + 31) / 32 * 32, 32, 1024);
}

std::int64_t dw_chunks(std::int64_t rows) {
  return (rows + kRmsnormDwChunkRows - 1) / kRmsnormDwChunkRows;
}
}  // namespace

// Twin of cpu::rmsnorm_forward. Block (32 k) per row segment of D columns (a whole row, or one
// of G groups: segment `row` reads w from (row % G) D); dynamic shared: k floats. With
// kAddFirst the row is first x += add (the residual connection; add_rmsnorm_forward), written
// back, and normalised: the twin's add then its norm, in one pass over the row.
template <bool kAddFirst>
__global__ void rmsnorm_forward_kernel(std::int64_t D, std::int64_t G,
                                       const float* __restrict__ add, float* __restrict__ x,
                                       const float* __restrict__ w_all, float eps,
                                       float* __restrict__ y, float* __restrict__ rstd) {
  SSMTUNE_DYNAMIC_SHARED(float, warp_sums);
  const std::int64_t row = blockIdx.x;
  const float* w = w_all + (row % G) * D;
  float* xr = x + row * D;
  float ss = 0.0f;
  for (std::int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    float v = xr[j];
    if (kAddFirst) {
      v = v + add[row * D + j];
      xr[j] = v;  // read back below by this same thread only: no barrier needed
    }
    ss += v * v;
  }
  ss = block_sum(ss, warp_sums);
  // 1 / sqrt, not rsqrtf: rsqrtf is a 2-ulp approximation and this is once per row.
  const float s = 1.0f / sqrtf(ss / float(D) + eps);
  if (threadIdx.x == 0) rstd[row] = s;
  float* yr = y + row * D;
  for (std::int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = w[j] * (xr[j] * s);
}

// Twin of the dx part of cpu::rmsnorm_backward: with xhat = x s and g = dy w,
// dx = s (g - xhat mean(g xhat)); with accumulate, dx += that (the residual's gradient fan-in,
// the twin's norm backward then add).
// Segments as in the forward kernel.
__global__ void rmsnorm_backward_dx_kernel(std::int64_t D, std::int64_t G,
                                           const float* __restrict__ dy,
                                           const float* __restrict__ x,
                                           const float* __restrict__ w_all,
                                           const float* __restrict__ rstd, bool accumulate,
                                           float* __restrict__ dx) {
  SSMTUNE_DYNAMIC_SHARED(float, warp_sums);
  const std::int64_t row = blockIdx.x;
  const float* w = w_all + (row % G) * D;
  const float* xr = x + row * D;
  const float* dyr = dy + row * D;
  const float s = rstd[row];
  float dot = 0.0f;
  for (std::int64_t j = threadIdx.x; j < D; j += blockDim.x) dot += dyr[j] * w[j] * xr[j] * s;
  const float mean = block_sum(dot, warp_sums) / float(D);
  float* dxr = dx + row * D;
  for (std::int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const float g = s * (dyr[j] * w[j] - xr[j] * s * mean);
    dxr[j] = accumulate ? dxr[j] + g : g;
  }
}

// dw pass 1: partial[c, j] = sum over rows r of chunk c of dy[r, j] x[r, j] rstd[r, j / S]
// (S = D / G, the group's width).
// Block (kDwCols, kDwRowLanes); grid (chunks, ceil(D / kDwCols)): D < 2^21 keeps grid.y legal.
// Row lane ty adds rows ty, ty + 8, ... of the chunk; a tree over the lanes in shared memory
// finishes it.   partial: (chunks, D)
__global__ void rmsnorm_dw_partial_kernel(std::int64_t rows, std::int64_t D, std::int64_t G,
                                          const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ rstd,
                                          float* __restrict__ partial) {
  __shared__ float lane_sums[kDwRowLanes][kDwCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const std::int64_t c = blockIdx.x, j = std::int64_t(blockIdx.y) * kDwCols + tx;
  const std::int64_t end = (c + 1) * kRmsnormDwChunkRows, r1 = end < rows ? end : rows;
  float acc = 0.0f;
  const std::int64_t g = j / (D / G);
  if (j < D)
    for (std::int64_t r = c * kRmsnormDwChunkRows + ty; r < r1; r += kDwRowLanes)
      acc += dy[r * D + j] * x[r * D + j] * rstd[r * G + g];
  lane_sums[ty][tx] = acc;
  __syncthreads();
  for (int half = kDwRowLanes / 2; half > 0; half >>= 1) {
    if (ty < half) lane_sums[ty][tx] += lane_sums[ty + half][tx];
    __syncthreads();
  }
  if (ty == 0 && j < D) partial[c * D + j] = lane_sums[0][tx];
}

int rmsnorm_threads(std::int64_t D) {
  const std::int64_t per_four = (D + 3) / 4;
  return int(std::clamp<std::int64_t>((per_four + 31) / 32 * 32, 32, 1024));
}

void rmsnorm_forward(std::int64_t rows, std::int64_t D, const float* x, const float* w, double eps,
                     float* y, float* rstd, cudaStream_t stream, int threads, std::int64_t G) {
  if (rows <= 0 || D <= 0) return;
  const std::int64_t S = D / G;
  const int t = row_threads(S, threads);
  // The plain kernel never writes x (kAddFirst false): the cast only shares one signature.
  SSMTUNE_LAUNCH(rmsnorm_forward_kernel<false>, dim3(unsigned(rows * G)), dim3(t),
                 std::size_t(t / 32) * sizeof(float), stream, S, G, nullptr,
                 const_cast<float*>(x), w, float(eps), y, rstd);
}

void add_rmsnorm_forward(std::int64_t rows, std::int64_t D, const float* x, float* sum,
                         const float* w, double eps, float* y, float* rstd, cudaStream_t stream,
                         int threads) {
  if (rows <= 0 || D <= 0) return;
  const int t = row_threads(D, threads);
  SSMTUNE_LAUNCH(rmsnorm_forward_kernel<true>, dim3(unsigned(rows)), dim3(t),
                 std::size_t(t / 32) * sizeof(float), stream, D, std::int64_t(1), x, sum, w,
                 float(eps), y, rstd);
}

std::int64_t rmsnorm_backward_workspace_floats(std::int64_t rows, std::int64_t D) {
  return dw_chunks(rows) * D;
}

void rmsnorm_backward(std::int64_t rows, std::int64_t D, const float* dy, const float* x,
                      const float* w, const float* rstd, float* dx, float* dw, float* workspace,
                      cudaStream_t stream, int threads, bool accumulate_dx, std::int64_t G) {
  if (rows <= 0 || D <= 0) return;
  const std::int64_t S = D / G;
  const int t = row_threads(S, threads);
  SSMTUNE_LAUNCH(rmsnorm_backward_dx_kernel, dim3(unsigned(rows * G)), dim3(t),
                 std::size_t(t / 32) * sizeof(float), stream, S, G, dy, x, w, rstd, accumulate_dx,
                 dx);
  const std::int64_t chunks = dw_chunks(rows);
  const dim3 grid(unsigned(chunks), unsigned((D + kDwCols - 1) / kDwCols));
  SSMTUNE_LAUNCH(rmsnorm_dw_partial_kernel, grid, dim3(kDwCols, kDwRowLanes), 0, stream, rows, D,
                 G, dy, x, rstd, workspace);
  column_sum(chunks, D, workspace, dw, stream);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
