// The chunked SSD algorithm (ssd_cpu.h; Mamba-2 paper section 6, mamba_ssm's ssd_minimal), CPU,
// with the products as BLAS GEMMs. The derivation of every term and of its backward:
// docs/models.md "Mamba-2 SSD scan". Per batch row b, head h and chunk c of q steps
// [t0, t0 + q), with cum_t = sum_{t0 <= s <= t} dt_s A (the chunk's log decay up to step t):
//   Y_diag = (CB ∘ Lmask ∘ dt_s) X     CB = C B^T (q, q), shared by the group's heads,
//                                      Lmask[t, s] = exp(cum_t - cum_s) for s <= t, else 0
//   S_c    = X^T diag(exp(cum_end - cum_s) dt_s) B      (P, N), the chunk's own end state
//   h_{c+1} = exp(cum_end) h_c + S_c                    (the recurrence across chunks)
//   Y_off[t] = exp(cum_t) h_c C_t,   y = Y_diag + D x + Y_off
// Decays are always exp of the log-decay sum between the two steps (<= 0), never a ratio of
// exps, so nothing overflows however long the chunk; the log-decay gradients sum in double.
// Three passes, each parallel over independent tasks, so no sum crosses threads: (1) per
// (b, group, c) the intra-chunk terms, (2) per (b, h) the recurrence across chunks, (3) per
// (b, group, c) the terms that need h_c. A task runs its group's heads in order, so dBm and dCm
// (summed over the group's heads) have one writer; dA and dD (summed over b and chunks) go
// through per-(b, c, h) partials added in a fixed order at the end.
#include "backend/cpu/ssd_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/gemm_cpu.h"
#include "backend/cpu/ssd_layout.h"

