// Mixture-of-experts routing (moe.cuh); design in docs/cuda.md "MoE routing kernels".
//
// Router: one warp per token row (X <= kMoeMaxExperts is small: Jamba has 16 experts); lane l
// holds experts l, l + 32, ... The row max is a butterfly of fmaxf (exact in any order); the sum
// of the exps and, in backward, sum_e g p are added in expert order by shuffles
// (warp_ordered_add), the twin's loop order, so the emulator gives the twin's bits. Top-k is k
// selection passes: pass j takes the first expert in ranks_before's order among those ranked
// after pass j-1's pick, each lane over its experts, then a butterfly over the lanes; the order
// is total, so every lane ends with the same pick and ties cannot make it depend on the lanes.
//
// Dispatch and its backward: grid-stride loops, D fastest, so a warp moves 32 neighbouring
// floats of one row. Combine and its backward: one block per token row, threads over D, the k
// choices in j order inside each thread; dweights by a double block reduction. No float
// atomics anywhere: every output element has one writer and a fixed order of additions.
#include <cmath>

#include "block_reduce.cuh"
#include "grid_stride.cuh"
#include "launch.cuh"
#include "moe.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {

constexpr int kRouterWarps = 4;  // token rows per router block
constexpr int kRouterThreads = 32 * kRouterWarps;
constexpr int kRowThreads = 128;  // combine: threads per token row (D = 4096: 32 columns each)
constexpr unsigned kFullMask = 0xffffffffu;

// total + v of lane 0, then lane 1, ..., lane 31: a sequential loop's order, and every lane
// returns the same bits.
__device__ __forceinline__ double warp_ordered_add(double total, double v) {
  for (int src = 0; src < 32; ++src) total += __shfl_sync(kFullMask, v, src);
  return total;
}

// Twin of ranks_before in lib/backend/cpu/moe_cpu.cpp: whether expert a (probability pa) comes
// before expert b in the top-k order: a NaN first (torch.topk's order), then the larger
// probability, then the lower index. (x != x is the NaN test on both builds.)
__device__ __forceinline__ bool ranks_before(float pa, int a, float pb, int b) {
  const bool nan_a = pa != pa, nan_b = pb != pb;
  if (nan_a != nan_b) return nan_a;
  if (!nan_a && pa != pb) return pa > pb;
  return a < b;
}

// The upstream gradient of probability e of one row: the aux loss's term (dprobs_extra's row,
// or null), then the dweights of the choices that picked e, in j order (the twin's g).
__device__ __forceinline__ double upstream(int e, std::int64_t k, const std::int64_t* experts,
                                           const float* dweights, const float* extra) {
  double g = extra ? double(extra[e]) : 0.0;
  for (std::int64_t j = 0; j < k; ++j)
    if (experts[j] == e) g += double(dweights[j]);
  return g;
}

// Row `src` of the (n, D) grouped buffer at column c, or NaN for an entry outside [0, n).
__device__ __forceinline__ float grouped_at(const float* grouped, std::int64_t src, std::int64_t n,
                                            std::int64_t D, std::int64_t c) {
  return src >= 0 && src < n ? grouped[src * D + c] : NAN;
}

}  // namespace

// Twin of cpu::moe_router_forward. kRouterThreads threads, warp w of block b on row 4 b + w.
// No __launch_bounds__ on the router kernels: with (kRouterThreads) ptxas aimed at 16 blocks
// per SM, capped backward at 32 registers and spilled 4 bytes on sm_90; unbounded it takes 35.
__global__ void moe_router_forward_kernel(MoeRouterShape s, const float* __restrict__ logits,
                                          float* __restrict__ probs, float* __restrict__ weights,
                                          std::int64_t* __restrict__ experts) {
  const std::int64_t t = std::int64_t(blockIdx.x) * kRouterWarps + (threadIdx.x >> 5);
  if (t >= s.rows) return;  // warp-uniform: a whole warp leaves, and only warp ops follow
  const int lane = int(threadIdx.x & 31u), X = int(s.X);
  const float* x = logits + t * s.X;
  float* p = probs + t * s.X;  // lane l writes and reads back only its own experts
  float mx = -INFINITY;
  for (int e = lane; e < X; e += 32) mx = fmaxf(mx, x[e]);
  mx = warp_reduce(mx, MaxOp{});
  double sum = 0.0;
  for (int base = 0; base < X; base += 32) {  // past X a lane adds +0.0, which changes no sum
    const int e = base + lane;
    float ex = 0.0f;
    if (e < X) p[e] = ex = expf(x[e] - mx);
    sum = warp_ordered_add(sum, double(ex));
  }
  for (int e = lane; e < X; e += 32) p[e] = float(double(p[e]) / sum);
  int prev = -1;
  float prev_p = 0.0f;
  for (std::int64_t j = 0; j < s.k; ++j) {
    int best = -1;
    float best_p = 0.0f;
    for (int e = lane; e < X; e += 32) {
      const float pe = p[e];
      if (prev >= 0 && !ranks_before(prev_p, prev, pe, e)) continue;  // picked already
      if (best < 0 || ranks_before(pe, e, best_p, best)) best = e, best_p = pe;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const int other = __shfl_xor_sync(kFullMask, best, offset);
      const float other_p = __shfl_xor_sync(kFullMask, best_p, offset);
      if (other >= 0 && (best < 0 || ranks_before(other_p, other, best_p, best)))
        best = other, best_p = other_p;
    }
    // k <= X, so some expert is left for every pass: best >= 0 here.
    if (lane == 0) experts[t * s.k + j] = best, weights[t * s.k + j] = best_p;
    prev = best, prev_p = best_p;
  }
}

