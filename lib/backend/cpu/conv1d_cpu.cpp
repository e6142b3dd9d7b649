// Causal depthwise conv1d forward/backward, channel-last layout (B, L, E) so the inner loops
// run over contiguous channels. The weights are read as (K, E), each tap's weights contiguous
// over the channels as the rows of x are, and the float loops are cloned per CPU
// (cpu_clones.h), so they run at the full vector width.
#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_clones.h"
#include "backend/cpu/ops_cpu.h"

namespace ssmtune::cpu {

namespace {
constexpr std::int64_t kChannelBlock = 64;

// w (E, K) as (K, E).
template <class T>
std::vector<T> taps_by_channel(std::int64_t E, std::int64_t K, const T* w) {
  std::vector<T> wk(std::size_t(K * E));
  for (std::int64_t e = 0; e < E; ++e)
    for (std::int64_t k = 0; k < K; ++k) wk[std::size_t(k * E + e)] = w[e * K + k];
  return wk;
}

// One row t of a sequence seq (L, E): out[e] = bias[e] (or 0) + sum_k wk[k][e] seq[s_k][e],
// k ascending, over the taps whose row s_k is inside the sequence: s_k = t - (K-1) + k for the
// forward conv, t + (K-1) - k for backward's dx (the transposed conv).
template <class T>
[[gnu::always_inline]] inline void taps_row_body(bool transposed, std::int64_t t, std::int64_t L,
                                                 std::int64_t E, std::int64_t K, const T* seq,
                                                 const T* wk, const T* bias, T* out) {
  for (std::int64_t e = 0; e < E; ++e) out[e] = bias ? bias[e] : T(0);
  for (std::int64_t k = 0; k < K; ++k) {
    const std::int64_t s = transposed ? t + (K - 1) - k : t - (K - 1) + k;
    if (s < 0 || s >= L) continue;
    const T* row = seq + s * E;
    const T* w = wk + k * E;
    for (std::int64_t e = 0; e < E; ++e) out[e] += w[e] * row[e];
  }
}

SSMTUNE_CPU_CLONES void taps_row(bool transposed, std::int64_t t, std::int64_t L, std::int64_t E,
                                 std::int64_t K, const float* seq, const float* wk,
                                 const float* bias, float* out) {
  taps_row_body(transposed, t, L, E, K, seq, wk, bias, out);
}
void taps_row(bool transposed, std::int64_t t, std::int64_t L, std::int64_t E, std::int64_t K,
              const double* seq, const double* wk, const double* bias, double* out) {
  taps_row_body(transposed, t, L, E, K, seq, wk, bias, out);
}

// out (B, L, E) = the conv (or transposed conv) of in (B, L, E), rows split over the threads.
template <class T>
void taps(bool transposed, std::int64_t B, std::int64_t L, std::int64_t E, std::int64_t K,
          const T* in, const T* w, const T* bias, T* out) {
  const std::vector<T> wk = taps_by_channel(E, K, w);
#pragma omp parallel for collapse(2) schedule(static) if (B * L * E * K >= kParallelMin)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < L; ++t)
      taps_row(transposed, t, L, E, K, in + b * L * E, wk.data(), bias, out + (b * L + t) * E);
}

// dw and dbias of channels [e0, e1) (at most kChannelBlock): sums over every row in row order,
// kept in acc (K, kChannelBlock) and bsum, then added to dw (E, K) and dbias.
template <class T>
[[gnu::always_inline]] inline void dw_block_body(std::int64_t e0, std::int64_t e1, std::int64_t B,
                                                 std::int64_t L, std::int64_t E, std::int64_t K,
                                                 const T* dc, const T* x, T* acc, T* bsum, T* dw,
                                                 T* dbias) {
  const std::int64_t n = e1 - e0;
  std::fill_n(acc, K * kChannelBlock, T(0));
  std::fill_n(bsum, kChannelBlock, T(0));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < L; ++t) {
      const T* dc_t = dc + (b * L + t) * E + e0;
      if (dbias)
        for (std::int64_t i = 0; i < n; ++i) bsum[i] += dc_t[i];
      if (!dw) continue;
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t src = t - (K - 1) + k;
        if (src < 0) continue;
        const T* x_s = x + (b * L + src) * E + e0;
        T* a = acc + k * kChannelBlock;
        for (std::int64_t i = 0; i < n; ++i) a[i] += dc_t[i] * x_s[i];
      }
    }
  for (std::int64_t i = 0; i < n; ++i) {
    if (dbias) dbias[e0 + i] += bsum[i];
    if (dw)
      for (std::int64_t k = 0; k < K; ++k) dw[(e0 + i) * K + k] += acc[k * kChannelBlock + i];
  }
}

SSMTUNE_CPU_CLONES void dw_block(std::int64_t e0, std::int64_t e1, std::int64_t B, std::int64_t L,
                                 std::int64_t E, std::int64_t K, const float* dc, const float* x,
                                 float* acc, float* bsum, float* dw, float* dbias) {
  dw_block_body(e0, e1, B, L, E, K, dc, x, acc, bsum, dw, dbias);
}
void dw_block(std::int64_t e0, std::int64_t e1, std::int64_t B, std::int64_t L, std::int64_t E,
              std::int64_t K, const double* dc, const double* x, double* acc, double* bsum,
              double* dw, double* dbias) {
  dw_block_body(e0, e1, B, L, E, K, dc, x, acc, bsum, dw, dbias);
}
}  // namespace

template <class T>
void conv1d_forward(std::int64_t B, std::int64_t L, std::int64_t E, std::int64_t K, const T* x,
                    const T* w, const T* bias, T* c) {
  taps(false, B, L, E, K, x, w, bias, c);
}

template <class T>
void conv1d_backward(std::int64_t B, std::int64_t L, std::int64_t E, std::int64_t K, const T* dc,
                     const T* x, const T* w, T* dx, T* dw, T* dbias) {
  // dx[t] = sum_k w[k] * dc[t + (K-1) - k]
  taps(true, B, L, E, K, dc, w, static_cast<const T*>(nullptr), dx);
  if (!dw && !dbias) return;  // frozen conv: no weight gradients to form
  // dw[e,k] = sum_{b,t} dc[b,t,e] * x[b, t-(K-1)+k, e];  dbias[e] = sum dc[b,t,e]
  const std::int64_t n_blocks = (E + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel
  {
    std::vector<T> acc(std::size_t(K * kChannelBlock)), bsum(kChannelBlock);
#pragma omp for schedule(static)
    for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
      const std::int64_t e0 = blk * kChannelBlock, e1 = std::min(E, e0 + kChannelBlock);
      dw_block(e0, e1, B, L, E, K, dc, x, acc.data(), bsum.data(), dw, dbias);
    }
  }
}

#define SSMTUNE_INSTANTIATE(T)                                                             \
  template void conv1d_forward<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t,  \
                                  const T*, const T*, const T*, T*);                       \
  template void conv1d_backward<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t, \
                                   const T*, const T*, const T*, T*, T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
