// Row operations on weight-sized (rows, cols) tensors, float32, for DoRA (its weight norms and
// the rescaled direction). CPU twins: the CPU backend's row_norms, scale_rows,
// row_dots_div_add and div (lib/backend/cpu/cpu_backend.cpp). Device pointers; queued on
// `stream`. Row sums run in double, as the twins', one block per row.
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// norm[i] = float(sqrt(sum_j double(a[i, j])^2)).   a: (rows, cols)   norm: (rows)
void row_norms(std::int64_t rows, std::int64_t cols, const float* a, float* norm,
               cudaStream_t stream);
// out[i, j] = f[i] a[i, j] - sub[i, j] (sub null: 0).   f: (rows)
void scale_rows(std::int64_t rows, std::int64_t cols, const float* f, const float* a,
                const float* sub, float* out, cudaStream_t stream);
// out[i] += float((sum_j double(a[i, j]) b[i, j]) / double(d[i])).   d, out: (rows)
void row_dots_div_add(std::int64_t rows, std::int64_t cols, const float* a, const float* b,
                      const float* d, float* out, cudaStream_t stream);
// out = a / b, n elements
void div(std::int64_t n, const float* a, const float* b, float* out, cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