// Twin of cpu::moe_router_backward; the forward kernel's mapping.
__global__ void moe_router_backward_kernel(MoeRouterShape s, const float* __restrict__ dweights,
                                           const float* __restrict__ probs,
                                           const std::int64_t* __restrict__ experts,
                                           const float* __restrict__ dprobs_extra,
                                           float* __restrict__ dlogits) {
  const std::int64_t t = std::int64_t(blockIdx.x) * kRouterWarps + (threadIdx.x >> 5);
  if (t >= s.rows) return;  // warp-uniform
  const int lane = int(threadIdx.x & 31u), X = int(s.X);
  const float* p = probs + t * s.X;
  const std::int64_t* ex = experts + t * s.k;
  const float* dw = dweights + t * s.k;
  const float* extra = dprobs_extra ? dprobs_extra + t * s.X : nullptr;
  double gp = 0.0;  // sum_e g[e] p[e], e in order
  for (int base = 0; base < X; base += 32) {
    const int e = base + lane;
    gp = warp_ordered_add(gp, e < X ? upstream(e, s.k, ex, dw, extra) * double(p[e]) : 0.0);
  }
  for (int e = lane; e < X; e += 32)
    dlogits[t * s.X + e] = float(double(p[e]) * (upstream(e, s.k, ex, dw, extra) - gp));
}

// Twin of cpu::moe_dispatch: element (t k + j, c) of the (n, D) index space copies x[t, c].
__global__ void moe_dispatch_kernel(MoeSlotShape s, const float* __restrict__ x,
                                    const std::int64_t* __restrict__ slot, float* __restrict__ xs) {
  const std::int64_t n = s.rows * s.k;
  SSMTUNE_GRID_STRIDE(i, n * s.D) {
    const std::int64_t r = i / s.D, c = i - r * s.D, dst = slot[r];
    if (dst >= 0 && dst < n) xs[dst * s.D + c] = x[(r / s.k) * s.D + c];
  }
}

// Twin of cpu::moe_dispatch_backward: element (t, c) of dx, its k copies summed in j order.
__global__ void moe_dispatch_backward_kernel(MoeSlotShape s, const float* __restrict__ dxs,
                                             const std::int64_t* __restrict__ slot,
                                             float* __restrict__ dx) {
  const std::int64_t n = s.rows * s.k;
  SSMTUNE_GRID_STRIDE(i, s.rows * s.D) {
    const std::int64_t t = i / s.D, c = i - t * s.D;
    float acc = 0.0f;
    for (std::int64_t j = 0; j < s.k; ++j) acc += grouped_at(dxs, slot[t * s.k + j], n, s.D, c);
    dx[i] += acc;
  }
}

// Twin of cpu::moe_combine: block t owns out[t], kRowThreads threads over the columns.
__global__ void __launch_bounds__(kRowThreads)
    moe_combine_kernel(MoeSlotShape s, const float* __restrict__ ys,
                       const std::int64_t* __restrict__ slot, const float* __restrict__ weights,
                       float* __restrict__ out) {
  const std::int64_t t = blockIdx.x, n = s.rows * s.k;
  const std::int64_t* sl = slot + t * s.k;
  const float* w = weights + t * s.k;
  for (std::int64_t c = threadIdx.x; c < s.D; c += kRowThreads) {
    float acc = 0.0f;
    for (std::int64_t j = 0; j < s.k; ++j) acc += w[j] * grouped_at(ys, sl[j], n, s.D, c);
    out[t * s.D + c] = acc;
  }
}

