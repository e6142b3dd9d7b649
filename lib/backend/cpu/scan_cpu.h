// Selective scan (docs/models.md, Mamba step 7; mamba_ssm's selective_scan_ref), CPU reference.
// Plain pointers, row-major, T = float or double; the state is kept in T (fp32 at least).
//
//   a_t = exp(delta_t * A)                       (E, N) per step, zero-order hold for A
//   h_t = a_t * h_{t-1} + delta_t * B_t * u_t    h: (E, N), B_t: (N), broadcast over E
//   y_t = sum_n h_t[:, n] * C_t[n] + D * u_t
//
// The sequence is cut into chunks of `chunk` steps; forward saves only the state at the
// start of each chunk, backward recomputes the states inside one chunk at a time and runs
// the adjoint recurrence backwards. Memory for saved states is B * n_chunks * E * N, not
// B * L * E * N.
#pragma once

#include <cstdint>

namespace ssmtune::cpu {

// delta_softplus: `delta` holds the values before softplus (the mixer's dt_proj output) and
// the scan takes delta_t = softplus(delta) itself, as mamba_ssm's selective_scan_fn(...,
// delta_softplus=True) does; backward's ddelta is then the gradient of those values. The
// softplus is fast_softplus and its gradient softplus_grad (fast_exp.h), as the softplus ops
// compute them, so the fused scan gives the same bits as the ops around a plain scan, and no
// (B, L, E) delta is written, kept for backward or read back.
struct ScanDims {
  std::int64_t batch, seqlen, d_inner, d_state;
  std::int64_t chunk = 64;
  bool delta_softplus = false;
  std::int64_t n_chunks() const { return (seqlen + chunk - 1) / chunk; }
};

// u, delta: (B, L, E)   A: (E, N)   Bm, Cm: (B, L, N)   D: (E) or null
// h0: (B, E, N) initial state or null (zeros)
// y: (B, L, E) out   h_saved: (B, n_chunks, E, N) out   h_last: (B, E, N) out or null
template <class T>
void selective_scan_forward(const ScanDims& d, const T* u, const T* delta, const T* A,
                            const T* Bm, const T* Cm, const T* D, const T* h0, T* y,
                            T* h_saved, T* h_last);

// dy: (B, L, E). Inputs as in forward, h_saved from forward.
// Written (overwritten): du, ddelta: (B, L, E); dBm, dCm: (B, L, N); dh0: (B, E, N) or null.
// Accumulated (+=): dA: (E, N); dD: (E) or null.
// Deterministic: every sum runs in a fixed order whatever the thread count.
template <class T>
void selective_scan_backward(const ScanDims& d, const T* u, const T* delta, const T* A,
                             const T* Bm, const T* Cm, const T* D, const T* h_saved,
                             const T* dy, T* du, T* ddelta, T* dA, T* dBm, T* dCm, T* dD,
                             T* dh0);

}  // namespace ssmtune::cpu
