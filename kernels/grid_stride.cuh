// The grid-stride loop of the memory-bound kernels: blocks of kGridStrideThreads threads, at most
// kGridStrideMaxBlocks of them (enough to fill any current GPU), each thread stepping over the
// elements i, i + every thread of the grid, ... so any n is covered by one launch.
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

constexpr int kGridStrideThreads = 256;
constexpr int kGridStrideMaxBlocks = 4096;

// Blocks for n elements: ceil(n / kGridStrideThreads), between 1 and max_blocks.
inline dim3 grid_stride_blocks(std::int64_t n, int max_blocks = kGridStrideMaxBlocks) {
  const std::int64_t blocks = (n + kGridStrideThreads - 1) / kGridStrideThreads;
  const std::int64_t cap = max_blocks > 0 ? max_blocks : 1;
  return dim3(unsigned(blocks < 1 ? 1 : (blocks < cap ? blocks : cap)));
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels

#define SSMTUNE_GRID_STRIDE(i, n)                                                     \
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += std::int64_t(blockDim.x) * gridDim.x)
