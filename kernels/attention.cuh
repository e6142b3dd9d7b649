// Causal grouped-query attention on the GPU, float32 (Jamba's JambaAttention, no positional
// encoding). CPU twins: ssmtune::cpu::attention_forward / attention_backward
// (lib/backend/cpu/attention_cpu.cpp), whose math these follow: query head h reads key/value
// head h / (H / KV); the Lq queries are the last Lq of the Lk key positions (Lq <= Lk), so
// scores = scale <q_t, k_j> for keys j <= t + Lk - Lq with a nonzero key_mask; an online
// softmax over key tiles, so no Lq x Lk matrix is stored. Device pointers; work queued on
// `stream`. Design (grid, tiles, what is saved and recomputed): docs/cuda.md "Attention kernels".
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// The largest head dim the kernels take: each lane holds 4 dims of an accumulator row in
// registers (Jamba: 4096 / 32 heads = 128).
constexpr std::int64_t kAttentionMaxHeadDim = 128;

// B batch, Lq queries, Lk keys (Lq <= Lk), H query heads, KV key/value heads (H % KV == 0), hd
// head dim (<= 128).
struct AttentionShape {
  std::int64_t B, Lq, Lk, H, KV, hd;
};

// q, out: (B, Lq, H, hd)   k, v: (B, Lk, KV, hd)   key_mask: (B, Lk), nonzero = keep, or null
// lse: (B, H, Lq) out, -inf for a row with no allowed key (whose out is zeros).
void attention_forward(const AttentionShape& s, const float* q, const float* k, const float* v,
                       const std::int64_t* key_mask, float scale, float* out, float* lse,
                       cudaStream_t stream);

// Floats of workspace attention_backward needs: Drow = rowsum(dout * out), (B, H, Lq).
std::int64_t attention_backward_workspace_floats(const AttentionShape& s);

// Inputs as forward; out, lse from forward; dout: (B, Lq, H, hd).
// Overwritten: dq (B, Lq, H, hd), dk, dv (B, Lk, KV, hd).
// Deterministic: no float atomics; dq per query tile, dk and dv per key tile, every sum in an
// order fixed by the shape.
void attention_backward(const AttentionShape& s, const float* q, const float* k, const float* v,
                        const std::int64_t* key_mask, float scale, const float* out,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        float* workspace, cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
