#include "backend/cpu/scan_cpu.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_clones.h"
#include "backend/cpu/fast_exp.h"

namespace ssmtune::cpu {

namespace {

// Channels handled by one task. Fixed (not derived from the thread count) so that the
// partial sums of dB and dC, one per block, are added in the same order on any machine.
constexpr std::int64_t kChannelBlock = 32;

std::int64_t n_channel_blocks(std::int64_t d_inner) {
  return (d_inner + kChannelBlock - 1) / kChannelBlock;
}

template <class T> struct ScanArgs {
  const ScanDims& d;
  const T *u, *delta, *A, *Bm, *Cm, *D, *h0;
  T *y, *h_saved, *h_last;
};

template <class T> struct ScanGradArgs {
  const ScanDims& d;
  const T *u, *delta, *A, *Bm, *Cm, *D, *h_saved, *dy;
  T *du, *ddelta, *dA, *dD, *dh0;
};

// Forward of channels [e0, e1) of batch row b. h: scratch (kChannelBlock, N).
template <class T>
[[gnu::always_inline]] inline void forward_block(const ScanArgs<T>& a, std::int64_t b,
                                                 std::int64_t e0, std::int64_t e1, T* h) {
  const std::int64_t L = a.d.seqlen, E = a.d.d_inner, N = a.d.d_state, Q = a.d.chunk;
  const std::int64_t n_chunks = a.d.n_chunks(), span = (e1 - e0) * N;
  if (a.h0)
    std::copy_n(a.h0 + (b * E + e0) * N, span, h);
  else
    std::fill_n(h, span, T(0));
  for (std::int64_t t = 0; t < L; ++t) {
    if (t % Q == 0) std::copy_n(h, span, a.h_saved + ((b * n_chunks + t / Q) * E + e0) * N);
    const std::int64_t bt = b * L + t;
    const T* B_t = a.Bm + bt * N;
    const T* C_t = a.Cm + bt * N;
    for (std::int64_t e = e0; e < e1; ++e) {
      const T dt = a.delta[bt * E + e], u_t = a.u[bt * E + e], dt_u = dt * u_t;
      const T* A_e = a.A + e * N;
      T* h_e = h + (e - e0) * N;
      T acc = 0;
      for (std::int64_t n = 0; n < N; ++n) {
        h_e[n] = fast_exp(dt * A_e[n]) * h_e[n] + dt_u * B_t[n];
        acc += h_e[n] * C_t[n];
      }
      a.y[bt * E + e] = acc + (a.D ? a.D[e] * u_t : T(0));
    }
  }
  if (a.h_last) std::copy_n(h, span, a.h_last + (b * E + e0) * N);
}

// Backward of channels [e0, e1) of batch row b, chunks in reverse. Scratch: hs holds the
// block's states h_{t0-1} .. h_{t1-1} of one chunk, (Q + 1, block, N), and as the decays
// a_t = exp(delta_t A) of the chunk, (Q, block, N), kept from the recomputation so each exp is
// taken once; g the adjoint dL/dh_t of the block's channels, (block, N).
// dB_blk, dC_blk: this block's partial sums.
template <class T>
[[gnu::always_inline]] inline void backward_block(const ScanGradArgs<T>& a, std::int64_t b,
                                                  std::int64_t e0, std::int64_t e1, T* hs, T* as,
                                                  T* g, T* dB_blk, T* dC_blk) {
  const std::int64_t L = a.d.seqlen, E = a.d.d_inner, N = a.d.d_state, Q = a.d.chunk;
  const std::int64_t n_chunks = a.d.n_chunks(), nb = e1 - e0, span = nb * N;
  std::fill_n(g, span, T(0));
  std::vector<T> dB_acc(N), dC_acc(N);
  for (std::int64_t c = n_chunks - 1; c >= 0; --c) {
    const std::int64_t t0 = c * Q, t1 = std::min(L, t0 + Q);
    // Recompute the chunk's states from the saved chunk-start state.
    std::copy_n(a.h_saved + ((b * n_chunks + c) * E + e0) * N, span, hs);
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t bt = b * L + t;
      const T* B_t = a.Bm + bt * N;
      const T* hp = hs + (t - t0) * span;
      T* hn = hs + (t - t0 + 1) * span;
      T* a_t = as + (t - t0) * span;
      for (std::int64_t e = e0; e < e1; ++e) {
        const T dt = a.delta[bt * E + e], dt_u = dt * a.u[bt * E + e];
        const T* A_e = a.A + e * N;
        const std::int64_t o = (e - e0) * N;
        for (std::int64_t n = 0; n < N; ++n) {
          a_t[o + n] = fast_exp(dt * A_e[n]);
          hn[o + n] = a_t[o + n] * hp[o + n] + dt_u * B_t[n];
        }
      }
    }
    // Adjoint recurrence, backwards in time: g holds dL/dh_t.
    for (std::int64_t t = t1 - 1; t >= t0; --t) {
      const std::int64_t bt = b * L + t;
      const T* B_t = a.Bm + bt * N;
      const T* C_t = a.Cm + bt * N;
      const T* h_t = hs + (t - t0 + 1) * span;
      const T* h_prev = hs + (t - t0) * span;
      const T* a_t = as + (t - t0) * span;
      std::fill(dB_acc.begin(), dB_acc.end(), T(0));
      std::fill(dC_acc.begin(), dC_acc.end(), T(0));
      for (std::int64_t e = e0; e < e1; ++e) {
        const T dy_t = a.dy[bt * E + e], dt = a.delta[bt * E + e], u_t = a.u[bt * E + e];
        const T* A_e = a.A + e * N;
        T* dA_e = a.dA + e * N;
        T* g_e = g + (e - e0) * N;
        const std::int64_t o = (e - e0) * N;
        T ddelta_acc = 0, du_acc = a.D ? dy_t * a.D[e] : T(0);
        for (std::int64_t n = 0; n < N; ++n) {
          dC_acc[n] += dy_t * h_t[o + n];
          const T g_n = g_e[n] + dy_t * C_t[n];  // y_t reads h_t through C_t
          const T da = a_t[o + n];
          const T g_a = g_n * h_prev[o + n];  // dL/da_t
          ddelta_acc += g_a * da * A_e[n] + g_n * B_t[n] * u_t;
          dA_e[n] += g_a * da * dt;
          dB_acc[n] += g_n * dt * u_t;
          du_acc += g_n * dt * B_t[n];
          g_e[n] = g_n * da;  // dL/dh_{t-1} through h_t = a_t h_{t-1} + ...
        }
        a.ddelta[bt * E + e] = ddelta_acc;
        a.du[bt * E + e] = du_acc;
        if (a.dD) a.dD[e] += dy_t * u_t;
      }
      for (std::int64_t n = 0; n < N; ++n) {
        dB_blk[bt * N + n] += dB_acc[n];
        dC_blk[bt * N + n] += dC_acc[n];
      }
    }
  }
  if (a.dh0) std::copy_n(g, span, a.dh0 + (b * E + e0) * N);
}

// float: vectorised per CPU (cpu_clones.h); double (gradient checks) uses the generic body.
SSMTUNE_CPU_CLONES void forward_block_f32(const ScanArgs<float>& a, std::int64_t b,
                                          std::int64_t e0, std::int64_t e1, float* h) {
  forward_block(a, b, e0, e1, h);
}
SSMTUNE_CPU_CLONES void backward_block_f32(const ScanGradArgs<float>& a, std::int64_t b,
                                           std::int64_t e0, std::int64_t e1, float* hs, float* as,
                                           float* g, float* dB_blk, float* dC_blk) {
  backward_block(a, b, e0, e1, hs, as, g, dB_blk, dC_blk);
}

template <class T>
void forward_task(const ScanArgs<T>& a, std::int64_t b, std::int64_t e0, std::int64_t e1, T* h) {
  if constexpr (std::is_same_v<T, float>)
    forward_block_f32(a, b, e0, e1, h);
  else
    forward_block(a, b, e0, e1, h);
}

template <class T>
void backward_task(const ScanGradArgs<T>& a, std::int64_t b, std::int64_t e0, std::int64_t e1,
                   T* hs, T* as, T* g, T* dB_blk, T* dC_blk) {
  if constexpr (std::is_same_v<T, float>)
    backward_block_f32(a, b, e0, e1, hs, as, g, dB_blk, dC_blk);
  else
    backward_block(a, b, e0, e1, hs, as, g, dB_blk, dC_blk);
}

}  // namespace