namespace ssmtune::cpu {

namespace {

// One chunk of one batch row and group: rows [t0, t0 + q) of every tensor.
struct ChunkTask {
  std::int64_t b, g, c, t0, q;
};

ChunkTask chunk_task(const SsdDims& d, std::int64_t b, std::int64_t g, std::int64_t c) {
  const std::int64_t t0 = c * d.chunk;
  return {b, g, c, t0, std::min(d.seqlen, t0 + d.chunk) - t0};
}

// Runs f(task) for every (b, group, chunk) in parallel, each thread with its own Scratch.
template <class Scratch, class F>
void for_each_chunk(const SsdDims& d, F&& f) {
#pragma omp parallel
  {
    Scratch scratch(d);
#pragma omp for collapse(3) schedule(static)
    for (std::int64_t b = 0; b < d.batch; ++b)
      for (std::int64_t g = 0; g < d.n_groups; ++g)
        for (std::int64_t c = 0; c < d.n_chunks(); ++c) f(chunk_task(d, b, g, c), scratch);
  }
}

// exp of a log decay (<= 0), zero where it would be subnormal (below exp(-80) ~ 2e-35 in float,
// exp(-700) in double): such a weight is nothing next to the terms of order 1 it is added to,
// and subnormal operands make x86 arithmetic, BLAS included, many times slower (a chunk of 256
// steps reaches log decays of -200; the forward took 0.65 s instead of 0.15 s on one core).
template <class T>
T decay(T log_decay) {
  constexpr T kMin = sizeof(T) == 4 ? T(-80) : T(-700);
  return log_decay < kMin ? T(0) : std::exp(log_decay);
}

// M = CB ∘ Lmask ∘ dt_s: (q, q), zero above the diagonal.   CB, Lm: (q, q)   dt_c: (q)
template <class T>
void masked_kernel(std::int64_t q, const T* CB, const T* Lm, const T* dt_c, T* M) {
  for (std::int64_t t = 0; t < q; ++t)
    for (std::int64_t s = 0; s < q; ++s)
      M[t * q + s] = s <= t ? CB[t * q + s] * Lm[t * q + s] * dt_c[s] : T(0);
}

// Per-thread work space; q <= Q = min(chunk, L).
template <class T>
struct Scratch {
  std::int64_t Q;
  std::vector<T> CB, Lm, M, dM, dCB, cum, dt_c, ddt_c, QN, QN2, QP, QP2;
  // dL/dcum_t in double, also for float: it is a sum of +- terms (each pair (t, s) adds r to
  // dcum_t and subtracts it from dcum_s) whose reverse cumulative sum cancels; in float that
  // cost dA 1.5e-5 (normwise, chunk 256) against the sequential scan's 3.6e-7.
  std::vector<double> dcum;
  explicit Scratch(const SsdDims& d)
      : Q(std::min(d.chunk, d.seqlen)),
        CB(Q * Q),
        Lm(Q * Q),
        M(Q * Q),
        dM(Q * Q),
        dCB(Q * Q),
        cum(Q),
        dt_c(Q),
        ddt_c(Q),
        QN(Q * d.d_state),
        QN2(Q * d.d_state),
        QP(Q * d.head_dim),
        QP2(Q * d.head_dim),
        dcum(Q) {}
};

template <class T>
struct Problem {
  const SsdDims& d;
  SsdLayout at;
  const T *x, *dt, *A, *Bm, *Cm, *D;
  std::int64_t ldx() const { return at.x_stride(); }
  std::int64_t ldbc() const { return at.bc_stride(); }
  std::int64_t first_head(std::int64_t g) const { return g * d.heads_per_group(); }
  // The chunk's dt_s of head h and its log decays cum_t = sum_{j <= t} dt_j A_h; with
  // `mask`, also Lm[t, s] = exp(cum_t - cum_s) for s <= t (zero above the diagonal).
  // cum_t - cum_s is summed directly, sum_{s < j <= t} dt_j A (mamba_ssm's segsum), not
  // subtracted: in float, cum_t - cum_s of two sums near -200 keeps only ~1e-5 of its value.
  void decays(const ChunkTask& k, std::int64_t h, Scratch<T>& s, bool mask) const {
    T run = 0;
    for (std::int64_t j = 0; j < k.q; ++j) {
      s.dt_c[j] = dt[at.dt(k.b, k.t0 + j, h)];
      s.cum[j] = run += s.dt_c[j] * A[h];
    }
    for (std::int64_t t = 0; t < k.q && mask; ++t) {
      T seg = 0;
      for (std::int64_t j = t; j >= 0; --j) {
        s.Lm[t * k.q + j] = decay(seg);
        seg += s.dt_c[j] * A[h];
      }
      std::fill(s.Lm.begin() + t * k.q + t + 1, s.Lm.begin() + (t + 1) * k.q, T(0));
    }
  }
  // CB = C B^T of the chunk's group: (q, q).
  void chunk_CB(const ChunkTask& k, T* CB) const {
    gemm<T>(false, true, k.q, k.q, d.d_state, T(1), Cm + at.bc(k.b, k.t0, k.g), ldbc(),
            Bm + at.bc(k.b, k.t0, k.g), ldbc(), T(0), CB, k.q);
  }
  // Ce[t, n] = exp(cum_t) C[t, n]: (q, N).
  void decayed_C(const ChunkTask& k, const T* cum, T* Ce) const {
    const std::int64_t N = d.d_state;
    const T* C = Cm + at.bc(k.b, k.t0, k.g);
    for (std::int64_t t = 0; t < k.q; ++t)
      for (std::int64_t n = 0; n < N; ++n) Ce[t * N + n] = decay(cum[t]) * C[t * ldbc() + n];
  }
};

// Across chunks, per (b, h): buf[c] holds a per-chunk term on entry and the carried value on
// exit: forward, buf[c] = S_c in, h_c out, with h_{c+1} = exp(cum_end_c) h_c + S_c from h_0 =
// init (or zeros); backward (reverse), buf[c] = dL/dh_c's own term in, dL/dh_{c+1} out. Returns
// the final carry in `carry` (h_last, or dL/dh_0).
template <class T>
void carry_across_chunks(const SsdDims& d, std::int64_t b, std::int64_t h, bool reverse,
                         const T* log_decay_end, T* buf, const T* init, T* carry) {
  const SsdLayout at{d};
  const std::int64_t PN = at.state_size(), nc = d.n_chunks();
  if (init)
    std::copy_n(init, PN, carry);
  else
    std::fill_n(carry, PN, T(0));
  for (std::int64_t i = 0; i < nc; ++i) {
    const std::int64_t c = reverse ? nc - 1 - i : i;
    T* term = buf + at.saved(b, c, h);
    const T a = decay(log_decay_end[(b * nc + c) * d.n_heads + h]);
    for (std::int64_t j = 0; j < PN; ++j) {
      const T own = term[j];
      term[j] = carry[j];
      carry[j] = a * carry[j] + own;
    }
  }
}

// Runs f(b, h, carry) for every (b, head) in parallel; carry: (P, N) per-thread scratch.
template <class T, class F>
void for_each_head(const SsdDims& d, F&& f) {
#pragma omp parallel
  {
    std::vector<T> carry(std::size_t(d.head_dim * d.d_state));
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < d.batch; ++b)
      for (std::int64_t h = 0; h < d.n_heads; ++h) f(b, h, carry.data());
  }
}

}  // namespace

