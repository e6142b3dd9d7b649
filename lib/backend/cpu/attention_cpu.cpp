// Causal grouped-query attention, forward and backward (ops_cpu.h), the CPU reference and the
// twin of kernels/attention.cu. Query t sits at key position t + off, off = Lk - Lq (0 unless
// decoding after cached keys), so every causal bound below is shifted by off. Blocked over
// kBlock queries x kBlock keys:
//   forward: per (batch, head, query block) the key blocks run in order, each row keeping a
//   running max m and sum l of exp(score - m) and an accumulator of exp(score - m) v rescaled by
//   exp(m_old - m_new) whenever the max grows (the online softmax); out = acc / l,
//   lse = m + log l.
//   backward (FlashAttention-2): P = exp(score - lse) recomputed tile by tile, never stored;
//   Drow = rowsum(dout * out); dS = P (dP - Drow) with dP = dout v^T;
//   dq = scale dS k per query block (key blocks in order), dk = scale dS^T q and dv = P^T dout
//   per (kv head, key block), over the group's heads then the query blocks in order.
// Every output element is written by one task whose loop order is fixed by the shape, so the
// results do not depend on the thread count (the dk/dv sum over the group's heads runs inside
// one task instead of across threads).
// Working set: one kBlock x kBlock score tile and one kBlock x hd accumulator per thread, plus
// Drow (B, H, Lq) in backward: memory linear in Lq + Lk.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/ops_cpu.h"

namespace ssmtune::cpu {

namespace {

constexpr std::int64_t kBlock = 64;

std::int64_t blocks_of(std::int64_t L) { return (L + kBlock - 1) / kBlock; }

// Offsets of query row (b, t, h) in (B, Lq, H, hd) and of key row (b, j, g) in (B, Lk, KV, hd).
std::int64_t q_row(const AttentionDims& d, std::int64_t b, std::int64_t t, std::int64_t h) {
  return ((b * d.Lq + t) * d.H + h) * d.hd;
}
std::int64_t k_row(const AttentionDims& d, std::int64_t b, std::int64_t j, std::int64_t g) {
  return ((b * d.Lk + j) * d.KV + g) * d.hd;
}

template <class T> T dot(const T* a, const T* b, std::int64_t n) {
  T s = 0;
  for (std::int64_t e = 0; e < n; ++e) s += a[e] * b[e];
  return s;
}

// A tile of queries [t0, t0 + nr) x keys [j0, j0 + nc) of batch row b, query head h.
struct Tile {
  std::int64_t b, h, t0, nr, j0, nc;
};

// s: (nr, kBlock), s[r, c] = scale <q_{t0+r}, k_{j0+c}> where key j0 + c is allowed for query
// t0 + r (at or before its position t0 + r + off, not padded), else -inf.
template <class T>
void tile_scores(const AttentionDims& d, const T* q, const T* k, const std::int64_t* key_mask,
                 T scale, const Tile& tl, T* s) {
  const std::int64_t g = tl.h / (d.H / d.KV);
  for (std::int64_t r = 0; r < tl.nr; ++r) {
    const std::int64_t t = tl.t0 + r;
    const T* qr = q + q_row(d, tl.b, t, tl.h);
    for (std::int64_t c = 0; c < tl.nc; ++c) {
      const std::int64_t j = tl.j0 + c;
      const bool allowed = j <= t + d.offset() && (!key_mask || key_mask[tl.b * d.Lk + j] != 0);
      s[r * kBlock + c] = allowed ? scale * dot(qr, k + k_row(d, tl.b, j, g), d.hd)
                                  : -std::numeric_limits<T>::infinity();
    }
  }
}

// P[r, c] = exp(s[r, c] - lse[r]): 0 for a disallowed key or a row without allowed keys.
template <class T> T prob(T s, T lse) {
  return std::isinf(lse) || std::isinf(s) ? T(0) : std::exp(s - lse);
}

}  // namespace

template <class T>
void attention_forward(const AttentionDims& d, const T* q, const T* k, const T* v,
                       const std::int64_t* key_mask, double scale, T* out, T* lse) {
  const std::int64_t nqb = blocks_of(d.Lq), tasks = d.B * d.H * nqb, hd = d.hd, off = d.offset();
  const T inf = std::numeric_limits<T>::infinity();
#pragma omp parallel
  {
    std::vector<T> s(kBlock * kBlock), acc(kBlock * hd), m(kBlock), l(kBlock);
    // Dynamic: causal blocks near the end of the sequence do more work than early ones.
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < tasks; ++task) {
      const std::int64_t b = task / (d.H * nqb), h = task / nqb % d.H, t0 = task % nqb * kBlock;
      const std::int64_t nr = std::min(kBlock, d.Lq - t0), g = h / (d.H / d.KV);
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), -inf);
      std::fill(l.begin(), l.end(), T(0));
      // Keys up to the position of the block's last query, t0 + nr - 1 + off.
      for (std::int64_t j0 = 0; j0 < t0 + nr + off; j0 += kBlock) {
        const Tile tl{b, h, t0, nr, j0, std::min(kBlock, d.Lk - j0)};
        tile_scores(d, q, k, key_mask, T(scale), tl, s.data());
        for (std::int64_t r = 0; r < nr; ++r) {
          const T* sr = s.data() + r * kBlock;
          const T m_new = std::max(m[r], *std::max_element(sr, sr + tl.nc));
          if (m_new == -inf) continue;  // nothing allowed yet in this row
          const T alpha = std::exp(m[r] - m_new);  // 0 while m[r] is -inf
          T* ar = acc.data() + r * hd;
          for (std::int64_t e = 0; e < hd; ++e) ar[e] *= alpha;
          T sum = 0;
          for (std::int64_t c = 0; c < tl.nc; ++c) {
            if (sr[c] == -inf) continue;
            const T p = std::exp(sr[c] - m_new);
            sum += p;
            const T* vc = v + k_row(d, b, j0 + c, g);
            for (std::int64_t e = 0; e < hd; ++e) ar[e] += p * vc[e];
          }
          l[r] = l[r] * alpha + sum;
          m[r] = m_new;
        }
      }
      for (std::int64_t r = 0; r < nr; ++r) {
        const std::int64_t t = t0 + r;
        T* o = out + q_row(d, b, t, h);
        const bool any = l[r] > 0;
        for (std::int64_t e = 0; e < hd; ++e) o[e] = any ? acc[r * hd + e] / l[r] : T(0);
        lse[(b * d.H + h) * d.Lq + t] = any ? m[r] + std::log(l[r]) : -inf;
      }
    }
  }
}

