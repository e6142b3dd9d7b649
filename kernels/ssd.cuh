// SSD, the Mamba-2 scan, on the GPU: float32 inputs, state and products (the log-decay gradient
// sums in double, as the CPU twin). CPU twins: ssmtune::cpu::ssd_forward / ssd_backward
// (lib/backend/cpu/ssd_cpu.h), the chunked algorithm of docs/models.md "Mamba-2 SSD scan", whose
// layouts and chunking these follow:
//   a_t = exp(dt_t A_h)   h_t = a_t h_{t-1} + dt_t x_t B_t^T   y_t = h_t C_t + D_h x_t
// Device pointers; work queued on `stream`. Design (kernels, launch shapes, what is saved and
// what is recomputed): docs/cuda.md "SSD kernels".
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// Sizes: B batch, L sequence, H heads, P head_dim, G groups (H % G == 0), N d_state, chunk >=
// 1 (the CPU twin's SsdDims). B and H (and G) at most 65535: they are grid dimensions.
struct SsdShape {
  std::int64_t B, L, H, P, G, N, chunk;
  __host__ __device__ std::int64_t n_chunks() const { return (L + chunk - 1) / chunk; }
  // The longest chunk: min(chunk, L).
  __host__ __device__ std::int64_t Q() const { return chunk < L ? chunk : L; }
};

// Floats of workspace ssd_forward needs: the chunks' log decays and C B^T.
std::int64_t ssd_forward_workspace_floats(const SsdShape& s);

// x, y: (B, L, H, P)   dt: (B, L, H)   A: (H)   Bm, Cm: (B, L, G, N)   D: (H) or null
// h0: (B, H, P, N) or null (zeros)   h_saved: (B, n_chunks, H, P, N) out, the state at each
// chunk start   h_last: (B, H, P, N) out or null
void ssd_forward(const SsdShape& s, const float* x, const float* dt, const float* A,
                 const float* Bm, const float* Cm, const float* D, const float* h0, float* y,
                 float* h_saved, float* h_last, float* workspace, cudaStream_t stream);

// Floats of workspace ssd_backward needs (8-byte aligned: it starts with doubles).
std::int64_t ssd_backward_workspace_floats(const SsdShape& s);

// Inputs as forward, h_saved from forward, dy: (B, L, H, P).
// Overwritten: dx (B, L, H, P), ddt (B, L, H), dBm, dCm (B, L, G, N), dh0 (B, H, P, N) or null.
// Accumulated (+=): dA (H), dD (H) or null.
// Deterministic: no atomics; every sum runs in an order fixed by the shape alone.
void ssd_backward(const SsdShape& s, const float* x, const float* dt, const float* A,
                  const float* Bm, const float* Cm, const float* D, const float* h_saved,
                  const float* dy, float* dx, float* ddt, float* dA, float* dBm, float* dCm,
                  float* dD, float* dh0, float* workspace, cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