// Twin of cpu::moe_combine_backward: block t writes the k rows of dys its token fed and
// dweights[t, :]; each thread adds its columns' products in double, then block_reduce (an order
// fixed by kRowThreads).
__global__ void __launch_bounds__(kRowThreads)
    moe_combine_backward_kernel(MoeSlotShape s, const float* __restrict__ dout,
                                const float* __restrict__ ys, const std::int64_t* __restrict__ slot,
                                const float* __restrict__ weights, float* __restrict__ dys,
                                float* __restrict__ dweights) {
  __shared__ double scratch[kRowThreads / 32];
  const std::int64_t t = blockIdx.x, n = s.rows * s.k;
  const float* g = dout + t * s.D;
  for (std::int64_t j = 0; j < s.k; ++j) {  // block-uniform: every thread reaches each reduce
    const std::int64_t src = slot[t * s.k + j];
    const bool in_range = src >= 0 && src < n;
    const float w = weights[t * s.k + j];
    double dot = 0.0;
    if (in_range) {
      for (std::int64_t c = threadIdx.x; c < s.D; c += kRowThreads) {
        dys[src * s.D + c] = w * g[c];
        dot += double(g[c]) * double(ys[src * s.D + c]);
      }
    }
    dot = block_reduce(dot, scratch, 0.0, SumOp{});
    if (threadIdx.x == 0) dweights[t * s.k + j] = in_range ? float(dot) : NAN;
  }
}

namespace {
dim3 router_grid(std::int64_t rows) {
  return dim3(unsigned((rows + kRouterWarps - 1) / kRouterWarps));
}
bool valid(const MoeRouterShape& s) {
  return s.rows > 0 && s.k >= 1 && s.k <= s.X && s.X <= kMoeMaxExperts;
}
}  // namespace

void moe_router_forward(const MoeRouterShape& s, const float* logits, float* probs, float* weights,
                        std::int64_t* experts, cudaStream_t stream) {
  if (valid(s))
    SSMTUNE_LAUNCH(moe_router_forward_kernel, router_grid(s.rows), dim3(kRouterThreads), 0, stream,
                   s, logits, probs, weights, experts);
}

void moe_router_backward(const MoeRouterShape& s, const float* dweights, const float* probs,
                         const std::int64_t* experts, const float* dprobs_extra, float* dlogits,
                         cudaStream_t stream) {
  if (valid(s))
    SSMTUNE_LAUNCH(moe_router_backward_kernel, router_grid(s.rows), dim3(kRouterThreads), 0, stream,
                   s, dweights, probs, experts, dprobs_extra, dlogits);
}

void moe_dispatch(const MoeSlotShape& s, const float* x, const std::int64_t* slot, float* xs,
                  cudaStream_t stream) {
  const std::int64_t elements = s.rows * s.k * s.D;
  if (elements > 0)
    SSMTUNE_LAUNCH(moe_dispatch_kernel, grid_stride_blocks(elements), dim3(kGridStrideThreads), 0,
                   stream, s, x, slot, xs);
}

void moe_dispatch_backward(const MoeSlotShape& s, const float* dxs, const std::int64_t* slot,
                           float* dx, cudaStream_t stream) {
  const std::int64_t elements = s.rows * s.D;
  if (elements > 0 && s.k > 0)
    SSMTUNE_LAUNCH(moe_dispatch_backward_kernel, grid_stride_blocks(elements),
                   dim3(kGridStrideThreads), 0, stream, s, dxs, slot, dx);
}

void moe_combine(const MoeSlotShape& s, const float* ys, const std::int64_t* slot,
                 const float* weights, float* out, cudaStream_t stream) {
  if (s.rows > 0 && s.D > 0)
    SSMTUNE_LAUNCH(moe_combine_kernel, dim3(unsigned(s.rows)), dim3(kRowThreads), 0, stream, s, ys,
                   slot, weights, out);
}

void moe_combine_backward(const MoeSlotShape& s, const float* dout, const float* ys,
                          const std::int64_t* slot, const float* weights, float* dys,
                          float* dweights, cudaStream_t stream) {
  if (s.rows > 0 && s.k > 0)
    SSMTUNE_LAUNCH(moe_combine_backward_kernel, dim3(unsigned(s.rows)), dim3(kRowThreads), 0,
                   stream, s, dout, ys, slot, weights, dys, dweights);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
