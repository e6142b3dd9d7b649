// The SSD scan step by step (ssd_cpu.h): the readable oracle the chunked algorithm and the CUDA
// kernels are tested against. Forward runs the recurrence per (batch row, head); backward runs
// the adjoint recurrence backwards, recomputing each chunk's states from h_saved (as
// scan_cpu.cpp). Tasks are (batch row, group) with the group's heads in order inside, so dBm and
// dCm, which sum over a group's heads, have one writer and a fixed order; dA and dD, which sum
// over batch rows, go through per-row partials added in row order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/ssd_cpu.h"
#include "backend/cpu/ssd_layout.h"

namespace ssmtune::cpu {

namespace {

// One step of h_t = a_t h_{t-1} + dt_t x_t B_t^T in place.   h: (P, N)   x_t: (P)   B_t: (N)
template <class T>
void step_state(std::int64_t P, std::int64_t N, T a_t, T dt_t, const T* x_t, const T* B_t, T* h) {
  for (std::int64_t p = 0; p < P; ++p)
    for (std::int64_t n = 0; n < N; ++n) h[p * N + n] = a_t * h[p * N + n] + dt_t * x_t[p] * B_t[n];
}

}  // namespace

template <class T>
void ssd_reference_forward(const SsdDims& d, const T* x, const T* dt, const T* A, const T* Bm,
                           const T* Cm, const T* D, const T* h0, T* y, T* h_saved, T* h_last) {
  const SsdLayout at{d};
  const std::int64_t P = d.head_dim, N = d.d_state, PN = at.state_size();
#pragma omp parallel
  {
    std::vector<T> h(PN);
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < d.batch; ++b)
      for (std::int64_t hd = 0; hd < d.n_heads; ++hd) {
        const std::int64_t g = at.group_of(hd);
        if (h0)
          std::copy_n(h0 + at.state(b, hd), PN, h.begin());
        else
          std::fill(h.begin(), h.end(), T(0));
        for (std::int64_t t = 0; t < d.seqlen; ++t) {
          if (t % d.chunk == 0) std::copy_n(h.begin(), PN, h_saved + at.saved(b, t / d.chunk, hd));
          const T dt_t = dt[at.dt(b, t, hd)];
          const T* x_t = x + at.x(b, t, hd);
          const T* C_t = Cm + at.bc(b, t, g);
          step_state(P, N, std::exp(dt_t * A[hd]), dt_t, x_t, Bm + at.bc(b, t, g), h.data());
          T* y_t = y + at.x(b, t, hd);
          for (std::int64_t p = 0; p < P; ++p) {
            T acc = 0;
            for (std::int64_t n = 0; n < N; ++n) acc += h[p * N + n] * C_t[n];
            y_t[p] = acc + (D ? D[hd] * x_t[p] : T(0));
          }
        }
        if (h_last) std::copy_n(h.begin(), PN, h_last + at.state(b, hd));
      }
  }
}

