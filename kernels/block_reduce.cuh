// Sums across a warp and across a 1-D block: shuffles inside each warp, one shared-memory
// slot per warp between them. The association order is fixed by the block size alone, so a
// result is the same on every run, and every thread receives the same bits (in a butterfly
// each pair of lanes adds the same two numbers).
#pragma once

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// Every lane of a full warp gets the sum of v over the warp.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Every thread of the block gets the sum of v over the block. blockDim = (32 k, 1, 1), k <= 32;
// scratch: k floats of shared memory. Ends with a barrier, so the caller may reuse scratch.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();  // every warp's partial is written
  v = warp_sum(lane < n_warps ? scratch[lane] : 0.0f);
  __syncthreads();  // every warp has read them
  return v;
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
