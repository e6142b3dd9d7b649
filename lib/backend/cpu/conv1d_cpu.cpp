// Causal depthwise conv1d forward/backward, channel-last layout (B, L, E) so the inner loop
// runs over contiguous channels.
#include <algorithm>

#include "backend/cpu/ops_cpu.h"

namespace ssmtune::cpu {

namespace {
constexpr std::int64_t kChannelBlock = 64;
}

template <class T>
void conv1d_forward(std::int64_t B, std::int64_t L, std::int64_t E, std::int64_t K, const T* x,
                    const T* w, const T* bias, T* c) {
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t t = 0; t < L; ++t) {
      T* c_t = c + (b * L + t) * E;
      for (std::int64_t e = 0; e < E; ++e) c_t[e] = bias ? bias[e] : T(0);
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t src = t - (K - 1) + k;  // left zero padding
        if (src < 0) continue;
        const T* x_s = x + (b * L + src) * E;
        for (std::int64_t e = 0; e < E; ++e) c_t[e] += w[e * K + k] * x_s[e];
      }
    }
  }
}

template <class T>
void conv1d_backward(std::int64_t B, std::int64_t L, std::int64_t E, std::int64_t K,
                     const T* dc, const T* x, const T* w, T* dx, T* dw, T* dbias) {
  // dx[t] = sum_k w[k] * dc[t + (K-1) - k]
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t t = 0; t < L; ++t) {
      T* dx_t = dx + (b * L + t) * E;
      std::fill_n(dx_t, E, T(0));
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t dst = t + (K - 1) - k;
        if (dst >= L) continue;
        const T* dc_d = dc + (b * L + dst) * E;
        for (std::int64_t e = 0; e < E; ++e) dx_t[e] += w[e * K + k] * dc_d[e];
      }
    }
  }
  // dw[e,k] = sum_{b,t} dc[b,t,e] * x[b, t-(K-1)+k, e];  dbias[e] = sum dc[b,t,e]
  const std::int64_t n_blocks = (E + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
    const std::int64_t e0 = blk * kChannelBlock, e1 = std::min(E, e0 + kChannelBlock);
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t t = 0; t < L; ++t) {
        const T* dc_t = dc + (b * L + t) * E;
        if (dbias)
          for (std::int64_t e = e0; e < e1; ++e) dbias[e] += dc_t[e];
        for (std::int64_t k = 0; k < K; ++k) {
          const std::int64_t src = t - (K - 1) + k;
          if (src < 0) continue;
          const T* x_s = x + (b * L + src) * E;
          for (std::int64_t e = e0; e < e1; ++e) dw[e * K + k] += dc_t[e] * x_s[e];
        }
      }
    }
  }
}

#define SSMTUNE_INSTANTIATE(T)                                                               \
  template void conv1d_forward<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t,     \
                                  const T*, const T*, const T*, T*);                         \
  template void conv1d_backward<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t,    \
                                   const T*, const T*, const T*, T*, T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