template <class T>
void selective_scan_forward(const ScanDims& d, const T* u, const T* delta, const T* A,
                            const T* Bm, const T* Cm, const T* D, const T* h0, T* y,
                            T* h_saved, T* h_last) {
  const ScanArgs<T> a{d, u, delta, A, Bm, Cm, D, h0, y, h_saved, h_last};
  const std::int64_t n_blocks = n_channel_blocks(d.d_inner);
#pragma omp parallel
  {
    std::vector<T> h(kChannelBlock * d.d_state);
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < d.batch; ++b)
      for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
        const std::int64_t e0 = blk * kChannelBlock;
        forward_task(a, b, e0, std::min(d.d_inner, e0 + kChannelBlock), h.data());
      }
  }
}

template <class T>
void selective_scan_backward(const ScanDims& d, const T* u, const T* delta, const T* A,
                             const T* Bm, const T* Cm, const T* D, const T* h_saved,
                             const T* dy, T* du, T* ddelta, T* dA, T* dBm, T* dCm, T* dD,
                             T* dh0) {
  const ScanGradArgs<T> a{d, u, delta, A, Bm, Cm, D, h_saved, dy, du, ddelta, dA, dD, dh0};
  const std::int64_t n_blocks = n_channel_blocks(d.d_inner);
  const std::int64_t BLN = d.batch * d.seqlen * d.d_state;
  // dB and dC sum over all channels; each channel block writes its own partial sums,
  // reduced below in block order (deterministic, no atomics). Each block owns its channels'
  // dA and dD, so those need no reduction.
  std::vector<T> dB_part(std::size_t(n_blocks * BLN), T(0)), dC_part(std::size_t(n_blocks * BLN), T(0));
#pragma omp parallel
  {
    const std::int64_t block_states = kChannelBlock * d.d_state;
    std::vector<T> hs((d.chunk + 1) * block_states), as(d.chunk * block_states), g(block_states);
#pragma omp for schedule(static)
    for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
      const std::int64_t e0 = blk * kChannelBlock, e1 = std::min(d.d_inner, e0 + kChannelBlock);
      for (std::int64_t b = 0; b < d.batch; ++b)
        backward_task(a, b, e0, e1, hs.data(), as.data(), g.data(), dB_part.data() + blk * BLN,
                      dC_part.data() + blk * BLN);
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

#define SSMTUNE_INSTANTIATE(T)                                                                 \
  template void selective_scan_forward<T>(const ScanDims&, const T*, const T*, const T*,       \
                                          const T*, const T*, const T*, const T*, T*, T*, T*); \
  template void selective_scan_backward<T>(const ScanDims&, const T*, const T*, const T*,      \
                                           const T*, const T*, const T*, const T*, const T*,   \
                                           T*, T*, T*, T*, T*, T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
