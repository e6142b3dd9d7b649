// Jamba's attention mixer (HF JambaAttention, eager; docs/models.md "Jamba"), explicit forward
// and backward in the style of llm.c. n is the normalised layer input, H query heads and KV
// key/value heads of width hd = D / H:
//   q = n Wq^T  (B, L, H, hd)     k = n Wk^T, v = n Wv^T  (B, L, KV, hd)
//   a = softmax(q k^T / sqrt(hd) + causal and padding mask) v, query head h reading kv head
//       h / (H / KV)  (Backend::attention_forward: blocked, nothing L x L is stored)
//   out = a Wo^T  (B, L, D)
// No positional encoding: the Mamba layers carry position.
#pragma once

#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/linear_hook.h"
#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

struct AttentionActivations {
  Tensor q, k, v;    // (B, L, H, hd), (B, L, KV, hd) x 2: the projections (hooks included)
  Tensor key_mask;   // (B, L) I64 or undefined (no padding)
  Tensor a;          // (B, L, H, hd) the attention output, o_proj's input
  Tensor lse;        // (B, H, L) the softmax rows' log-sum-exp
};

// What decoding carries from one block of tokens to the next: every key and value so far.
struct AttentionCache {
  Tensor k, v;  // (1, Lc, KV, hd); undefined when Lc = 0
};

// The tensors under `module` ("model.layers.1.self_attn") in state_dict order.
void append_attention_slots(const ModelConfig& c, const std::string& module, AttentionWeights& w,
                            std::vector<ParamSlot>& out);
// Its linear sites, in this order: q_proj, k_proj, v_proj, o_proj.
void append_attention_sites(const ModelConfig& c, std::int64_t layer, const std::string& module,
                            std::vector<LinearSite>& out);
Tensor attention_linear_weight(const AttentionWeights& w, const LinearSite& site);

// n: (B, L, D)   out: (B, L, D) overwritten   key_mask: (B, L) I64 (0 = padding) or undefined.
// hook/sites: the PEFT terms on the four projections (sites: this layer's, in the order above).
// cache: null in training; in decoding (B = 1, key_mask undefined) the keys and values of the
// tokens before this block, extended by this block's (backward is then not possible).
void attention_forward(Backend& be, const ModelConfig& cfg, const AttentionWeights& w,
                       const Tensor& n, const Tensor& key_mask, AttentionActivations& acts,
                       Tensor& out, LinearHook* hook = nullptr, const LinearSite* sites = nullptr,
                       AttentionCache* cache = nullptr);

// dout: (B, L, D)   dn: (B, L, D) overwritten. grads accumulated (+=), undefined ones skipped.
void attention_backward(Backend& be, const ModelConfig& cfg, const AttentionWeights& w,
                        const Tensor& n, const AttentionActivations& acts, const Tensor& dout,
                        Tensor& dn, AttentionWeights& grads, LinearHook* hook = nullptr,
                        const LinearSite* sites = nullptr);

}  // namespace ssmtune
