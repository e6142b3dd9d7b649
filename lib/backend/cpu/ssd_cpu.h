// SSD, the Mamba-2 scan (docs/models.md "Mamba-2 SSD scan"; transformers' Mamba2Mixer,
// mamba_ssm's ssd_minimal / ssd_chunk_scan), CPU. Plain pointers, row-major, T = float or double.
// Per batch row and head h (group g = h / (H / G)), a scalar decay per step:
//
//   a_t = exp(dt_t A_h)
//   h_t = a_t h_{t-1} + dt_t x_t B_t^T        h: (P, N), x_t: (P), B_t, C_t: (N) of group g
//   y_t = h_t C_t + D_h x_t
//
// Two implementations of the same math:
// - ssd_reference_*: the recurrence above, step by step (the oracle of the tests).
// - ssd_forward / ssd_backward: the chunked SSD algorithm (Mamba-2 paper, section 6) with GEMMs,
//   what the CPU backend runs. Inside a chunk of Q steps, y is a masked (Q, Q) product; across
//   chunks, a recurrence over the P x N chunk-end states.
// Both save the state at each chunk start, h_saved: (B, n_chunks, H, P, N), so backward works
// one chunk at a time from it instead of storing L x H x P x N states.
#pragma once

#include <cstdint>

namespace ssmtune::cpu {

// B batch, L sequence, H heads, P head_dim, G groups (H % G == 0), N d_state, chunk >= 1.
struct SsdDims {
  std::int64_t batch, seqlen, n_heads, head_dim, n_groups, d_state;
  std::int64_t chunk = 256;
  std::int64_t n_chunks() const { return (seqlen + chunk - 1) / chunk; }
  std::int64_t heads_per_group() const { return n_heads / n_groups; }
};

// x: (B, L, H, P)   dt: (B, L, H), positive (after dt_bias, softplus, clamp)   A: (H)
// Bm, Cm: (B, L, G, N)   D: (H) or null   h0: (B, H, P, N) or null (zeros)
// y: (B, L, H, P) out   h_saved: (B, n_chunks, H, P, N) out   h_last: (B, H, P, N) out or null
template <class T>
void ssd_reference_forward(const SsdDims& d, const T* x, const T* dt, const T* A, const T* Bm,
                           const T* Cm, const T* D, const T* h0, T* y, T* h_saved, T* h_last);
template <class T>
void ssd_forward(const SsdDims& d, const T* x, const T* dt, const T* A, const T* Bm, const T* Cm,
                 const T* D, const T* h0, T* y, T* h_saved, T* h_last);

// dy: (B, L, H, P). Inputs as forward, h_saved from forward (either implementation).
// Overwritten: dx (B, L, H, P), ddt (B, L, H), dBm, dCm (B, L, G, N), dh0 (B, H, P, N) or null.
// Accumulated (+=): dA (H), dD (H) or null.
// Deterministic: every sum runs in an order fixed by the shape, whatever the thread count.
template <class T>
void ssd_reference_backward(const SsdDims& d, const T* x, const T* dt, const T* A, const T* Bm,
                            const T* Cm, const T* D, const T* h_saved, const T* dy, T* dx, T* ddt,
                            T* dA, T* dBm, T* dCm, T* dD, T* dh0);
template <class T>
void ssd_backward(const SsdDims& d, const T* x, const T* dt, const T* A, const T* Bm, const T* Cm,
                  const T* D, const T* h_saved, const T* dy, T* dx, T* ddt, T* dA, T* dBm, T* dCm,
                  T* dD, T* dh0);

}  // namespace ssmtune::cpu
