// The Mamba mixer (docs/models.md, Mamba steps 3-8; HF MambaMixer.slow_forward), explicit forward and
// backward in the style of llm.c: forward saves what backward needs in MixerActivations.
//   [x ; z] = in_proj(n)                    x, z: (B, L, E)
//   u = silu(conv1d(x))                     (B, L, E)
//   [dt_in ; Bm ; Cm] = x_proj(u)           (B*L, R), (B, L, N), (B, L, N)
//   (Jamba: dt_in, Bm, Cm = rmsnorm of each, with gains dt_norm, B_norm, C_norm)
//   delta = softplus(dt_proj(dt_in))        (B, L, E), bias inside the softplus
//   y = selective_scan(u, delta, A = -exp(A_log), Bm, Cm, D)
//   out = out_proj(y * silu(z))             (B, L, D)
// Two PEFT methods lengthen the sequence inside the mixer: affix tuning puts Ta learned x~
// vectors before x (the conv, x_proj, dt and the scan run over Ta + L steps; y drops the first
// Ta before the gate), and a learned conv state (initial-state tuning's option) or the decoding
// cache gives the conv K-1 steps of left context instead of zero padding. The conv then runs
// over conv_in = [context (Cx steps) ; affix (Ta) ; x (L)] and its first Cx outputs are dropped.
#pragma once

#include "backend/backend.h"
#include "model/input_hook.h"
#include "model/linear_hook.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include <string>
#include <vector>
#include "model/scan_hook.h"

namespace ssmtune {

struct MixerActivations {
  Tensor x, z;                              // (B, L, E) the two halves of in_proj's output
  std::int64_t n_context = 0, n_affix = 0;  // Cx, Ta (above); Le = Ta + L below
  Tensor conv_in;           // (B, Cx + Le, E) the conv's input (= x when Cx = Ta = 0)
  Tensor c, u;              // (B, Le, E) conv output before and after SiLU
  Tensor dt_in;             // (B*Le, R) dt_proj's input
  Tensor Bm, Cm;            // (B, Le, N) the scan's B and C
  // Jamba (cfg.mamba_inner_norms): dt_in, Bm, Cm are RMSNorms of x_proj's parts, kept here
  // with their rstd (B*Le).
  Tensor dt_pre, B_pre, C_pre, dt_rstd, B_rstd, C_rstd;
  Tensor delta_raw, delta;  // (B, Le, E) before and after softplus; delta only where a scan
                            // hook reads it (else the scan applies the softplus itself)
  Tensor A;                 // (E, N) = -exp(A_log)
  Tensor h0;                // (B, E, N) the scan's initial state, or undefined (zeros)
  Tensor h_saved;           // (B, n_chunks, E, N) scan state at each chunk start
  std::int64_t scan_chunk = 64;
  Tensor y_scan;  // (B, Le, E) scan output with the hooks' terms (= y when Ta = 0)
  Tensor y;       // (B, L, E) its last L steps, before the gate
  Tensor gated;   // (B, L, E) y * silu(z), out_proj's input
};

// The state recurrent decoding carries from one block of tokens to the next (docs/models.md "Mamba recurrent decoding";
// HF MambaCache), for one sequence:
//   conv (1, K-1, E): the last K-1 pre-conv inputs x, time-major: the next block's causal conv
//     reads them instead of zero padding. (HF keeps K columns, [B, E, K], but the oldest is
//     shifted out before it is read; llama.cpp keeps K-1 as here.)
//   ssm (1, E, N): h after the last token, the next scan's h0.
//   hook (1, ...): what the scan hook carries (ScanHook::carried_state_shape), or undefined.
//   A (E, N): -exp(A_log), computed once for the weights instead of at every token.
struct MixerCache {
  Tensor conv, ssm, hook, A;
  bool affix_pending = false;  // the sequence has not started: affix tuning's vectors go first
};

// The PEFT hooks of one mixer (each may be null). `sites`: this mixer's linear sites in the
// order append_mamba_mixer_sites lists them (needed when `linear` is set).
struct MixerHooks {
  LinearHook* linear = nullptr;
  ScanHook* scan = nullptr;
  InputHook* input = nullptr;
  const LinearSite* sites = nullptr;
};

// The mixer's tensors under `module` ("backbone.layers.3.mixer"), in state_dict order, with
// their shapes under `c` (docs/models.md "Mamba tensors"); absent biases carry why.
void append_mamba_mixer_slots(const ModelConfig& c, const std::string& module,
                              MambaMixerWeights& w, std::vector<ParamSlot>& out);
// Its linear sites, in this order: in_proj (slices x, z), x_proj (slices dt, B, C), dt_proj,
// out_proj. `module` as above; index left for linear_sites() to set.
void append_mamba_mixer_sites(const ModelConfig& c, std::int64_t layer, const std::string& module,
                              std::vector<LinearSite>& out);
// The weight of one of those sites.
Tensor mamba_mixer_linear_weight(const MambaMixerWeights& w, const LinearSite& site);

// An empty sequence's cache for layer `layer`: the conv state zero (the conv's zero padding) or
// the scan hook's learned conv state; h = 0 (h_{-1} of docs/models.md, Mamba step 7) or its learned initial
// state; its carried state zero; the affix pending. A = -exp(A_log) is computed when `cache`
// has none yet (the weights do not change while a decoder runs).
void reset_mixer_cache(Backend& be, const ModelConfig& cfg, const MambaMixerWeights& w,
                       std::int64_t layer, const MixerHooks& hooks, DType dtype, MixerCache& cache);
// The state `hook` carries across decoding blocks of layer `layer` for one sequence, zero:
// (1, carried_state_shape), or undefined when it carries none (or there is no hook). Both
// mixers' caches start from it.
Tensor zero_carried_state(Backend& be, ScanHook* hook, std::int64_t layer, DType dtype);

// n: (B, L, D) normalised block input of layer `layer`   out: (B, L, D) overwritten
// hooks: the PEFT terms on this layer. cache: null in training (conv context from the scan
// hook's learned conv state or zero padding, the scan from its initial state); in recurrent
// decoding (B = 1) the states to start from, updated to the end of the block (backward is then
// not possible).
void mixer_forward(Backend& be, const ModelConfig& cfg, const MambaMixerWeights& w, const Tensor& n,
                   std::int64_t scan_chunk, MixerActivations& acts, Tensor& out,
                   std::int64_t layer = 0, const MixerHooks& hooks = {},
                   MixerCache* cache = nullptr);

// dout: (B, L, D)   dn: (B, L, D) overwritten with the gradient w.r.t. n
// grads: parameter gradients accumulated (+=); an undefined grad tensor is skipped (frozen).
void mixer_backward(Backend& be, const ModelConfig& cfg, const MambaMixerWeights& w,
                    const Tensor& n, const MixerActivations& acts, const Tensor& dout, Tensor& dn,
                    MambaMixerWeights& grads, std::int64_t layer = 0, const MixerHooks& hooks = {});

}  // namespace ssmtune
