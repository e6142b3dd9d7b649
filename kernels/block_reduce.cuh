// Reductions across a warp and across a 1-D block: shuffles inside each warp, one shared-memory
// slot per warp between them. The association order is fixed by the block size alone, so a
// result is the same on every run, and every thread receives the same bits (in a butterfly
// each pair of lanes combines the same two numbers). warp_ordered_sum adds in index order
// instead, for totals that must follow a sequential loop's order.
#pragma once

#include <cstdint>

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

// The combining functions of warp_reduce / block_reduce. Both are commutative to the bit, which
// is what lets every lane of a butterfly end with the same bits.
struct SumOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// warp_sum and block_sum for any T and op (double sums, float maxima). Every lane of a full warp
// gets op over the warp's v.
template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Every thread of the block gets op over the block's v. blockDim = (32 k, 1, 1), k <= 32;
// scratch: k values of shared memory; identity: op(identity, x) == x. Ends with a barrier, so
// the caller may reuse scratch, and every thread's reads before the call are finished after it
// (what lets cross_entropy_backward overwrite its logits in place).
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, T* scratch, T identity, Op op) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();  // every warp's partial is written
  v = warp_reduce(lane < n_warps ? scratch[lane] : identity, op);
  __syncthreads();  // every warp has read them
  return v;
}

// x[0] + x[1] + ... + x[n-1] added one after another in index order, as a sequential loop does
// (starting from 0.0), by one full warp. Each round the lanes load 128 consecutive values (four
// coalesced loads in flight, 0.0 past the end: adding +0.0 changes no sum that is not -0.0),
// and every lane adds them in order, fetched by shuffles, so every lane returns the same bits.
// The chain of n dependent double adds (~8 cycles each) is the cost: ~70 us for 16k values.
__device__ __forceinline__ double warp_ordered_sum(std::int64_t n, const double* x) {
  constexpr int kLoads = 4;
  const unsigned lane = threadIdx.x & 31u;
  double total = 0.0;
  for (std::int64_t base = 0; base < n; base += 32 * kLoads) {
    double v[kLoads];
    for (int c = 0; c < kLoads; ++c) {
      const std::int64_t i = base + 32 * c + lane;
      v[c] = i < n ? x[i] : 0.0;
    }
    for (int c = 0; c < kLoads; ++c)
      for (int k = 0; k < 32; ++k) total += __shfl_sync(0xffffffffu, v[c], k);
  }
  return total;
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