template <class T>
void ssd_forward(const SsdDims& d, const T* x, const T* dt, const T* A, const T* Bm, const T* Cm,
                 const T* D, const T* h0, T* y, T* h_saved, T* h_last) {
  const Problem<T> pr{d, SsdLayout{d}, x, dt, A, Bm, Cm, D};
  const SsdLayout& at = pr.at;
  const std::int64_t P = d.head_dim, N = d.d_state, nc = d.n_chunks();
  std::vector<T> log_decay_end(std::size_t(d.batch * nc * d.n_heads));
  // Pass 1: Y_diag + D x into y, S_c into h_saved[c] (replaced by h_c in pass 2).
  for_each_chunk<Scratch<T>>(d, [&](const ChunkTask& k, Scratch<T>& s) {
    pr.chunk_CB(k, s.CB.data());
    for (std::int64_t h = pr.first_head(k.g); h < pr.first_head(k.g + 1); ++h) {
      pr.decays(k, h, s, true);
      masked_kernel(k.q, s.CB.data(), s.Lm.data(), s.dt_c.data(), s.M.data());
      const T* X = x + at.x(k.b, k.t0, h);
      T* Y = y + at.x(k.b, k.t0, h);
      gemm<T>(false, false, k.q, P, k.q, T(1), s.M.data(), k.q, X, pr.ldx(), T(0), Y, pr.ldx());
      for (std::int64_t t = 0; t < k.q && D; ++t)
        for (std::int64_t p = 0; p < P; ++p) Y[t * pr.ldx() + p] += D[h] * X[t * pr.ldx() + p];
      // Bw[s, n] = exp(cum_end - cum_s) dt_s B[s, n] (Lmask's last row); S_c = X^T Bw.
      const T* Bc = Bm + at.bc(k.b, k.t0, k.g);
      for (std::int64_t j = 0; j < k.q; ++j) {
        const T w = s.Lm[(k.q - 1) * k.q + j] * s.dt_c[j];
        for (std::int64_t n = 0; n < N; ++n) s.QN[j * N + n] = w * Bc[j * pr.ldbc() + n];
      }
      gemm<T>(true, false, P, N, k.q, T(1), X, pr.ldx(), s.QN.data(), N, T(0),
              h_saved + at.saved(k.b, k.c, h), N);
      log_decay_end[(k.b * nc + k.c) * d.n_heads + h] = s.cum[k.q - 1];
    }
  });
  // Pass 2: h_c at each chunk start, h_last after the last.
  for_each_head<T>(d, [&](std::int64_t b, std::int64_t h, T* carry) {
    carry_across_chunks(d, b, h, false, log_decay_end.data(), h_saved,
                        h0 ? h0 + at.state(b, h) : nullptr, carry);
    if (h_last) std::copy_n(carry, at.state_size(), h_last + at.state(b, h));
  });
  // Pass 3: y += Y_off = diag(exp(cum)) C h_c^T.
  for_each_chunk<Scratch<T>>(d, [&](const ChunkTask& k, Scratch<T>& s) {
    for (std::int64_t h = pr.first_head(k.g); h < pr.first_head(k.g + 1); ++h) {
      pr.decays(k, h, s, false);
      pr.decayed_C(k, s.cum.data(), s.QN.data());
      gemm<T>(false, true, k.q, P, N, T(1), s.QN.data(), N, h_saved + at.saved(k.b, k.c, h), N,
              T(1), y + at.x(k.b, k.t0, h), pr.ldx());
    }
  });
}

