// One thread per column: adjacent threads read adjacent columns of a row, so every row is read
// in whole cache lines. Meant for short inputs (a few hundred rows of partial sums); long ones
// want the two-pass scheme of rmsnorm.cu's dw.
#include "column_sum.cuh"
#include "launch.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
constexpr int kThreads = 256;
}

// Twin of cpu::column_sum.
__global__ void column_sum_kernel(std::int64_t rows, std::int64_t cols,
                                  const float* __restrict__ src, float* __restrict__ dst) {
  const std::int64_t j = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float acc = 0.0f;
  for (std::int64_t r = 0; r < rows; ++r) acc += src[r * cols + j];
  dst[j] += acc;
}

void column_sum(std::int64_t rows, std::int64_t cols, const float* src, float* dst,
                cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const unsigned blocks = unsigned((cols + kThreads - 1) / kThreads);
  SSMTUNE_LAUNCH(column_sum_kernel, dim3(blocks), dim3(kThreads), 0, stream, rows, cols, src, dst);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