template <class T>
void ssd_reference_backward(const SsdDims& d, const T* x, const T* dt, const T* A, const T* Bm,
                            const T* Cm, const T* D, const T* h_saved, const T* dy, T* dx, T* ddt,
                            T* dA, T* dBm, T* dCm, T* dD, T* dh0) {
  const SsdLayout at{d};
  const std::int64_t P = d.head_dim, N = d.d_state, PN = at.state_size(), H = d.n_heads;
  // Per batch row partials of dA and dD, (B, H), added in row order at the end.
  std::vector<T> dA_part(std::size_t(d.batch * H), T(0)), dD_part(std::size_t(d.batch * H), T(0));
#pragma omp parallel
  {
    std::vector<T> hs((d.chunk + 1) * PN), g(PN), g_hat(PN);
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < d.batch; ++b)
      for (std::int64_t grp = 0; grp < d.n_groups; ++grp) {
        for (std::int64_t t = 0; t < d.seqlen; ++t) {
          std::fill_n(dBm + at.bc(b, t, grp), N, T(0));
          std::fill_n(dCm + at.bc(b, t, grp), N, T(0));
        }
        for (std::int64_t hd = grp * d.heads_per_group(); hd < (grp + 1) * d.heads_per_group();
             ++hd) {
          std::fill(g.begin(), g.end(), T(0));  // dL/dh_t; nothing reads h_last
          for (std::int64_t c = d.n_chunks() - 1; c >= 0; --c) {
            const std::int64_t t0 = c * d.chunk, t1 = std::min(d.seqlen, t0 + d.chunk);
            // hs[k] = h_{t0 + k - 1}: the chunk's start state, then its states one per step.
            std::copy_n(h_saved + at.saved(b, c, hd), PN, hs.begin());
            for (std::int64_t t = t0; t < t1; ++t) {
              T* h_t = hs.data() + (t - t0 + 1) * PN;
              std::copy_n(h_t - PN, PN, h_t);
              const T dt_t = dt[at.dt(b, t, hd)];
              step_state(P, N, std::exp(dt_t * A[hd]), dt_t, x + at.x(b, t, hd),
                         Bm + at.bc(b, t, grp), h_t);
            }
            for (std::int64_t t = t1 - 1; t >= t0; --t) {
              const T dt_t = dt[at.dt(b, t, hd)], a_t = std::exp(dt_t * A[hd]);
              const T *x_t = x + at.x(b, t, hd), *dy_t = dy + at.x(b, t, hd);
              const T *B_t = Bm + at.bc(b, t, grp), *C_t = Cm + at.bc(b, t, grp);
              const T *h_t = hs.data() + (t - t0 + 1) * PN, *h_prev = h_t - PN;
              T *dB_t = dBm + at.bc(b, t, grp), *dC_t = dCm + at.bc(b, t, grp);
              T da = 0, dbx = 0;  // dL/da_t, and sum g_hat . x_t B_t^T (dt_t's input term)
              for (std::int64_t p = 0; p < P; ++p) {
                T dx_acc = D ? D[hd] * dy_t[p] : T(0);
                for (std::int64_t n = 0; n < N; ++n) {
                  const std::int64_t i = p * N + n;
                  dC_t[n] += dy_t[p] * h_t[i];         // y_t = h_t C_t
                  g_hat[i] = g[i] + dy_t[p] * C_t[n];  // dL/dh_t, y_t's term included
                  da += g_hat[i] * h_prev[i];
                  dbx += g_hat[i] * x_t[p] * B_t[n];
                  dx_acc += dt_t * g_hat[i] * B_t[n];
                  g[i] = a_t * g_hat[i];  // dL/dh_{t-1} through h_t = a_t h_{t-1} + ...
                }
                dx[at.x(b, t, hd) + p] = dx_acc;
                if (D) dD_part[b * H + hd] += dy_t[p] * x_t[p];
              }
              for (std::int64_t n = 0; n < N; ++n) {
                T s = 0;
                for (std::int64_t p = 0; p < P; ++p) s += g_hat[p * N + n] * x_t[p];
                dB_t[n] += dt_t * s;
              }
              // a_t = exp(dt_t A): da_t/d dt_t = a_t A, da_t/dA = a_t dt_t.
              ddt[at.dt(b, t, hd)] = da * a_t * A[hd] + dbx;
              dA_part[b * H + hd] += da * a_t * dt_t;
            }
          }
          if (dh0) std::copy_n(g.begin(), PN, dh0 + at.state(b, hd));
        }
      }
  }
  for (std::int64_t hd = 0; hd < H; ++hd)
    for (std::int64_t b = 0; b < d.batch; ++b) {
      dA[hd] += dA_part[b * H + hd];
      if (dD) dD[hd] += dD_part[b * H + hd];
    }
}

#define SSMTUNE_INSTANTIATE(T)                                                                    \
  template void ssd_reference_forward<T>(const SsdDims&, const T*, const T*, const T*, const T*,  \
                                         const T*, const T*, const T*, T*, T*, T*);               \
  template void ssd_reference_backward<T>(const SsdDims&, const T*, const T*, const T*, const T*, \
                                          const T*, const T*, const T*, const T*, T*, T*, T*, T*, \
                                          T*, T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
