#include "backend/cpu/scan_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ssmtune::cpu {

namespace {
// Channels handled by one task. Fixed (not derived from the thread count) so that the
// partial sums of dB and dC, one per block, are added in the same order on any machine.
constexpr std::int64_t kChannelBlock = 32;

std::int64_t n_channel_blocks(std::int64_t d_inner) {
  return (d_inner + kChannelBlock - 1) / kChannelBlock;
}
}  // namespace

template <class T>
void selective_scan_forward(const ScanDims& d, const T* u, const T* delta, const T* A,
                            const T* Bm, const T* Cm, const T* D, const T* h0, T* y,
                            T* h_saved, T* h_last) {
  const std::int64_t L = d.seqlen, E = d.d_inner, N = d.d_state, Q = d.chunk;
  const std::int64_t n_chunks = d.n_chunks(), n_blocks = n_channel_blocks(E);
#pragma omp parallel
  {
    std::vector<T> h(kChannelBlock * N);  // state of the block's channels: (block, N)
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < d.batch; ++b) {
      for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
        const std::int64_t e0 = blk * kChannelBlock, e1 = std::min(E, e0 + kChannelBlock);
        const std::int64_t span = (e1 - e0) * N;
        if (h0)
          std::copy_n(h0 + (b * E + e0) * N, span, h.data());
        else
          std::fill_n(h.data(), span, T(0));
        for (std::int64_t t = 0; t < L; ++t) {
          if (t % Q == 0)
            std::copy_n(h.data(), span, h_saved + ((b * n_chunks + t / Q) * E + e0) * N);
          const std::int64_t bt = b * L + t;
          const T* B_t = Bm + bt * N;
          const T* C_t = Cm + bt * N;
          for (std::int64_t e = e0; e < e1; ++e) {
            const T dt = delta[bt * E + e], u_t = u[bt * E + e], dt_u = dt * u_t;
            const T* A_e = A + e * N;
            T* h_e = h.data() + (e - e0) * N;
            T acc = 0;
            for (std::int64_t n = 0; n < N; ++n) {
              h_e[n] = std::exp(dt * A_e[n]) * h_e[n] + dt_u * B_t[n];
              acc += h_e[n] * C_t[n];
            }
            y[bt * E + e] = acc + (D ? D[e] * u_t : T(0));
          }
        }
        if (h_last) std::copy_n(h.data(), span, h_last + (b * E + e0) * N);
      }
    }
  }
}

