// Mixture-of-experts routing (ops_cpu.h), the CPU reference and the twin of kernels/moe.cu:
// the router's softmax and top-k (Jamba's JambaSparseMoeBlock, transformers 4.44.2:
// softmax(router_logits, dtype=float), torch.topk, no renormalisation) and its backward, and
// the copies of token rows into and out of the expert-grouped buffer. Every output element is
// written by the task of its token row, in an order fixed by the shape, so the results do not
// depend on the thread count; the kernels follow the same operation order, so under the
// emulator they give the same bits (docs/cuda.md "MoE routing kernels").
#include <algorithm>
#include <cmath>

#include "backend/cpu/ops_cpu.h"

namespace ssmtune::cpu {

namespace {

// Whether expert a with probability pa ranks before expert b with pb in the top-k order: a NaN
// first (as torch.topk ranks NaN above every number), then larger probabilities, then the lower
// index. A strict total order on distinct experts, so the selection below never depends on
// where a tie or a NaN sits. The kernels' twin: ranks_before in kernels/moe.cu.
template <class T>
bool ranks_before(T pa, std::int64_t a, T pb, std::int64_t b) {
  const bool nan_a = std::isnan(pa), nan_b = std::isnan(pb);
  if (nan_a != nan_b) return nan_a;
  if (!nan_a && pa != pb) return pa > pb;
  return a < b;
}

}  // namespace

template <class T>
void moe_router_forward(const MoeRouterDims& d, const T* logits, T* probs, T* weights,
                        std::int64_t* experts) {
  const std::int64_t X = d.X, k = d.k;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < d.rows; ++t) {
    const T* x = logits + t * X;
    T* p = probs + t * X;
    // fmax, as the kernels' fmaxf: the same max in any order. (A NaN logit still makes the sum,
    // hence every probability of the row, NaN, as in torch; the picks then go by index.)
    T mx = -INFINITY;
    for (std::int64_t e = 0; e < X; ++e) mx = std::fmax(mx, x[e]);
    // exp in T (float32 for F32, as torch's float softmax), the sum and quotient in double.
    double sum = 0;
    for (std::int64_t e = 0; e < X; ++e) {
      p[e] = std::exp(x[e] - mx);
      sum += double(p[e]);
    }
    for (std::int64_t e = 0; e < X; ++e) p[e] = T(double(p[e]) / sum);
    // Top k by k selection passes: pass j takes the first expert in ranks_before's order among
    // those ranked after pass j-1's pick. k X comparisons, no scratch; X is small.
    std::int64_t prev = -1;
    for (std::int64_t j = 0; j < k; ++j) {
      std::int64_t best = -1;
      for (std::int64_t e = 0; e < X; ++e) {
        if (prev >= 0 && !ranks_before(p[prev], prev, p[e], e)) continue;
        if (best < 0 || ranks_before(p[e], e, p[best], best)) best = e;
      }
      experts[t * k + j] = best;
      weights[t * k + j] = p[best];
      prev = best;
    }
  }
}

template <class T>
void moe_router_backward(const MoeRouterDims& d, const T* dweights, const T* probs,
                         const std::int64_t* experts, const T* dprobs_extra, T* dlogits) {
  const std::int64_t X = d.X, k = d.k;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < d.rows; ++t) {
    const T* p = probs + t * X;
    const std::int64_t* ex = experts + t * k;
    const T* dw = dweights + t * k;
    // The upstream gradient of probability e: the aux loss's term, then the top-k picks of e
    // in j order (recomputed per pass instead of stored: k X comparisons, no scratch).
    auto g = [&](std::int64_t e) {
      double s = dprobs_extra ? double(dprobs_extra[t * X + e]) : 0.0;
      for (std::int64_t j = 0; j < k; ++j)
        if (ex[j] == e) s += double(dw[j]);
      return s;
    };
    double gp = 0;  // sum_e g[e] p[e]
    for (std::int64_t e = 0; e < X; ++e) gp += g(e) * double(p[e]);
    for (std::int64_t e = 0; e < X; ++e) dlogits[t * X + e] = T(double(p[e]) * (g(e) - gp));
  }
}

template <class T>
void moe_dispatch(const MoeSlotDims& d, const T* x, const std::int64_t* slot, T* xs) {
  const std::int64_t k = d.k, D = d.D;
  // slot is a permutation (checked), so the tasks write disjoint rows of xs.
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < d.rows; ++t)
    for (std::int64_t j = 0; j < k; ++j) std::copy_n(x + t * D, D, xs + slot[t * k + j] * D);
}

template <class T>
void moe_dispatch_backward(const MoeSlotDims& d, const T* dxs, const std::int64_t* slot, T* dx) {
  const std::int64_t k = d.k, D = d.D;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < d.rows; ++t) {
    const std::int64_t* s = slot + t * k;
    for (std::int64_t c = 0; c < D; ++c) {
      T acc = 0;  // the token's k copies summed first, then added: the kernel's order
      for (std::int64_t j = 0; j < k; ++j) acc += dxs[s[j] * D + c];
      dx[t * D + c] += acc;
    }
  }
}

template <class T>
void moe_combine(const MoeSlotDims& d, const T* ys, const std::int64_t* slot, const T* weights,
                 T* out) {
  const std::int64_t k = d.k, D = d.D;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < d.rows; ++t) {
    const std::int64_t* s = slot + t * k;
    const T* w = weights + t * k;
    for (std::int64_t c = 0; c < D; ++c) {
      T acc = 0;
      for (std::int64_t j = 0; j < k; ++j) acc += w[j] * ys[s[j] * D + c];
      out[t * D + c] = acc;
    }
  }
}

template <class T>
void moe_combine_backward(const MoeSlotDims& d, const T* dout, const T* ys,
                          const std::int64_t* slot, const T* weights, T* dys, T* dweights) {
  const std::int64_t k = d.k, D = d.D;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < d.rows; ++t) {
    const T* g = dout + t * D;
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t s = slot[t * k + j];
      const T w = weights[t * k + j];
      const T* y = ys + s * D;
      T* dy = dys + s * D;
      double dot = 0;
      for (std::int64_t c = 0; c < D; ++c) {
        dy[c] = w * g[c];
        dot += double(g[c]) * double(y[c]);
      }
      dweights[t * k + j] = T(dot);
    }
  }
}

#define SSMTUNE_INSTANTIATE(T)                                                                   \
  template void moe_router_forward<T>(const MoeRouterDims&, const T*, T*, T*, std::int64_t*);    \
  template void moe_router_backward<T>(const MoeRouterDims&, const T*, const T*,                 \
                                       const std::int64_t*, const T*, T*);                       \
  template void moe_dispatch<T>(const MoeSlotDims&, const T*, const std::int64_t*, T*);          \
  template void moe_dispatch_backward<T>(const MoeSlotDims&, const T*, const std::int64_t*, T*); \
  template void moe_combine<T>(const MoeSlotDims&, const T*, const std::int64_t*, const T*, T*); \
  template void moe_combine_backward<T>(const MoeSlotDims&, const T*, const T*,                  \
                                        const std::int64_t*, const T*, T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