template <class T>
void attention_backward(const AttentionDims& d, const T* q, const T* k, const T* v,
                        const std::int64_t* key_mask, double scale, const T* out, const T* lse,
                        const T* dout, T* dq, T* dk, T* dv) {
  const std::int64_t nqb = blocks_of(d.Lq), nkb = blocks_of(d.Lk), hd = d.hd, group = d.H / d.KV;
  // Drow: (B, H, Lq), rowsum(dout * out), the same for every key of a row.
  std::vector<T> drow(std::size_t(d.B * d.H * d.Lq));
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < d.B * d.Lq * d.H; ++i) {
    const std::int64_t b = i / (d.Lq * d.H), t = i / d.H % d.Lq, h = i % d.H;
    drow[(b * d.H + h) * d.Lq + t] = dot(dout + i * hd, out + i * hd, hd);
  }
  // dS[r, c] of a tile: P (dP - Drow); P[r, c] returned through p.
  const auto ds_at = [&](const Tile& tl, const T* s, std::int64_t r, std::int64_t c, T& p) {
    const std::int64_t t = tl.t0 + r, row = (tl.b * d.H + tl.h) * d.Lq + t;
    p = prob(s[r * kBlock + c], lse[row]);
    if (p == 0) return T(0);
    const T dp = dot(dout + q_row(d, tl.b, t, tl.h), v + k_row(d, tl.b, tl.j0 + c, tl.h / group),
                     hd);
    return p * (dp - drow[row]);
  };

  // dq: one task per (batch, head, query block), the key blocks in order.
