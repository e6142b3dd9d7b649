// Recurrent inference for one sequence (docs/models.md "Mamba recurrent decoding"; HF MambaCache, mamba_ssm Mamba.step):
// the model's residual loop (CausalLM::forward_cached) with per-layer caches: for a Mamba layer
// a conv state and an SSM state, so memory does not grow with the number of tokens fed. Tokens go through the model in blocks: a prompt as blocks of up to
// `prefill_block` tokens (the chunked scan, one matrix product per projection and block), a
// decode step as a block of one. Each block starts from the state the previous one left:
//   conv state (1, K-1, E): the last K-1 pre-conv inputs x, time-major. It is the left context
//     of the next block's causal conv. (HF keeps K columns, [B, E, K], but the oldest is shifted
//     out before it is read; llama.cpp keeps K-1 as here.) Zeros = the conv's zero padding.
//   ssm state (1, E, N): h after the last token, the next scan's h0.
// Every op goes through the Backend, so the decoder runs wherever the backend does.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/causal_lm.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "model/scan_hook.h"

namespace ssmtune {

class Decoder {
 public:
  // `weights` (F32 or F64, the dtype of every activation and state; frozen tensors may be held
  // in BF16 and are computed with in F32, model/weight_storage.h) must stay alive and
  // unchanged while the decoder exists: A = -exp(A_log) is computed once here. Merge LoRA into
  // the weights before making the decoder.
  // prefill_block >= 1 bounds the prefill's activation memory to about 10 * prefill_block * d_inner
  // values.
  Decoder(const ModelConfig& cfg, const ModelWeights& weights, Backend& be,
               std::int64_t prefill_block = 256);

  // Empty sequence: all states zero (the conv's zero padding and h_{-1} = 0 of docs/models.md, Mamba step 7), or the
  // scan hook's initial state (initial-state tuning).
  void reset();
  // PEFT terms that are not merged into the weights, applied as in training (null = none): on
  // the scan (initial-state and state-offset tuning, additional scan) and beside the
  // projections (parallel adapter). Must outlive the decoder's use; take effect from the next
  // reset().
  void set_scan_hook(ScanHook* hook) { lm_.set_scan_hook(hook); }
  void set_hook(LinearHook* hook) { lm_.set_hook(hook); }
  // Virtual tokens (prompt, prefix, affix tuning): fed at the start of every sequence.
  void set_input_hook(InputHook* hook) { lm_.set_input_hook(hook); }

  // Feeds `ids` after whatever was fed since reset() and returns the logits (V) after the last
  // one. Runs the blocked path: same result as feeding the ids one by one through step(), in
  // far fewer, larger matrix products. Throws on an empty list or an id outside [0, V).
  // The reference is valid until the next prefill/step/reset.
  const Tensor& prefill(const std::vector<std::int64_t>& ids);
  // Feeds one token; returns the logits (V) after it (as prefill).
  const Tensor& step(std::int64_t id);

  std::int64_t n_tokens() const { return n_tokens_; }  // fed since reset()
  const ModelConfig& config() const { return cfg_; }
  const Tensor& conv_state(std::int64_t layer) const { return cache_.at(layer).mamba.conv; }
  const Tensor& ssm_state(std::int64_t layer) const { return cache_.at(layer).mamba.ssm; }

 private:
  // Runs ids[0, n) (already checked) through the model from the caches, updating them;
  // logits_host_ = logits after ids[n-1].
  void forward_block(const std::int64_t* ids, std::int64_t n);
  const ModelConfig& cfg_;
  Backend& be_;
  std::int64_t prefill_block_;
  DType dtype_;
  CausalLM lm_;

  std::vector<LayerCache> cache_;  // per layer
  std::int64_t n_tokens_ = 0;
  bool sequence_start_ = true;  // no token fed since reset(): the virtual tokens come first
  Tensor logits_host_;          // (V) host view or copy of the last logits
};

}  // namespace ssmtune