namespace {

// Backward of one head's chunk terms (docs/models.md "Mamba-2 SSD scan", backward). h_c: the
// chunk's start state, Gn = dL/dh_{c+1}: (P, N). Writes dx and ddt of the head's chunk, adds
// into dBm, dCm (the chunk's rows, zeroed by the caller) and s.dCB (the head's dL/dCB), and
// returns {dA, dD} contributions.
template <class T>
struct HeadPartials {
  T dA, dD;
};
template <class T>
HeadPartials<T> chunk_head_backward(const Problem<T>& pr, const ChunkTask& k, std::int64_t h,
                                    const T* h_c, const T* Gn, const T* dy, T* dx, T* ddt, T* dBm,
                                    T* dCm, Scratch<T>& s) {
  const SsdLayout& at = pr.at;
  const std::int64_t P = pr.d.head_dim, N = pr.d.d_state, q = k.q, ldx = pr.ldx();
  const std::int64_t ldbc = pr.ldbc();
  const T *X = pr.x + at.x(k.b, k.t0, h), *dY = dy + at.x(k.b, k.t0, h);
  const T *Bc = pr.Bm + at.bc(k.b, k.t0, k.g), *Cc = pr.Cm + at.bc(k.b, k.t0, k.g);
  T *dX = dx + at.x(k.b, k.t0, h), *dB = dBm + at.bc(k.b, k.t0, k.g);
  T* dC = dCm + at.bc(k.b, k.t0, k.g);
  const T *cum = s.cum.data(), *dt_c = s.dt_c.data();
  double* dcum = s.dcum.data();
  T* ddt_c = s.ddt_c.data();
  pr.decays(k, h, s, true);
  std::fill_n(dcum, q, 0.0);
  std::fill_n(ddt_c, q, T(0));
  // Y_diag = M X: dX = M^T dY; dM = dY X^T, then through M = CB ∘ exp(cum_t - cum_s) ∘ dt_s.
  masked_kernel(q, s.CB.data(), s.Lm.data(), dt_c, s.M.data());
  gemm<T>(true, false, q, P, q, T(1), s.M.data(), q, dY, ldx, T(0), dX, ldx);
  gemm<T>(false, true, q, q, P, T(1), dY, ldx, X, ldx, T(0), s.dM.data(), q);
  for (std::int64_t t = 0; t < q; ++t)
    for (std::int64_t j = 0; j <= t; ++j) {
      const T dM = s.dM[t * q + j], L_tj = s.Lm[t * q + j];
      const T r = dM * s.M[t * q + j];  // d/dcum_t of the term, and minus d/dcum_j
      dcum[t] += r;
      dcum[j] -= r;
      ddt_c[j] += dM * s.CB[t * q + j] * L_tj;
      s.dCB[t * q + j] += dM * L_tj * dt_c[j];
    }
  // Y_off[t] = exp(cum_t) h_c C_t: W = diag(exp(cum)) dY h_c is dC's term, and C_t . W_t is
  // dcum_t's.
  for (std::int64_t t = 0; t < q; ++t)
    for (std::int64_t p = 0; p < P; ++p) s.QP[t * P + p] = decay(cum[t]) * dY[t * ldx + p];
  gemm<T>(false, false, q, N, P, T(1), s.QP.data(), P, h_c, N, T(0), s.QN.data(), N);
  for (std::int64_t t = 0; t < q; ++t)
    for (std::int64_t n = 0; n < N; ++n) {
      dcum[t] += Cc[t * ldbc + n] * s.QN[t * N + n];
      dC[t * ldbc + n] += s.QN[t * N + n];
    }
  // h_{c+1} = exp(cum_end) h_c + sum_s w_s x_s B_s^T, w_s = exp(cum_end - cum_s) dt_s:
  // U = B Gn^T gives dX and dw, V = X Gn gives dB.
  const T cum_end = cum[q - 1];
  double dcum_end = 0;
  for (std::int64_t i = 0; i < P * N; ++i) dcum_end += Gn[i] * h_c[i];
  dcum_end *= decay(cum_end);
  gemm<T>(false, true, q, P, N, T(1), Bc, ldbc, Gn, N, T(0), s.QP2.data(), P);
  gemm<T>(false, false, q, N, P, T(1), X, ldx, Gn, N, T(0), s.QN2.data(), N);
  for (std::int64_t j = 0; j < q; ++j) {
    const T decay = s.Lm[(q - 1) * q + j], w = decay * dt_c[j];
    T dw = 0;
    for (std::int64_t p = 0; p < P; ++p) {
      dw += X[j * ldx + p] * s.QP2[j * P + p];
      dX[j * ldx + p] += w * s.QP2[j * P + p];
    }
    for (std::int64_t n = 0; n < N; ++n) dB[j * ldbc + n] += w * s.QN2[j * N + n];
    ddt_c[j] += dw * decay;
    dcum_end += dw * w;
    dcum[j] -= dw * w;
  }
  dcum[q - 1] += dcum_end;
  HeadPartials<T> part{0, 0};
  if (pr.D)
    for (std::int64_t t = 0; t < q; ++t)
      for (std::int64_t p = 0; p < P; ++p) {
        dX[t * ldx + p] += pr.D[h] * dY[t * ldx + p];
        part.dD += dY[t * ldx + p] * X[t * ldx + p];
      }
  // cum_t = sum_{j <= t} dt_j A: dL/d(dt_j A) = sum_{t >= j} dcum_t, a reverse cumulative sum.
  double run = 0;
  for (std::int64_t j = q - 1; j >= 0; --j) {
    run += dcum[j];
    ddt[at.dt(k.b, k.t0 + j, h)] = ddt_c[j] + run * pr.A[h];
    part.dA += run * dt_c[j];
  }
  return part;
}

}  // namespace

