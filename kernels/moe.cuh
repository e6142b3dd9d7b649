// Mixture-of-experts routing on the GPU, float32 (Jamba's JambaSparseMoeBlock): the router's
// softmax and top-k and its backward, and the copies of token rows into and out of the
// expert-grouped buffer. CPU twins: ssmtune::cpu::moe_* (lib/backend/cpu/moe_cpu.cpp), whose
// operations these follow in the same order. Device pointers; work queued on `stream`. Design
// (mapping, determinism, limits): docs/cuda.md "MoE routing kernels".
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// The most experts the router kernels take: one warp per token row scans the row k + 3 times
// (32 experts a step), and the ordered sums take X shuffles, so far more experts would want a
// block per row. Jamba has 16.
constexpr std::int64_t kMoeMaxExperts = 1024;

// rows tokens, X experts (<= kMoeMaxExperts), k = top_k in [1, X].
struct MoeRouterShape {
  std::int64_t rows, X, k;
};

// probs = softmax(logits) per row (expf, the sum and the quotient in double), then the top k of
// probs, largest first, ties by ascending expert, a NaN above every number.
// logits, probs: (rows, X)   weights: (rows, k)   experts: (rows, k), all overwritten.
void moe_router_forward(const MoeRouterShape& s, const float* logits, float* probs, float* weights,
                        std::int64_t* experts, cudaStream_t stream);

// dlogits = probs (g - sum_e g probs), g[t, e] = dprobs_extra[t, e] (0 when null) + the
// dweights of the choices of e. dweights: (rows, k)   experts: (rows, k) (an entry outside
// [0, X) matches nothing)   probs, dprobs_extra, dlogits (overwritten): (rows, X)
void moe_router_backward(const MoeRouterShape& s, const float* dweights, const float* probs,
                         const std::int64_t* experts, const float* dprobs_extra, float* dlogits,
                         cudaStream_t stream);

// rows tokens, k choices each, D hidden width; the grouped buffer has n = rows k rows.
struct MoeSlotShape {
  std::int64_t rows, k, D;
};

// slot: (rows, k), a permutation of [0, n). The kernels do not report a bad entry (that needs a
// read back; the backend checks slot on the host when it lives there) but never access memory
// through one: an entry outside [0, n) is skipped by moe_dispatch and moe_combine_backward's
// dys, and reads as NaN in the sums (dx, out, dweights), so the mistake shows.

// xs[slot[t, j]] = x[t].   x: (rows, D)   xs: (n, D)
void moe_dispatch(const MoeSlotShape& s, const float* x, const std::int64_t* slot, float* xs,
                  cudaStream_t stream);
// dx[t] += (dxs[slot[t, 0]] + ... + dxs[slot[t, k-1]]).   dxs: (n, D)   dx: (rows, D)
void moe_dispatch_backward(const MoeSlotShape& s, const float* dxs, const std::int64_t* slot,
                           float* dx, cudaStream_t stream);
// out[t] = sum_j weights[t, j] ys[slot[t, j]] in j order.   ys: (n, D)   weights: (rows, k)
// out: (rows, D) overwritten
void moe_combine(const MoeSlotShape& s, const float* ys, const std::int64_t* slot,
                 const float* weights, float* out, cudaStream_t stream);
// dys[slot[t, j]] = weights[t, j] dout[t]; dweights[t, j] = <dout[t], ys[slot[t, j]]> summed in
// double by a block reduction (a fixed order: the same bits on every run).
// dout: (rows, D). Overwritten: dys (n, D), dweights (rows, k).
void moe_combine_backward(const MoeSlotShape& s, const float* dout, const float* ys,
                          const std::int64_t* slot, const float* weights, float* dys,
                          float* dweights, cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
