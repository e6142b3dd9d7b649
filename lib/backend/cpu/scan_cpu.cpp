#include "backend/cpu/scan_cpu.h"

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_clones.h"
#include "backend/cpu/fast_exp.h"

namespace ssmtune::cpu {

namespace {

// Channels handled by one task. Fixed (not derived from the thread count) so that the
// partial sums of dB and dC, one per block, are added in the same order on any machine.
constexpr std::int64_t kChannelBlock = 32;
constexpr std::int64_t KB = kChannelBlock;  // the lane-major scratch's row length

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

// The block's scratch, lane-major: every per-state array is (N, kChannelBlock), channel
// innermost, so the loops over a block's channels are contiguous and hold no sum across
// channels, and the compiler vectorises them (one lane per channel). Each lane does exactly
// the scalar recurrence's operations in the scalar recurrence's order.
template <class T> struct BlockScratch {
  std::vector<T> At;      // (N, KB) A of the block's channels
  std::vector<T> h;       // (N, KB) forward: the running state
  std::vector<T> hs, as;  // backward: (Q + 1, N, KB) states h_{t0-1} .. h_{t1-1} of one
                          // chunk; (Q, N, KB) their decays a_t = exp(delta_t A)
  std::vector<T> dts;     // backward: (Q, KB) the chunk's delta_t (after the scan's softplus)
  std::vector<T> g;       // (N, KB) the adjoint dL/dh_t
  std::vector<T> dA;      // (N, KB) the block's dA, read from and written back to dA
  std::vector<T> dBp, dCp;  // (N, KB) one step's per-channel terms of dB and dC
  BlockScratch(std::int64_t N, std::int64_t Q, bool backward)
      : At(std::size_t(N * kChannelBlock)), h(At.size()) {
    if (!backward) return;
    hs.resize(std::size_t((Q + 1) * N * kChannelBlock));
    as.resize(std::size_t(Q * N * kChannelBlock));
    dts.resize(std::size_t(Q * kChannelBlock));
    g.resize(At.size());
    dA.resize(At.size());
    dBp.resize(At.size());
    dCp.resize(At.size());
  }
};


// lanes (N, KB) <- rows (nb, N) of a row-major (E, N) array starting at channel e0, and back
template <class T>
void to_lanes(const T* rows, std::int64_t nb, std::int64_t N, T* lanes) {
  for (std::int64_t i = 0; i < nb; ++i)
    for (std::int64_t n = 0; n < N; ++n) lanes[n * KB + i] = rows[i * N + n];
}
template <class T>
void from_lanes(const T* lanes, std::int64_t nb, std::int64_t N, T* rows) {
  for (std::int64_t i = 0; i < nb; ++i)
    for (std::int64_t n = 0; n < N; ++n) rows[i * N + n] = lanes[n * KB + i];
}

// A block reads a strip of nb channels of each (B, L, E) input per step; the strips lie E
// floats apart, so every few steps the next one is on another page, where the hardware
// prefetcher stops, and the step waits for memory. Asking for the strips kAhead steps early
// hides that. Every cache line of the strip [p, p + nb).
constexpr std::int64_t kAhead = 2;
template <class T> inline void prefetch_strip(const T* p, std::int64_t nb) {
  constexpr std::int64_t line = 64 / sizeof(T);
  for (std::int64_t i = 0; i < nb; i += line) __builtin_prefetch(p + i);
  __builtin_prefetch(p + nb - 1);  // the strip's last line, when it is not aligned
}

// delta_t of nb channels from their strip of the delta input: the scan's own softplus when
// ScanDims::delta_softplus, else the values as they are.
template <class T>
[[gnu::always_inline]] inline void delta_lanes(bool softplus, std::int64_t nb,
                                               const T* __restrict in, T* __restrict dt) {
  if (softplus)
    for (std::int64_t i = 0; i < nb; ++i) dt[i] = fast_softplus(in[i]);
  else
    for (std::int64_t i = 0; i < nb; ++i) dt[i] = in[i];
}

// Forward of channels [e0, e1) of batch row b. kLanes: the block's width when known at compile
// time (a full block: loops of a fixed trip count, unrolled, the lanes kept in registers), or 0.
template <class T, std::int64_t kLanes = 0>
[[gnu::always_inline]] inline void forward_block(const ScanArgs<T>& a, std::int64_t b,
                                                 std::int64_t e0, std::int64_t e1,
                                                 BlockScratch<T>& s) {
  const std::int64_t L = a.d.seqlen, E = a.d.d_inner, N = a.d.d_state, Q = a.d.chunk;
  const std::int64_t n_chunks = a.d.n_chunks(), nb = kLanes ? kLanes : e1 - e0;
  T* __restrict h = s.h.data();
  const T* __restrict At = s.At.data();
  to_lanes(a.A + e0 * N, nb, N, s.At.data());
  if (a.h0)
    to_lanes(a.h0 + (b * E + e0) * N, nb, N, h);
  else
    std::fill(s.h.begin(), s.h.end(), T(0));
  T dt[KB], dt_u[KB], acc[KB];
  for (std::int64_t t = 0; t < L; ++t) {
    if (t % Q == 0) from_lanes(h, nb, N, a.h_saved + ((b * n_chunks + t / Q) * E + e0) * N);
    const std::int64_t bt = b * L + t;
    if (t + kAhead < L)
      for (const T* x : {a.u, a.delta, static_cast<const T*>(a.y)})
        prefetch_strip(x + (bt + kAhead) * E + e0, nb);
    const T* __restrict u_t = a.u + bt * E + e0;
    delta_lanes(a.d.delta_softplus, nb, a.delta + bt * E + e0, dt);
    for (std::int64_t i = 0; i < nb; ++i) {
      dt_u[i] = dt[i] * u_t[i];
      acc[i] = 0;
    }
    for (std::int64_t n = 0; n < N; ++n) {
      const T B_n = a.Bm[bt * N + n], C_n = a.Cm[bt * N + n];
      T* __restrict h_n = h + n * KB;
      const T* __restrict A_n = At + n * KB;
      for (std::int64_t i = 0; i < nb; ++i) {
        h_n[i] = fast_exp(dt[i] * A_n[i]) * h_n[i] + dt_u[i] * B_n;
        acc[i] += h_n[i] * C_n;
      }
    }
    for (std::int64_t i = 0; i < nb; ++i)
      a.y[bt * E + e0 + i] = acc[i] + (a.D ? a.D[e0 + i] * u_t[i] : T(0));
  }
  if (a.h_last) from_lanes(h, nb, N, a.h_last + (b * E + e0) * N);
}

// One step (L == 1: a decoding step) of channels [e0, e1) of batch row b, in the arrays' own
// (E, N) layout: a channel's N states are contiguous, so the update vectorises over the states,
// without the lane-major copies in and out that forward_block makes per call (at L == 1 they
// were most of its time). Each state gets forward_block's operations in its order, so the
// states are the same bits on both paths; y sums over the states in the same order, but the
// compiler may fuse each multiply-add on one path and not the other, so y may differ in its
// rounding (tests/cpu_scan_test.cpp).
template <class T>
[[gnu::always_inline]] inline void forward_step(const ScanArgs<T>& a, std::int64_t b,
                                                std::int64_t e0, std::int64_t e1) {
  const std::int64_t E = a.d.d_inner, N = a.d.d_state;
  const T* __restrict B_t = a.Bm + b * N;
  const T* __restrict C_t = a.Cm + b * N;
  std::vector<T> h_scratch(a.h_last ? 0 : std::size_t(N));  // the new state, when not kept
  for (std::int64_t e = e0; e < e1; ++e) {
    const std::int64_t be = b * E + e;
    const T* __restrict A_e = a.A + e * N;
    T* __restrict saved = a.h_saved + be * N;  // the one chunk's start state: h0
    if (a.h0)
      std::copy_n(a.h0 + be * N, N, saved);
    else
      std::fill_n(saved, N, T(0));
    T* __restrict h = a.h_last ? a.h_last + be * N : h_scratch.data();
    const T dt = a.d.delta_softplus ? fast_softplus(a.delta[be]) : a.delta[be];
    const T u_t = a.u[be], dt_u = dt * u_t;
    for (std::int64_t n = 0; n < N; ++n) h[n] = fast_exp(dt * A_e[n]) * saved[n] + dt_u * B_t[n];
    T acc = 0;
    for (std::int64_t n = 0; n < N; ++n) acc += h[n] * C_t[n];
    a.y[be] = acc + (a.D ? a.D[e] * u_t : T(0));
  }
}

// The sum of one row of KB lanes, in a fixed tree: four rows of 8 added lane by lane, then
// 8 -> 1 pairwise. A sum in channel order is a chain of KB dependent adds per state and step,
// which took longer than the adjoint itself; the tree vectorises, and its order depends on
// neither the ISA clone nor the thread count.
template <class T> [[gnu::always_inline]] inline T lane_sum(const T* __restrict p) {
  static_assert(KB == 32, "the tree below adds four rows of 8 lanes");
  T s[8];
  for (int j = 0; j < 8; ++j) s[j] = (p[j] + p[8 + j]) + (p[16 + j] + p[24 + j]);
  return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

// One state n of one step of the adjoint recurrence, over the block's nb channels (lanes).
// Parameters, not locals, so that __restrict holds and the loop vectorises without run-time
// alias checks.
template <class T>
[[gnu::always_inline]] inline void adjoint_row(
    std::int64_t nb, T B_n, T C_n, const T* __restrict dy, const T* __restrict dt,
    const T* __restrict u, const T* __restrict h_t, const T* __restrict h_prev,
    const T* __restrict a_t, const T* __restrict A, T* __restrict g, T* __restrict dA,
    T* __restrict dB, T* __restrict dC, T* __restrict ddelta_acc, T* __restrict du_acc) {
  for (std::int64_t i = 0; i < nb; ++i) {
    dC[i] = dy[i] * h_t[i];
    const T g_i = g[i] + dy[i] * C_n;  // y_t reads h_t through C_t
    const T da = a_t[i];
    const T g_a = g_i * h_prev[i];  // dL/da_t
    ddelta_acc[i] += g_a * da * A[i] + g_i * B_n * u[i];
    dA[i] += g_a * da * dt[i];
    dB[i] = g_i * dt[i] * u[i];
    du_acc[i] += g_i * dt[i] * B_n;
    g[i] = g_i * da;  // dL/dh_{t-1} through h_t = a_t h_{t-1} + ...
  }
}

// Backward of channels [e0, e1) of batch row b, chunks in reverse: recompute the chunk's
// states from its saved start state (keeping each decay, so each exp is taken once), then the
// adjoint recurrence backwards in time. dB_blk, dC_blk: (B, L, N), this block's sums over its
// channels, each element written once.
template <class T, std::int64_t kLanes = 0>
[[gnu::always_inline]] inline void backward_block(const ScanGradArgs<T>& a, std::int64_t b,
                                                  std::int64_t e0, std::int64_t e1,
                                                  BlockScratch<T>& s, T* dB_blk, T* dC_blk) {
  const std::int64_t L = a.d.seqlen, E = a.d.d_inner, N = a.d.d_state, Q = a.d.chunk;
  const std::int64_t n_chunks = a.d.n_chunks(), nb = kLanes ? kLanes : e1 - e0, span = N * KB;
  const T* __restrict At = s.At.data();
  T* __restrict g = s.g.data();
  T* __restrict dA = s.dA.data();
  T* __restrict dBp = s.dBp.data();
  T* __restrict dCp = s.dCp.data();
  to_lanes(a.A + e0 * N, nb, N, s.At.data());
  to_lanes(a.dA + e0 * N, nb, N, dA);  // accumulated in place, in the scalar order
  std::fill(s.g.begin(), s.g.end(), T(0));
  for (std::int64_t n = 0; n < N; ++n) {  // lanes past nb add nothing to lane_sum
    std::fill(dBp + n * KB + nb, dBp + (n + 1) * KB, T(0));
    std::fill(dCp + n * KB + nb, dCp + (n + 1) * KB, T(0));
  }
  T dt_u[KB], ddelta_acc[KB], du_acc[KB];
  for (std::int64_t c = n_chunks - 1; c >= 0; --c) {
    const std::int64_t t0 = c * Q, t1 = std::min(L, t0 + Q);
    to_lanes(a.h_saved + ((b * n_chunks + c) * E + e0) * N, nb, N, s.hs.data());
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t bt = b * L + t;
      if (t + kAhead < t1)
        for (const T* x : {a.u, a.delta}) prefetch_strip(x + (bt + kAhead) * E + e0, nb);
      const T* __restrict hp = s.hs.data() + (t - t0) * span;
      T* __restrict hn = s.hs.data() + (t - t0 + 1) * span;
      T* __restrict a_t = s.as.data() + (t - t0) * span;
      const T* __restrict u = a.u + bt * E + e0;
      T* __restrict dt = s.dts.data() + (t - t0) * KB;  // kept for the adjoint pass below
      delta_lanes(a.d.delta_softplus, nb, a.delta + bt * E + e0, dt);
      for (std::int64_t i = 0; i < nb; ++i) dt_u[i] = dt[i] * u[i];
      for (std::int64_t n = 0; n < N; ++n) {
        const T B_n = a.Bm[bt * N + n];
        const std::int64_t o = n * KB;
        const T* __restrict A_n = At + o;
        const T* __restrict hp_n = hp + o;
        T* __restrict a_tn = a_t + o;
        T* __restrict hn_n = hn + o;
        for (std::int64_t i = 0; i < nb; ++i) {
          a_tn[i] = fast_exp(dt[i] * A_n[i]);
          hn_n[i] = a_tn[i] * hp_n[i] + dt_u[i] * B_n;
        }
      }
    }
    for (std::int64_t t = t1 - 1; t >= t0; --t) {
      const std::int64_t bt = b * L + t;
      if (t - kAhead >= 0)
        for (const T* x : {a.dy, static_cast<const T*>(a.du), static_cast<const T*>(a.ddelta)})
          prefetch_strip(x + (bt - kAhead) * E + e0, nb);
      const T* __restrict h_t = s.hs.data() + (t - t0 + 1) * span;
      const T* __restrict h_prev = s.hs.data() + (t - t0) * span;
      const T* __restrict a_t = s.as.data() + (t - t0) * span;
      const T* __restrict dy = a.dy + bt * E + e0;
      const T* __restrict delta_in = a.delta + bt * E + e0;
      const T* __restrict u = a.u + bt * E + e0;
      const T* __restrict dt = s.dts.data() + (t - t0) * KB;
      for (std::int64_t i = 0; i < nb; ++i) {
        ddelta_acc[i] = 0;
        du_acc[i] = a.D ? dy[i] * a.D[e0 + i] : T(0);
      }
      for (std::int64_t n = 0; n < N; ++n) {
        const std::int64_t o = n * KB;  // row n of every (N, KB) array
        adjoint_row(nb, a.Bm[bt * N + n], a.Cm[bt * N + n], dy, dt, u, h_t + o, h_prev + o,
                    a_t + o, At + o, g + o, dA + o, dBp + o, dCp + o, ddelta_acc, du_acc);
      }
      T* __restrict ddelta = a.ddelta + bt * E + e0;
      if (a.d.delta_softplus)
        for (std::int64_t i = 0; i < nb; ++i) ddelta[i] = softplus_grad(ddelta_acc[i], delta_in[i]);
      else
        std::copy_n(ddelta_acc, nb, ddelta);
      std::copy_n(du_acc, nb, a.du + bt * E + e0);
      if (a.dD)
        for (std::int64_t i = 0; i < nb; ++i) a.dD[e0 + i] += dy[i] * u[i];
      for (std::int64_t n = 0; n < N; ++n) {
        dB_blk[bt * N + n] = lane_sum(dBp + n * KB);
        dC_blk[bt * N + n] = lane_sum(dCp + n * KB);
      }
    }
  }
  from_lanes(dA, nb, N, a.dA + e0 * N);
  if (a.dh0) from_lanes(g, nb, N, a.dh0 + (b * E + e0) * N);
}

// float: vectorised per CPU (cpu_clones.h), full blocks of KB lanes apart from a last partial
// one; double (gradient checks) uses the generic body.
SSMTUNE_CPU_CLONES void forward_block_f32(const ScanArgs<float>& a, std::int64_t b,
                                          std::int64_t e0, std::int64_t e1,
                                          BlockScratch<float>& s) {
  if (e1 - e0 == KB)
    forward_block<float, KB>(a, b, e0, e1, s);
  else
    forward_block(a, b, e0, e1, s);
}
SSMTUNE_CPU_CLONES void backward_block_f32(const ScanGradArgs<float>& a, std::int64_t b,
                                           std::int64_t e0, std::int64_t e1,
                                           BlockScratch<float>& s, float* dB_blk, float* dC_blk) {
  if (e1 - e0 == KB)
    backward_block<float, KB>(a, b, e0, e1, s, dB_blk, dC_blk);
  else
    backward_block(a, b, e0, e1, s, dB_blk, dC_blk);
}

SSMTUNE_CPU_CLONES void forward_step_f32(const ScanArgs<float>& a, std::int64_t b,
                                         std::int64_t e0, std::int64_t e1) {
  forward_step(a, b, e0, e1);
}

template <class T>
void forward_task(const ScanArgs<T>& a, std::int64_t b, std::int64_t e0, std::int64_t e1,
                  BlockScratch<T>& s) {
  if constexpr (std::is_same_v<T, float>)
    forward_block_f32(a, b, e0, e1, s);
  else
    forward_block(a, b, e0, e1, s);
}

template <class T>
void backward_task(const ScanGradArgs<T>& a, std::int64_t b, std::int64_t e0, std::int64_t e1,
                   BlockScratch<T>& s, T* dB_blk, T* dC_blk) {
  if constexpr (std::is_same_v<T, float>)
    backward_block_f32(a, b, e0, e1, s, dB_blk, dC_blk);
  else
    backward_block(a, b, e0, e1, s, dB_blk, dC_blk);
}

}  // namespace

template <class T>
void selective_scan_forward(const ScanDims& d, const T* u, const T* delta, const T* A,
                            const T* Bm, const T* Cm, const T* D, const T* h0, T* y,
                            T* h_saved, T* h_last) {
  const ScanArgs<T> a{d, u, delta, A, Bm, Cm, D, h0, y, h_saved, h_last};
  const std::int64_t n_blocks = n_channel_blocks(d.d_inner);
  if (d.seqlen == 1) {
#pragma omp parallel for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < d.batch; ++b)
      for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
        const std::int64_t e0 = blk * kChannelBlock, e1 = std::min(d.d_inner, e0 + kChannelBlock);
        if constexpr (std::is_same_v<T, float>)
          forward_step_f32(a, b, e0, e1);
        else
          forward_step(a, b, e0, e1);
      }
    return;
  }
#pragma omp parallel
  {
    BlockScratch<T> s(d.d_state, d.chunk, /*backward=*/false);
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < d.batch; ++b)
      for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
        const std::int64_t e0 = blk * kChannelBlock;
        forward_task(a, b, e0, std::min(d.d_inner, e0 + kChannelBlock), s);
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
  // dB and dC sum over all channels; each channel block writes its own sums (every element,
  // so the buffers need no zeroing), added below in block order (deterministic, no atomics).
  // Each block owns its channels' dA and dD, so those need no reduction.
  const std::unique_ptr<T[]> dB_part(new T[std::size_t(n_blocks * BLN)]);
  const std::unique_ptr<T[]> dC_part(new T[std::size_t(n_blocks * BLN)]);
#pragma omp parallel
  {
    BlockScratch<T> s(d.d_state, d.chunk, /*backward=*/true);
#pragma omp for schedule(static)
    for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
      const std::int64_t e0 = blk * kChannelBlock, e1 = std::min(d.d_inner, e0 + kChannelBlock);
      for (std::int64_t b = 0; b < d.batch; ++b)
        backward_task(a, b, e0, e1, s, dB_part.get() + blk * BLN, dC_part.get() + blk * BLN);
    }
  }
  // Slices of the (B, L, N) outputs, each summed block after block: contiguous rows, so the
  // adds vectorise across elements while every element keeps the block order.
  constexpr std::int64_t kSlice = 1024;
#pragma omp parallel for schedule(static)
  for (std::int64_t i0 = 0; i0 < BLN; i0 += kSlice) {
    const std::int64_t i1 = std::min(BLN, i0 + kSlice);
    std::copy(dB_part.get() + i0, dB_part.get() + i1, dBm + i0);
    std::copy(dC_part.get() + i0, dC_part.get() + i1, dCm + i0);
    for (std::int64_t blk = 1; blk < n_blocks; ++blk)
      for (std::int64_t i = i0; i < i1; ++i) {
        dBm[i] += dB_part[blk * BLN + i];
        dCm[i] += dC_part[blk * BLN + i];
      }
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