#pragma omp parallel
  {
    std::vector<T> s(kBlock * kBlock);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < d.B * d.H * nqb; ++task) {
      const std::int64_t b = task / (d.H * nqb), h = task / nqb % d.H, t0 = task % nqb * kBlock;
      const std::int64_t nr = std::min(kBlock, d.Lq - t0);
      for (std::int64_t r = 0; r < nr; ++r) std::fill_n(dq + q_row(d, b, t0 + r, h), hd, T(0));
      for (std::int64_t j0 = 0; j0 < t0 + nr + d.offset(); j0 += kBlock) {  // as forward
        const Tile tl{b, h, t0, nr, j0, std::min(kBlock, d.Lk - j0)};
        tile_scores(d, q, k, key_mask, T(scale), tl, s.data());
        for (std::int64_t r = 0; r < nr; ++r) {
          T* dqr = dq + q_row(d, b, t0 + r, h);
          for (std::int64_t c = 0; c < tl.nc; ++c) {
            T p;
            const T ds = ds_at(tl, s.data(), r, c, p);
            if (ds == 0) continue;
            const T* kc = k + k_row(d, b, j0 + c, h / group);
            for (std::int64_t e = 0; e < hd; ++e) dqr[e] += ds * kc[e];
          }
        }
      }
      for (std::int64_t r = 0; r < nr; ++r) {
        T* dqr = dq + q_row(d, b, t0 + r, h);
        for (std::int64_t e = 0; e < hd; ++e) dqr[e] *= T(scale);
      }
    }
  }

  // dk, dv: one task per (batch, kv head, key block); the group's heads, then the query blocks
  // from the one holding the query at the block's first key (query j0 - off), in order.
#pragma omp parallel
  {
    std::vector<T> s(kBlock * kBlock);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < d.B * d.KV * nkb; ++task) {
      const std::int64_t b = task / (d.KV * nkb), g = task / nkb % d.KV, j0 = task % nkb * kBlock;
      const std::int64_t nc = std::min(kBlock, d.Lk - j0);
      // Queries before j0 - off see none of these keys; with off = 0 this is j0 itself.
      const std::int64_t t_first = std::max<std::int64_t>(0, j0 - d.offset()) / kBlock * kBlock;
      for (std::int64_t c = 0; c < nc; ++c) {
        std::fill_n(dk + k_row(d, b, j0 + c, g), hd, T(0));
        std::fill_n(dv + k_row(d, b, j0 + c, g), hd, T(0));
      }
      for (std::int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (std::int64_t t0 = t_first; t0 < d.Lq; t0 += kBlock) {
          const Tile tl{b, h, t0, std::min(kBlock, d.Lq - t0), j0, nc};
          tile_scores(d, q, k, key_mask, T(scale), tl, s.data());
          for (std::int64_t r = 0; r < tl.nr; ++r) {
            const T* qr = q + q_row(d, b, t0 + r, h);
            const T* dor = dout + q_row(d, b, t0 + r, h);
            for (std::int64_t c = 0; c < nc; ++c) {
              T p;
              const T ds = ds_at(tl, s.data(), r, c, p);
              if (p == 0) continue;
              T* dkc = dk + k_row(d, b, j0 + c, g);
              T* dvc = dv + k_row(d, b, j0 + c, g);
              for (std::int64_t e = 0; e < hd; ++e) {
                dvc[e] += p * dor[e];
                dkc[e] += ds * qr[e];
              }
            }
          }
        }
      }
      for (std::int64_t c = 0; c < nc; ++c) {
        T* dkc = dk + k_row(d, b, j0 + c, g);
        for (std::int64_t e = 0; e < hd; ++e) dkc[e] *= T(scale);
      }
    }
  }
}

#define SSMTUNE_INSTANTIATE(T)                                                                  \
  template void attention_forward<T>(const AttentionDims&, const T*, const T*, const T*,       \
                                     const std::int64_t*, double, T*, T*);                      \
  template void attention_backward<T>(const AttentionDims&, const T*, const T*, const T*,      \
                                      const std::int64_t*, double, const T*, const T*,         \
                                      const T*, T*, T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
