// Jamba's feed-forward blocks (docs/models.md "Jamba"), explicit forward and backward:
//   MLP (HF JambaMLP):  out = down(silu(gate(x)) * up(x))                  x, out: (rows, D)
//   MoE (HF JambaSparseMoeBlock), per token x_t:
//     r = router(x_t) (X)   p = softmax(r)   (w, S) = top-k of p, descending, NOT renormalised
//     out_t = sum_j w_j * MLP_{S_j}(x_t)
// The MoE runs as routed GEMMs: the tokens are permuted so each expert's rows are contiguous
// (Backend::moe_dispatch), every expert that got tokens runs its MLP on its rows, and each
// token's k outputs are summed back with their weights (moe_combine). An expert no token chose
// is not run (its gradient stays zero).
#pragma once

#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/linear_hook.h"
#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

struct MlpActivations {
  Tensor gate, up;  // (rows, F) the two input projections (hooks included)
  Tensor h;         // (rows, F) up * silu(gate), down_proj's input
};

struct MoeActivations {
  Tensor logits;                     // (rows, X) router logits
  Tensor probs;                      // (rows, X) softmax(logits)
  Tensor weights;                    // (rows, k) the top-k probabilities
  Tensor experts;                    // (rows, k) I64 their experts (backend device)
  Tensor experts_host;               // the same on the host
  Tensor slot;                       // (rows, k) I64 row of xs holding token t's j-th choice
  std::vector<std::int64_t> offset;  // X + 1: expert e's rows of xs are [offset[e], offset[e+1])
  Tensor xs;                         // (rows*k, D) the tokens grouped by expert
  std::vector<MlpActivations> expert;  // X (empty for an expert without tokens)
  Tensor ys;                         // (rows*k, D) the experts' outputs, grouped as xs
};

// Tensors and linear sites under `module` ("model.layers.0.feed_forward"), in state_dict
// order. MLP sites: gate_proj, up_proj, down_proj. MoE sites: router, then per expert e
// "experts.e.gate_proj", "experts.e.up_proj", "experts.e.down_proj" (what `peft` targets by
// the last name part: gate_proj matches every expert's).
void append_mlp_slots(const ModelConfig& c, const std::string& module, MlpWeights& w,
                      std::vector<ParamSlot>& out);
void append_moe_slots(const ModelConfig& c, const std::string& module, MoeWeights& w,
                      std::vector<ParamSlot>& out);
// expert: the MLP's expert in an MoE layer, -1 for a dense MLP.
void append_mlp_sites(const ModelConfig& c, std::int64_t layer, std::int64_t expert,
                      const std::string& module, std::vector<LinearSite>& out);
void append_moe_sites(const ModelConfig& c, std::int64_t layer, const std::string& module,
                      std::vector<LinearSite>& out);
Tensor mlp_linear_weight(const MlpWeights& w, const LinearSite& site);
Tensor moe_linear_weight(const MoeWeights& w, const LinearSite& site);

// x: (rows, D)   out: (rows, D) overwritten. sites: the block's own (the order above).
void mlp_forward(Backend& be, const MlpWeights& w, const Tensor& x, MlpActivations& acts,
                 Tensor& out, LinearHook* hook = nullptr, const LinearSite* sites = nullptr);
// dout: (rows, D)   dx: (rows, D) overwritten. grads accumulated (+=), undefined ones skipped.
void mlp_backward(Backend& be, const MlpWeights& w, const Tensor& x, const MlpActivations& acts,
                  const Tensor& dout, Tensor& dx, MlpWeights& grads, LinearHook* hook = nullptr,
                  const LinearSite* sites = nullptr);

void moe_forward(Backend& be, const ModelConfig& cfg, const MoeWeights& w, const Tensor& x,
                 MoeActivations& acts, Tensor& out, LinearHook* hook = nullptr,
                 const LinearSite* sites = nullptr);
// dprobs_extra: (rows, X) a gradient w.r.t. the router probabilities from outside the block
// (the router auxiliary loss), or undefined. grads.experts may be empty (experts frozen).
void moe_backward(Backend& be, const ModelConfig& cfg, const MoeWeights& w, const Tensor& x,
                  const MoeActivations& acts, const Tensor& dout, const Tensor& dprobs_extra,
                  Tensor& dx, MoeWeights& grads, LinearHook* hook = nullptr,
                  const LinearSite* sites = nullptr);

}  // namespace ssmtune
