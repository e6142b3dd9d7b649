// The Mamba mixer (MODELS.md A.4 steps 3-8; HF MambaMixer.slow_forward), explicit forward and
// backward in the style of llm.c: forward saves what backward needs in MixerActivations.
//   [x ; z] = in_proj(n)                    x, z: (B, L, E)
//   u = silu(conv1d(x))                     (B, L, E)
//   [dt_in ; Bm ; Cm] = x_proj(u)           (B*L, R), (B, L, N), (B, L, N)
//   delta = softplus(dt_proj(dt_in))        (B, L, E), bias inside the softplus
//   y = selective_scan(u, delta, A = -exp(A_log), Bm, Cm, D)
//   out = out_proj(y * silu(z))             (B, L, D)
#pragma once

#include "backend/backend.h"
#include "model/linear_hook.h"
#include "model/mamba_config.h"
#include "model/mamba_weights.h"
#include "model/scan_hook.h"

namespace ssmtune {

struct MixerActivations {
  Tensor x, z;              // (B, L, E) the two halves of in_proj's output
  Tensor c, u;              // (B, L, E) conv output before and after SiLU
  Tensor dt_in;             // (B*L, R)
  Tensor Bm, Cm;            // (B, L, N)
  Tensor delta_raw, delta;  // (B, L, E) before and after softplus
  Tensor A;                 // (E, N) = -exp(A_log)
  Tensor h0;                // (B, E, N) the scan's initial state, or undefined (zeros)
  Tensor h_saved;           // (B, n_chunks, E, N) scan state at each chunk start
  std::int64_t scan_chunk = 64;
  Tensor y;      // (B, L, E) scan output, before the gate
  Tensor gated;  // (B, L, E) y * silu(z), out_proj's input
};

// The state recurrent decoding carries from one block of tokens to the next (MODELS.md A.5;
// HF MambaCache), for one sequence:
//   conv (1, K-1, E): the last K-1 pre-conv inputs x, time-major: the next block's causal conv
//     reads them instead of zero padding. (HF keeps K columns, [B, E, K], but the oldest is
//     shifted out before it is read; llama.cpp keeps K-1 as here.)
//   ssm (1, E, N): h after the last token, the next scan's h0.
//   hook (1, ...): what the scan hook carries (ScanHook::carried_state_shape), or undefined.
struct MixerCache {
  Tensor conv, ssm, hook;
};

// n: (B, L, D) normalised block input   out: (B, L, D) overwritten
// hook: PEFT terms beside the projections of layer `layer`, or null; scan_hook: PEFT terms on
// its scan state, or null. cache: null in training (zero conv padding, the scan from the scan
// hook's initial state); in recurrent decoding (B = 1) the states to start from, updated to the
// end of the block (backward is then not possible).
void mixer_forward(Backend& be, const MambaConfig& cfg, const MambaLayerWeights& w, const Tensor& n,
                   std::int64_t scan_chunk, MixerActivations& acts, Tensor& out,
                   LinearHook* hook = nullptr, std::int64_t layer = 0,
                   ScanHook* scan_hook = nullptr, MixerCache* cache = nullptr);

// dout: (B, L, D)   dn: (B, L, D) overwritten with the gradient w.r.t. n
// grads: parameter gradients accumulated (+=); an undefined grad tensor is skipped (frozen).
void mixer_backward(Backend& be, const MambaConfig& cfg, const MambaLayerWeights& w,
                    const Tensor& n, const MixerActivations& acts, const Tensor& dout, Tensor& dn,
                    MambaLayerWeights& grads, LinearHook* hook = nullptr, std::int64_t layer = 0,
                    ScanHook* scan_hook = nullptr);

}  // namespace ssmtune
