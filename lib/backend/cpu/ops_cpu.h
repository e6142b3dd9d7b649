// CPU reference ops other than the scan and GEMM: RMSNorm, causal depthwise conv1d,
// elementwise activations, embedding, cross-entropy, causal grouped-query attention,
// mixture-of-experts routing. Plain pointers, row-major, T = float or double. Each op's
// "backward" overwrites input gradients and accumulates (+=) parameter gradients, so gradient
// accumulation over micro-batches is free. Parameter-gradient sums run over fixed column ranges
// in a fixed order: the result does not depend on the thread count.
#pragma once

#include <cstdint>

namespace ssmtune::cpu {

// Below this many elements of work (a decoding step's few thousand) a loop runs on the calling
// thread alone: waking the team and joining it again costs more than the loop.
constexpr std::int64_t kParallelMin = 1 << 15;

// RMSNorm (HF MambaRMSNorm): y = w * x / sqrt(mean(x^2) + eps).
// x, y: (rows, D)   w: (D)   rstd: (rows, G) out, 1/sqrt(mean(x^2)+eps), saved for backward.
// With G groups each row's G runs of D/G columns are normalised separately (mamba_ssm's
// RMSNormGated, group_size = D/G); the weight spans the whole row. G divides D.
template <class T>
void rmsnorm_forward(std::int64_t rows, std::int64_t D, const T* x, const T* w, double eps,
                     T* y, T* rstd, std::int64_t G = 1);
// dx: (rows, D) overwritten   dw: (D) accumulated
template <class T>
void rmsnorm_backward(std::int64_t rows, std::int64_t D, const T* dy, const T* x, const T* w,
                      const T* rstd, T* dx, T* dw, std::int64_t G = 1);

// Causal depthwise conv1d (PyTorch Conv1d(groups=E, padding=K-1) truncated to L, i.e.
// left zero padding): c[b,t,e] = bias[e] + sum_k w[e,k] * x[b, t-(K-1)+k, e].
// x, c: (B, L, E)   w: (E, K)   bias: (E) or null
template <class T>
void conv1d_forward(std::int64_t B, std::int64_t L, std::int64_t E, std::int64_t K, const T* x,
                    const T* w, const T* bias, T* c);
// dx: (B, L, E) overwritten   dw: (E, K) or null, dbias: (E) or null, accumulated (null: frozen)
template <class T>
void conv1d_backward(std::int64_t B, std::int64_t L, std::int64_t E, std::int64_t K,
                     const T* dc, const T* x, const T* w, T* dx, T* dw, T* dbias);

// silu(v) = v * sigmoid(v)
template <class T> void silu_forward(std::int64_t n, const T* x, T* y);
template <class T> void silu_backward(std::int64_t n, const T* dy, const T* x, T* dx);

// softplus(v) = log(1 + exp(v)), and v itself above 20 (PyTorch's threshold, as mamba_ssm).
template <class T> void softplus_forward(std::int64_t n, const T* x, T* y);
template <class T> void softplus_backward(std::int64_t n, const T* dy, const T* x, T* dx);

// Output gate of the mixer: out = y * silu(z).   y, z, out: (n)
template <class T> void gate_forward(std::int64_t n, const T* y, const T* z, T* out);
// dy, dz overwritten
template <class T>
void gate_backward(std::int64_t n, const T* dout, const T* y, const T* z, T* dy, T* dz);

// Sum over rows: db[j] += sum_t dy[t, j].   dy: (rows, cols)
template <class T> void column_sum(std::int64_t rows, std::int64_t cols, const T* dy, T* db);

// Embedding lookup: out[t] = table[ids[t]].   ids: (n) in [0, V)   table: (V, D)   out: (n, D)
template <class T>
void embedding_forward(std::int64_t n, std::int64_t D, const std::int64_t* ids, const T* table,
                       T* out);
// The same from a table held in bf16 (bits; frozen weights, docs/models.md "Weight storage"),
// each value widened as it is copied (exact).
template <class T>
void embedding_forward_bf16(std::int64_t n, std::int64_t D, const std::int64_t* ids,
                            const std::uint16_t* table, T* out);
// dtable[ids[t]] += dout[t], in token order
template <class T>
void embedding_backward(std::int64_t n, std::int64_t D, const std::int64_t* ids, const T* dout,
                        T* dtable);

// Token cross-entropy. logits: (rows, V); targets: (rows), -100 = ignore.
// Returns the sum of -log softmax(logits)[target] over counted rows; *n_counted gets their number.
template <class T>
double cross_entropy_forward(std::int64_t rows, std::int64_t V, const T* logits,
                             const std::int64_t* targets, std::int64_t* n_counted);
// dlogits = scale * (softmax(logits) - onehot(target)), zero on ignored rows.
// dlogits may alias logits (in place).
template <class T>
void cross_entropy_backward(std::int64_t rows, std::int64_t V, const T* logits,
                            const std::int64_t* targets, double scale, T* dlogits);

// Causal grouped-query attention without positional encoding (Jamba's JambaAttention):
// query head h reads key/value head h / (H / KV). The Lq queries are the last Lq of the Lk
// positions (Lq <= Lk; Lq < Lk when decoding a block after Lk - Lq cached keys): query t sits at
// position t + offset(), and scores = scale <q_t, k_j> for keys j <= t + offset() whose key_mask
// is nonzero; out_t = softmax(scores) v. Blocked over 64 queries x 64 keys with an online
// softmax (running max and sum per row), so no Lq x Lk matrix exists: the working set is one
// 64 x 64 score tile and one 64 x hd accumulator per thread (attention_cpu.cpp).
// B batch, Lq queries, Lk keys, H query heads, KV key/value heads (H % KV == 0), hd head dim.
struct AttentionDims {
  std::int64_t B, Lq, Lk, H, KV, hd;
  // The position of query 0 among the keys: the number of keys before the first query.
  std::int64_t offset() const { return Lk - Lq; }
};
// q, out: (B, Lq, H, hd)   k, v: (B, Lk, KV, hd)   key_mask: (B, Lk), nonzero = keep, or null
// lse: (B, H, Lq) out, each row's log-sum-exp of its scores; -inf for a row with no allowed
// key, whose out is zeros.
template <class T>
void attention_forward(const AttentionDims& d, const T* q, const T* k, const T* v,
                       const std::int64_t* key_mask, double scale, T* out, T* lse);
// FlashAttention-2's backward: P recomputed per tile from lse, Drow = rowsum(dout * out),
// dS = P (dP - Drow). dout: (B, Lq, H, hd). Overwritten: dq (B, Lq, H, hd), dk, dv
// (B, Lk, KV, hd).
template <class T>
void attention_backward(const AttentionDims& d, const T* q, const T* k, const T* v,
                        const std::int64_t* key_mask, double scale, const T* out, const T* lse,
                        const T* dout, T* dq, T* dk, T* dv);

// Mixture-of-experts routing (Jamba's JambaSparseMoeBlock; moe_cpu.cpp, the twins of
// kernels/moe.cu). rows tokens, X experts, k = top_k (1 <= k <= X).
struct MoeRouterDims {
  std::int64_t rows, X, k;
};
// probs[t] = softmax(logits[t]) (max-subtracted; exp in T, the sum and the division in double),
// then the k largest probs in descending order, equal ones by ascending expert index:
// experts[t, j] = that expert, weights[t, j] = its probability (not renormalised). A NaN prob
// ranks above every number (torch.topk's order), so k experts are always picked.
// logits, probs: (rows, X)   weights: (rows, k)   experts: (rows, k)
template <class T>
void moe_router_forward(const MoeRouterDims& d, const T* logits, T* probs, T* weights,
                        std::int64_t* experts);
// g[t, e] = dprobs_extra[t, e] (0 when null) + sum_j [experts[t, j] == e] dweights[t, j];
// dlogits[t, e] = probs[t, e] (g[t, e] - sum_e' g[t, e'] probs[t, e']), all in double, e in order.
// Experts outside [0, X) match no column.   dweights: (rows, k)   probs, dprobs_extra, dlogits
// (overwritten): (rows, X)
template <class T>
void moe_router_backward(const MoeRouterDims& d, const T* dweights, const T* probs,
                         const std::int64_t* experts, const T* dprobs_extra, T* dlogits);

// Token dispatch and combine around the experts: row t, choice j goes to row slot[t, j] of the
// expert-grouped (n = rows k, D) buffer. slot: (rows, k), a permutation of [0, n) (the backends
// check it before calling these).
struct MoeSlotDims {
  std::int64_t rows, k, D;
};
// xs[slot[t, j]] = x[t].   x: (rows, D)   xs: (n, D)
template <class T>
void moe_dispatch(const MoeSlotDims& d, const T* x, const std::int64_t* slot, T* xs);
// dx[t] += (dxs[slot[t, 0]] + dxs[slot[t, 1]] + ...), the sum in T in j order.
template <class T>
void moe_dispatch_backward(const MoeSlotDims& d, const T* dxs, const std::int64_t* slot, T* dx);
// out[t] = sum_j weights[t, j] ys[slot[t, j]], in T in j order.   weights: (rows, k)
template <class T>
void moe_combine(const MoeSlotDims& d, const T* ys, const std::int64_t* slot, const T* weights,
                 T* out);
// dys[slot[t, j]] = weights[t, j] dout[t]; dweights[t, j] = <dout[t], ys[slot[t, j]]> in double,
// columns in order. dout: (rows, D). Overwritten: dys (n, D), dweights (rows, k).
template <class T>
void moe_combine_backward(const MoeSlotDims& d, const T* dout, const T* ys,
                          const std::int64_t* slot, const T* weights, T* dys, T* dweights);

}  // namespace ssmtune::cpu
