// Selective scan on the GPU, float32 inputs and state (docs/models.md, Mamba step 7). CPU twins:
// ssmtune::cpu::selective_scan_forward / selective_scan_backward (lib/backend/cpu/scan_cpu.h),
// whose math, layouts and chunking these follow exactly:
//   a_t = exp(delta_t A)   h_t = a_t h_{t-1} + delta_t B_t u_t   y_t = <h_t, C_t> + D u_t
// Device pointers; work queued on `stream`. Design (grid, chunks, what is saved and what is
// recomputed): docs/cuda.md "Selective scan".
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// A bf16 value by its bits (the upper 16 bits of a float): the optional input type of u, delta,
// Bm and Cm. Inputs are widened to float as they are staged; the state and all sums are float.
struct Bf16 {
  std::uint16_t bits;
};

// Sizes: B batch, L sequence, E channels (d_inner), N states (d_state), chunk = the steps
// between two saved states (the CPU twin's ScanDims::chunk).
struct ScanShape {
  std::int64_t B, L, E, N, chunk;
  std::int64_t n_chunks() const { return (L + chunk - 1) / chunk; }
};

// u, delta, y: (B, L, E)   A: (E, N)   Bm, Cm: (B, L, N)   D: (E) or null
// h0: (B, E, N) or null (zeros)   h_saved: (B, n_chunks, E, N) out, the state at the start of
// each chunk (h_saved[:, 0] = h0)   h_last: (B, E, N) out or null
void selective_scan_forward(const ScanShape& s, const float* u, const float* delta, const float* A,
                            const float* Bm, const float* Cm, const float* D, const float* h0,
                            float* y, float* h_saved, float* h_last, cudaStream_t stream);
// The same with bf16 u, delta, Bm, Cm.
void selective_scan_forward(const ScanShape& s, const Bf16* u, const Bf16* delta, const float* A,
                            const Bf16* Bm, const Bf16* Cm, const float* D, const float* h0,
                            float* y, float* h_saved, float* h_last, cudaStream_t stream);

// Floats of workspace selective_scan_backward needs (partial sums reduced in a fixed order).
std::int64_t selective_scan_backward_workspace_floats(const ScanShape& s);

// Inputs as forward, h_saved from forward, dy: (B, L, E).
// Overwritten: du, ddelta: (B, L, E); dBm, dCm: (B, L, N); dh0: (B, E, N) or null.
// Accumulated (+=): dA: (E, N); dD: (E) or null.
// Deterministic: no float atomics; every sum runs in an order fixed by the shape alone.
void selective_scan_backward(const ScanShape& s, const float* u, const float* delta, const float* A,
                             const float* Bm, const float* Cm, const float* D, const float* h_saved,
                             const float* dy, float* du, float* ddelta, float* dA, float* dBm,
                             float* dCm, float* dD, float* dh0, float* workspace,
                             cudaStream_t stream);
// The same with bf16 u, delta, Bm, Cm (the gradients are float).
void selective_scan_backward(const ScanShape& s, const Bf16* u, const Bf16* delta, const float* A,
                             const Bf16* Bm, const Bf16* Cm, const float* D, const float* h_saved,
                             const float* dy, float* du, float* ddelta, float* dA, float* dBm,
                             float* dCm, float* dD, float* dh0, float* workspace,
                             cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
