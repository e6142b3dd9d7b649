// Small tensor ops (tensor_ops.cuh): grid-stride loops of 256 threads, each the one-line loop
// of its CPU twin in cpu_backend.cpp. bias_backward is conv1d's deterministic dbias scheme:
// fixed 64-row chunks summed in order, then the chunks in order (column_sum).
#include "bf16.cuh"
#include "column_sum.cuh"
#include "counter_rng.h"
#include "grid_stride.cuh"
#include "launch.cuh"
#include "tensor_ops.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
constexpr int kThreads = kGridStrideThreads;
dim3 grid_for(std::int64_t n) { return grid_stride_blocks(n); }
}  // namespace

__global__ void add_kernel(std::int64_t n, const float* __restrict__ x, float* __restrict__ y) {
  SSMTUNE_GRID_STRIDE(i, n) y[i] += x[i];
}
__global__ void scale_kernel(std::int64_t n, float alpha, float* __restrict__ x) {
  SSMTUNE_GRID_STRIDE(i, n) x[i] *= alpha;
}
__global__ void mul_kernel(std::int64_t n, const float* __restrict__ a, const float* __restrict__ b,
                           float* __restrict__ out) {
  SSMTUNE_GRID_STRIDE(i, n) out[i] = a[i] * b[i];
}
__global__ void relu_forward_kernel(std::int64_t n, const float* __restrict__ x,
                                    float* __restrict__ y) {
  SSMTUNE_GRID_STRIDE(i, n) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
__global__ void relu_backward_kernel(std::int64_t n, const float* __restrict__ dy,
                                     const float* __restrict__ x, float* __restrict__ dx) {
  SSMTUNE_GRID_STRIDE(i, n) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}
__global__ void dropout_mask_kernel(std::int64_t n, std::uint64_t key, std::uint64_t threshold,
                                    float keep, float* __restrict__ keep_scale) {
  SSMTUNE_GRID_STRIDE(i, n) {
    keep_scale[i] = dropout_keeps(key, std::uint64_t(i), threshold) ? keep : 0.0f;
  }
}
__global__ void clamp_forward_kernel(std::int64_t n, float lo, float hi,
                                     const float* __restrict__ x, float* __restrict__ y) {
  SSMTUNE_GRID_STRIDE(i, n) y[i] = fminf(fmaxf(x[i], lo), hi);
}
__global__ void clamp_backward_kernel(std::int64_t n, float lo, float hi,
                                      const float* __restrict__ dy, const float* __restrict__ x,
                                      float* __restrict__ dx) {
  SSMTUNE_GRID_STRIDE(i, n) dx[i] = x[i] >= lo && x[i] <= hi ? dy[i] : 0.0f;
}
__global__ void ssm_A_forward_kernel(std::int64_t n, const float* __restrict__ A_log,
                                     float* __restrict__ A) {
  SSMTUNE_GRID_STRIDE(i, n) A[i] = -expf(A_log[i]);
}
__global__ void ssm_A_backward_kernel(std::int64_t n, const float* __restrict__ dA,
                                      const float* __restrict__ A, float* __restrict__ dA_log) {
  SSMTUNE_GRID_STRIDE(i, n) dA_log[i] += dA[i] * A[i];
}
__global__ void add_bias_kernel(std::int64_t rows, std::int64_t cols,
                                const float* __restrict__ bias, float* __restrict__ y) {
  SSMTUNE_GRID_STRIDE(i, rows * cols) y[i] += bias[i % cols];
}

// Pass 1 of bias_backward: grid (chunks, ceil(cols / blockDim.x)); thread (chunk, j) sums the
// chunk's rows in order into partial[chunk, j].
__global__ void bias_partial_kernel(std::int64_t rows, std::int64_t cols,
                                    const float* __restrict__ dy, float* __restrict__ partial) {
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t j = std::int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const std::int64_t r0 = chunk * kBiasChunkRows;
  const std::int64_t r1 = r0 + kBiasChunkRows < rows ? r0 + kBiasChunkRows : rows;
  float acc = 0.0f;
  for (std::int64_t r = r0; r < r1; ++r) acc += dy[r * cols + j];
  partial[chunk * cols + j] = acc;
}

// One element (r, j) of the narrow side per thread; bytes moved as 4- or 8-byte words.
template <class W>
__global__ void copy_columns_kernel(std::int64_t rows, std::int64_t S, std::int64_t col0,
                                    std::int64_t n, bool to_wide, W* __restrict__ wide,
                                    W* __restrict__ narrow) {
  SSMTUNE_GRID_STRIDE(i, rows * n) {
    const std::int64_t r = i / n, j = i % n;
    W& w = wide[r * S + col0 + j];
    if (to_wide)
      w = narrow[i];
    else
      narrow[i] = w;
  }
}

// Twin of core/dtype.cpp's f32_to_bf16, on the bits.
__global__ void to_bf16_kernel(std::int64_t n, const float* __restrict__ x,
                               std::uint16_t* __restrict__ y) {
  SSMTUNE_GRID_STRIDE(i, n) {
    std::uint32_t bits;
    memcpy(&bits, &x[i], 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
      y[i] = std::uint16_t((bits >> 16) | 0x40u);
    } else {
      bits += 0x7fffu + ((bits >> 16) & 1u);
      y[i] = std::uint16_t(bits >> 16);
    }
  }
}

// Twin of core/dtype.h's bf16_to_f32.
__global__ void from_bf16_kernel(std::int64_t n, const std::uint16_t* __restrict__ x,
                                 float* __restrict__ y) {
  SSMTUNE_GRID_STRIDE(i, n) y[i] = bf16_bits_to_float(x[i]);
}

__global__ void index_add_kernel(std::int64_t k, const float* __restrict__ values,
                                 const std::int64_t* __restrict__ index, float* __restrict__ dst) {
  SSMTUNE_GRID_STRIDE(i, k) dst[index[i]] += values[i];  // indices are distinct: no race
}
__global__ void index_gather_kernel(std::int64_t k, const float* __restrict__ src,
                                    const std::int64_t* __restrict__ index,
                                    float* __restrict__ out) {
  SSMTUNE_GRID_STRIDE(i, k) out[i] = src[index[i]];
}

void add(std::int64_t n, const float* x, float* y, cudaStream_t stream) {
  if (n > 0) SSMTUNE_LAUNCH(add_kernel, grid_for(n), dim3(kThreads), 0, stream, n, x, y);
}
void scale(std::int64_t n, float alpha, float* x, cudaStream_t stream) {
  if (n > 0) SSMTUNE_LAUNCH(scale_kernel, grid_for(n), dim3(kThreads), 0, stream, n, alpha, x);
}
void mul(std::int64_t n, const float* a, const float* b, float* out, cudaStream_t stream) {
  if (n > 0) SSMTUNE_LAUNCH(mul_kernel, grid_for(n), dim3(kThreads), 0, stream, n, a, b, out);
}
void dropout_mask(std::int64_t n, std::uint64_t key, std::uint64_t threshold, float keep,
                  float* keep_scale, cudaStream_t stream) {
  if (n > 0)
    SSMTUNE_LAUNCH(dropout_mask_kernel, grid_for(n), dim3(kThreads), 0, stream, n, key, threshold,
                   keep, keep_scale);
}
void relu_forward(std::int64_t n, const float* x, float* y, cudaStream_t stream) {
  if (n > 0) SSMTUNE_LAUNCH(relu_forward_kernel, grid_for(n), dim3(kThreads), 0, stream, n, x, y);
}
void relu_backward(std::int64_t n, const float* dy, const float* x, float* dx,
                   cudaStream_t stream) {
  if (n > 0)
    SSMTUNE_LAUNCH(relu_backward_kernel, grid_for(n), dim3(kThreads), 0, stream, n, dy, x, dx);
}
void clamp_forward(std::int64_t n, float lo, float hi, const float* x, float* y,
                   cudaStream_t stream) {
  if (n > 0)
    SSMTUNE_LAUNCH(clamp_forward_kernel, grid_for(n), dim3(kThreads), 0, stream, n, lo, hi, x, y);
}
void clamp_backward(std::int64_t n, float lo, float hi, const float* dy, const float* x, float* dx,
                    cudaStream_t stream) {
  if (n > 0)
    SSMTUNE_LAUNCH(clamp_backward_kernel, grid_for(n), dim3(kThreads), 0, stream, n, lo, hi, dy,
                   x, dx);
}
void ssm_A_forward(std::int64_t n, const float* A_log, float* A, cudaStream_t stream) {
  if (n > 0)
    SSMTUNE_LAUNCH(ssm_A_forward_kernel, grid_for(n), dim3(kThreads), 0, stream, n, A_log, A);
}
void ssm_A_backward(std::int64_t n, const float* dA, const float* A, float* dA_log,
                    cudaStream_t stream) {
  if (n > 0)
    SSMTUNE_LAUNCH(ssm_A_backward_kernel, grid_for(n), dim3(kThreads), 0, stream, n, dA, A, dA_log);
}
void add_bias(std::int64_t rows, std::int64_t cols, const float* bias, float* y,
              cudaStream_t stream) {
  if (rows > 0 && cols > 0)
    SSMTUNE_LAUNCH(add_bias_kernel, grid_for(rows * cols), dim3(kThreads), 0, stream, rows, cols,
                   bias, y);
}

std::int64_t bias_backward_workspace_floats(std::int64_t rows, std::int64_t cols) {
  return (rows + kBiasChunkRows - 1) / kBiasChunkRows * cols;
}

void bias_backward(std::int64_t rows, std::int64_t cols, const float* dy, float* dbias,
                   float* workspace, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const std::int64_t chunks = (rows + kBiasChunkRows - 1) / kBiasChunkRows;
  const dim3 grid(unsigned(chunks), unsigned((cols + kThreads - 1) / kThreads));
  SSMTUNE_LAUNCH(bias_partial_kernel, grid, dim3(kThreads), 0, stream, rows, cols, dy, workspace);
  column_sum(chunks, cols, workspace, dbias, stream);
}

void copy_columns(std::int64_t rows, std::int64_t S, std::int64_t col0, std::int64_t n,
                  bool to_wide, void* wide, void* narrow, int elem_bytes, cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return;
  if (elem_bytes == 8)
    SSMTUNE_LAUNCH(copy_columns_kernel<std::uint64_t>, grid_for(rows * n), dim3(kThreads), 0,
                   stream, rows, S, col0, n, to_wide, static_cast<std::uint64_t*>(wide),
                   static_cast<std::uint64_t*>(narrow));
  else
    SSMTUNE_LAUNCH(copy_columns_kernel<std::uint32_t>, grid_for(rows * n), dim3(kThreads), 0,
                   stream, rows, S, col0, n, to_wide, static_cast<std::uint32_t*>(wide),
                   static_cast<std::uint32_t*>(narrow));
}

void to_bf16(std::int64_t n, const float* x, std::uint16_t* y, cudaStream_t stream) {
  if (n > 0) SSMTUNE_LAUNCH(to_bf16_kernel, grid_for(n), dim3(kThreads), 0, stream, n, x, y);
}

void from_bf16(std::int64_t n, const std::uint16_t* x, float* y, cudaStream_t stream) {
  if (n > 0) SSMTUNE_LAUNCH(from_bf16_kernel, grid_for(n), dim3(kThreads), 0, stream, n, x, y);
}

void index_add(std::int64_t k, const float* values, const std::int64_t* index, float* dst,
               cudaStream_t stream) {
  if (k > 0)
    SSMTUNE_LAUNCH(index_add_kernel, grid_for(k), dim3(kThreads), 0, stream, k, values, index, dst);
}
void index_gather(std::int64_t k, const float* src, const std::int64_t* index, float* out,
                  cudaStream_t stream) {
  if (k > 0)
    SSMTUNE_LAUNCH(index_gather_kernel, grid_for(k), dim3(kThreads), 0, stream, k, src, index, out);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
