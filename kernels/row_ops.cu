// Row operations (row_ops.cuh). The row sums: one block of 256 threads per row, each thread
// adding its strided elements in double, then block_reduce in double (a fixed order: the same
// bits on every run); the twins add in column order, so results differ only by double
// rounding. The others: grid-stride loops of the twins' float expressions.
#include "block_reduce.cuh"
#include "grid_stride.cuh"
#include "launch.cuh"
#include "row_ops.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
constexpr int kThreads = kGridStrideThreads;  // also the row kernels' block
dim3 grid_for(std::int64_t n) { return grid_stride_blocks(n); }

// sum_j a[row, j] b[row, j] in double over the block's threads; b null: a^2.
__device__ __forceinline__ double row_dot(std::int64_t row, std::int64_t cols, const float* a,
                                          const float* b, double* scratch) {
  double acc = 0.0;
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const double x = a[row * cols + j];
    acc += x * (b ? double(b[row * cols + j]) : x);
  }
  return block_reduce(acc, scratch, 0.0, SumOp{});
}
}  // namespace

__global__ void row_norms_kernel(std::int64_t cols, const float* __restrict__ a,
                                 float* __restrict__ norm) {
  __shared__ double scratch[kThreads / 32];
  const std::int64_t row = blockIdx.x;
  const double sq = row_dot(row, cols, a, nullptr, scratch);
  if (threadIdx.x == 0) norm[row] = float(sqrt(sq));
}

__global__ void row_dots_div_add_kernel(std::int64_t cols, const float* __restrict__ a,
                                        const float* __restrict__ b, const float* __restrict__ d,
                                        float* __restrict__ out) {
  __shared__ double scratch[kThreads / 32];
  const std::int64_t row = blockIdx.x;
  const double dot = row_dot(row, cols, a, b, scratch);
  if (threadIdx.x == 0) out[row] += float(dot / double(d[row]));
}

__global__ void scale_rows_kernel(std::int64_t rows, std::int64_t cols, const float* __restrict__ f,
                                  const float* __restrict__ a, const float* __restrict__ sub,
                                  float* __restrict__ out) {
  SSMTUNE_GRID_STRIDE(i, rows * cols) out[i] = f[i / cols] * a[i] - (sub ? sub[i] : 0.0f);
}

__global__ void div_kernel(std::int64_t n, const float* __restrict__ a, const float* __restrict__ b,
                           float* __restrict__ out) {
  SSMTUNE_GRID_STRIDE(i, n) out[i] = a[i] / b[i];
}

void row_norms(std::int64_t rows, std::int64_t cols, const float* a, float* norm,
               cudaStream_t stream) {
  if (rows > 0)
    SSMTUNE_LAUNCH(row_norms_kernel, dim3(unsigned(rows)), dim3(kThreads), 0, stream, cols, a,
                   norm);
}
void row_dots_div_add(std::int64_t rows, std::int64_t cols, const float* a, const float* b,
                      const float* d, float* out, cudaStream_t stream) {
  if (rows > 0)
    SSMTUNE_LAUNCH(row_dots_div_add_kernel, dim3(unsigned(rows)), dim3(kThreads), 0, stream, cols,
                   a, b, d, out);
}
void scale_rows(std::int64_t rows, std::int64_t cols, const float* f, const float* a,
                const float* sub, float* out, cudaStream_t stream) {
  if (rows > 0 && cols > 0)
    SSMTUNE_LAUNCH(scale_rows_kernel, grid_for(rows * cols), dim3(kThreads), 0, stream, rows, cols,
                   f, a, sub, out);
}
void div(std::int64_t n, const float* a, const float* b, float* out, cudaStream_t stream) {
  if (n > 0) SSMTUNE_LAUNCH(div_kernel, grid_for(n), dim3(kThreads), 0, stream, n, a, b, out);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