template <class T>
void selective_scan_backward(const ScanDims& d, const T* u, const T* delta, const T* A,
                             const T* Bm, const T* Cm, const T* D, const T* h_saved,
                             const T* dy, T* du, T* ddelta, T* dA, T* dBm, T* dCm, T* dD,
                             T* dh0) {
  const std::int64_t Bsz = d.batch, L = d.seqlen, E = d.d_inner, N = d.d_state, Q = d.chunk;
  const std::int64_t n_chunks = d.n_chunks(), n_blocks = n_channel_blocks(E);
  const std::int64_t BLN = Bsz * L * N;
  // dB and dC sum over all channels; each channel block writes its own partial sums,
  // reduced below in block order (deterministic, no atomics).
  std::vector<T> dB_part(std::size_t(n_blocks * BLN), T(0)), dC_part(std::size_t(n_blocks * BLN), T(0));

#pragma omp parallel
  {
    std::vector<T> hs((Q + 1) * N);       // states h_{t0-1} .. h_{t1-1} of one channel in a chunk
    std::vector<T> g(kChannelBlock * N);  // adjoint dL/dh_t of the block's channels
#pragma omp for schedule(static)
    for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
      const std::int64_t e0 = blk * kChannelBlock, e1 = std::min(E, e0 + kChannelBlock);
      T* dB_blk = dB_part.data() + blk * BLN;
      T* dC_blk = dC_part.data() + blk * BLN;
      for (std::int64_t b = 0; b < Bsz; ++b) {
        std::fill(g.begin(), g.end(), T(0));
        for (std::int64_t c = n_chunks - 1; c >= 0; --c) {
          const std::int64_t t0 = c * Q, t1 = std::min(L, t0 + Q);
          for (std::int64_t e = e0; e < e1; ++e) {
            const T* A_e = A + e * N;
            // Recompute this chunk's states from the saved chunk-start state.
            std::copy_n(h_saved + ((b * n_chunks + c) * E + e) * N, N, hs.data());
            for (std::int64_t t = t0; t < t1; ++t) {
              const std::int64_t bt = b * L + t;
              const T dt = delta[bt * E + e], dt_u = dt * u[bt * E + e];
              const T* hp = hs.data() + (t - t0) * N;
              T* hn = hs.data() + (t - t0 + 1) * N;
              for (std::int64_t n = 0; n < N; ++n)
                hn[n] = std::exp(dt * A_e[n]) * hp[n] + dt_u * Bm[bt * N + n];
            }
            // Adjoint recurrence, backwards in time: g holds dL/dh_t.
            T* g_e = g.data() + (e - e0) * N;
            T* dA_e = dA + e * N;
            T dD_acc = 0;
            for (std::int64_t t = t1 - 1; t >= t0; --t) {
              const std::int64_t bt = b * L + t;
              const T dy_t = dy[bt * E + e], dt = delta[bt * E + e], u_t = u[bt * E + e];
              const T* B_t = Bm + bt * N;
              const T* C_t = Cm + bt * N;
              const T* h_t = hs.data() + (t - t0 + 1) * N;
              const T* h_prev = hs.data() + (t - t0) * N;
              T* dB_t = dB_blk + bt * N;
              T* dC_t = dC_blk + bt * N;
              T ddelta_acc = 0, du_acc = D ? dy_t * D[e] : T(0);
              dD_acc += dy_t * u_t;
              for (std::int64_t n = 0; n < N; ++n) {
                dC_t[n] += dy_t * h_t[n];
                const T g_n = g_e[n] + dy_t * C_t[n];  // y_t reads h_t through C_t
                const T a = std::exp(dt * A_e[n]);
                const T g_a = g_n * h_prev[n];          // dL/da_t
                ddelta_acc += g_a * a * A_e[n] + g_n * B_t[n] * u_t;
                dA_e[n] += g_a * a * dt;
                dB_t[n] += g_n * dt * u_t;
                du_acc += g_n * dt * B_t[n];
                g_e[n] = g_n * a;  // dL/dh_{t-1} through h_t = a_t h_{t-1} + ...
              }
              ddelta[bt * E + e] = ddelta_acc;
              du[bt * E + e] = du_acc;
            }
            if (dD) dD[e] += dD_acc;
          }
        }
        if (dh0) std::copy_n(g.data(), (e1 - e0) * N, dh0 + (b * E + e0) * N);
      }
    }
  }

#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < BLN; ++i) {
    T sb = 0, sc = 0;
    for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
      sb += dB_part[blk * BLN + i];
      sc += dC_part[blk * BLN + i];
    }
    dBm[i] = sb;
    dCm[i] = sc;
  }
}

template void selective_scan_forward<float>(const ScanDims&, const float*, const float*,
                                            const float*, const float*, const float*,
                                            const float*, const float*, float*, float*, float*);
template void selective_scan_forward<double>(const ScanDims&, const double*, const double*,
                                             const double*, const double*, const double*,
                                             const double*, const double*, double*, double*,
                                             double*);
template void selective_scan_backward<float>(const ScanDims&, const float*, const float*,
                                             const float*, const float*, const float*,
                                             const float*, const float*, const float*, float*,
                                             float*, float*, float*, float*, float*, float*);
template void selective_scan_backward<double>(const ScanDims&, const double*, const double*,
                                              const double*, const double*, const double*,
                                              const double*, const double*, const double*,
                                              double*, double*, double*, double*, double*,
                                              double*, double*);

}  // namespace ssmtune::cpu
