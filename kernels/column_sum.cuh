// Column sums, float32. CPU twin: ssmtune::cpu::column_sum (lib/backend/cpu/rmsnorm_cpu.cpp).
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// dst[j] += sum_r src[r, j], rows added in row order (the CPU twin's order, so the results
// agree to the bit).   src: (rows, cols)   dst: (cols)
void column_sum(std::int64_t rows, std::int64_t cols, const float* src, float* dst,
                cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