template <class T>
void ssd_backward(const SsdDims& d, const T* x, const T* dt, const T* A, const T* Bm, const T* Cm,
                  const T* D, const T* h_saved, const T* dy, T* dx, T* ddt, T* dA, T* dBm, T* dCm,
                  T* dD, T* dh0) {
  const Problem<T> pr{d, SsdLayout{d}, x, dt, A, Bm, Cm, D};
  const SsdLayout& at = pr.at;
  const std::int64_t P = d.head_dim, N = d.d_state, H = d.n_heads, nc = d.n_chunks();
  std::vector<T> log_decay_end(std::size_t(d.batch * nc * H));
  // dstate[c]: (B, n_chunks, H, P, N), first each chunk's own term of dL/dh_c (through
  // Y_off: dY^T diag(exp(cum)) C), then, after the reverse recurrence, dL/dh_{c+1}.
  std::vector<T> dstate(std::size_t(d.batch * nc * H * P * N));
  for_each_chunk<Scratch<T>>(d, [&](const ChunkTask& k, Scratch<T>& s) {
    for (std::int64_t h = pr.first_head(k.g); h < pr.first_head(k.g + 1); ++h) {
      pr.decays(k, h, s, false);
      pr.decayed_C(k, s.cum.data(), s.QN.data());
      gemm<T>(true, false, P, N, k.q, T(1), dy + at.x(k.b, k.t0, h), pr.ldx(), s.QN.data(), N, T(0),
              dstate.data() + at.saved(k.b, k.c, h), N);
      log_decay_end[(k.b * nc + k.c) * H + h] = s.cum[k.q - 1];
    }
  });
  for_each_head<T>(d, [&](std::int64_t b, std::int64_t h, T* carry) {
    carry_across_chunks<T>(d, b, h, true, log_decay_end.data(), dstate.data(), nullptr, carry);
    if (dh0) std::copy_n(carry, at.state_size(), dh0 + at.state(b, h));
  });
  // Per (b, c, h) partials of dA and dD, added in (b, c) order below.
  std::vector<HeadPartials<T>> part(std::size_t(d.batch * nc * H));
  for_each_chunk<Scratch<T>>(d, [&](const ChunkTask& k, Scratch<T>& s) {
    for (std::int64_t t = k.t0; t < k.t0 + k.q; ++t) {
      std::fill_n(dBm + at.bc(k.b, t, k.g), N, T(0));
      std::fill_n(dCm + at.bc(k.b, t, k.g), N, T(0));
    }
    pr.chunk_CB(k, s.CB.data());
    std::fill_n(s.dCB.data(), k.q * k.q, T(0));
    for (std::int64_t h = pr.first_head(k.g); h < pr.first_head(k.g + 1); ++h)
      part[(k.b * nc + k.c) * H + h] =
          chunk_head_backward(pr, k, h, h_saved + at.saved(k.b, k.c, h),
                              dstate.data() + at.saved(k.b, k.c, h), dy, dx, ddt, dBm, dCm, s);
    // CB = C B^T, summed over the group's heads: dC += dCB B, dB += dCB^T C.
    const std::int64_t o = at.bc(k.b, k.t0, k.g), ld = pr.ldbc();
    gemm<T>(false, false, k.q, N, k.q, T(1), s.dCB.data(), k.q, Bm + o, ld, T(1), dCm + o, ld);
    gemm<T>(true, false, k.q, N, k.q, T(1), s.dCB.data(), k.q, Cm + o, ld, T(1), dBm + o, ld);
  });
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t bc = 0; bc < d.batch * nc; ++bc) {
      dA[h] += part[bc * H + h].dA;
      if (dD) dD[h] += part[bc * H + h].dD;
    }
}

#define SSMTUNE_INSTANTIATE(T)                                                                    \
  template void ssd_forward<T>(const SsdDims&, const T*, const T*, const T*, const T*, const T*,  \
                               const T*, const T*, T*, T*, T*);                                   \
  template void ssd_backward<T>(const SsdDims&, const T*, const T*, const T*, const T*, const T*, \
                                const T*, const T*, const T*, T*, T*, T*, T*, T*, T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
