// The Mamba-2 mixer (docs/models.md "Mamba-2"; HF Mamba2Mixer.torch_forward, transformers
// 4.44.2), explicit forward and backward: forward saves what backward needs in
// Mamba2Activations. E = d_inner = H * P, G groups, N d_state, C = E + 2 G N (conv_dim).
//   [z ; xBC ; dt_in] = in_proj(n)           z: (B, L, E)  xBC: (B, L, C)  dt_in: (B, L, H)
//   u = silu(conv1d(xBC))                    (B, L, C), depthwise over the C channels
//   [x ; Bm ; Cm] = u                        x: (B, L, H, P)  Bm, Cm: (B, L, G, N)
//   dt = clamp(softplus(dt_in + dt_bias), time_step_limit)                 (B, L, H)
//   y = ssd(x, dt, A = -exp(A_log), Bm, Cm, D)                            (B, L, H, P)
//   out = out_proj(rmsnorm_G(y * silu(z)) * norm)                         (B, L, D)
// As mamba_ssm and transformers 5.25 compute it: the gated RMSNorm normalises each group of
// E / G channels separately, the gate first (docs/models.md "Mamba-2" for how older
// transformers releases differ).
#pragma once

#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/linear_hook.h"
#include "model/mamba_mixer.h"
#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

// Ta affix steps (affix tuning) run through the conv, dt and the scan in front of the L tokens:
// Le = Ta + L. Their outputs are dropped before the gate.
struct Mamba2Activations {
  Tensor z;                   // (B, L, E) the gate
  std::int64_t n_context = 0;  // Cx: conv context steps before the block (decoding cache or
                               // the learned conv state)
  std::int64_t n_affix = 0;   // Ta
  Tensor conv_in;             // (B, Cx + Le, C) [context ; affix ; xBC]
  Tensor c, u;                // (B, Le, C) conv output before and after SiLU
  Tensor x, Bm, Cm;           // (B, Le, H, P), (B, Le, G, N), (B, Le, G, N): u's parts
  Tensor dt_pre;              // (B, Le, H) [affix ; dt_in] + dt_bias, softplus's input
  Tensor dt_soft;             // (B, Le, H) softplus of it, the clamp's input
  Tensor dt;                  // (B, Le, H) the scan's step sizes
  Tensor A;                   // (H) = -exp(A_log)
  Tensor h0;                  // (B, H, P, N) or undefined (zeros)
  Tensor h_saved;             // (B, n_chunks, H, P, N) scan state at each chunk start
  std::int64_t chunk = 256;
  Tensor y;                   // (B, L, E) the scan's output at the real tokens
  Tensor gated;               // (B, L, E) y * silu(z)
  Tensor normed, rstd;        // (B, L, E) out_proj's input, and the norm's rstd (B*L, G)
};

// One sequence's recurrent decoding state (HF Mamba2Cache, time-major):
//   conv (1, K-1, C): the last K-1 conv inputs xBC;  ssm (1, H, P, N): h after the last token;
//   hook (1, the scan hook's carried_state_shape) or undefined: the additional scan's states;
//   A (H): -exp(A_log), computed once.
struct Mamba2Cache {
  Tensor conv, ssm, hook, A;
  bool affix_pending = false;  // the sequence has not started: affix tuning's steps go first
};

// The mixer's tensors under `module` ("backbone.layers.3.mixer") in state_dict order, with
// their shapes under `c`; absent biases carry why.
void append_mamba2_mixer_slots(const ModelConfig& c, const std::string& module,
                               Mamba2MixerWeights& w, std::vector<ParamSlot>& out);
// Its linear sites, in this order: in_proj (slices z, x, B, C, dt), out_proj.
void append_mamba2_mixer_sites(const ModelConfig& c, std::int64_t layer,
                               const std::string& module, std::vector<LinearSite>& out);
Tensor mamba2_mixer_linear_weight(const Mamba2MixerWeights& w, const LinearSite& site);

// An empty sequence's cache: the conv state zero (the conv's zero padding) or the scan hook's
// learned conv state, the SSD state zero or its learned initial state.
void reset_mamba2_cache(Backend& be, const ModelConfig& cfg, const Mamba2MixerWeights& w,
                        std::int64_t layer, const MixerHooks& hooks, DType dtype,
                        Mamba2Cache& cache);

// n: (B, L, D) normalised block input of layer `layer`   out: (B, L, D) overwritten.
// hooks: the PEFT terms on this layer: LoRA/DoRA on its sites (hooks.sites: its sites in the
// order above) and the state methods (hooks.scan: initial state h0 (B, H, P, N), a learned conv
// state (1, K-1, C), read-out terms on y with ScanIO {x (B, Le, E), dt (B, Le, H),
// Cm (B, Le, G N)}) and affix tuning's steps (hooks.input->affix: (Ta, C + H), in_proj's
// output without z, in front of the sequence's xBC and dt_in; docs/methods.md section 10).
// cache: null in training; in recurrent decoding (B = 1) the states to start from, updated to
// the end of the block (no backward then).
void mamba2_mixer_forward(Backend& be, const ModelConfig& cfg, const Mamba2MixerWeights& w,
                          const Tensor& n, Mamba2Activations& acts, Tensor& out,
                          std::int64_t layer = 0, const MixerHooks& hooks = {},
                          Mamba2Cache* cache = nullptr);

// dout: (B, L, D)   dn: (B, L, D) overwritten with the gradient w.r.t. n.
// grads: parameter gradients accumulated (+=); an undefined grad tensor is skipped (frozen).
void mamba2_mixer_backward(Backend& be, const ModelConfig& cfg, const Mamba2MixerWeights& w,
                           const Tensor& n, const Mamba2Activations& acts, const Tensor& dout,
                           Tensor& dn, Mamba2MixerWeights& grads, std::int64_t layer = 0,
                           const MixerHooks& hooks = {});

}  // namespace ssmtune
