// The causal LM (HF MambaForCausalLM, Mamba2ForCausalLM and JambaForCausalLM, docs/models.md
// "Mamba forward pass", "Mamba-2", "Jamba"): embedding -> n_layer layers -> norm_f -> lm_head (tied to the embedding unless
// configured otherwise). A layer is a list of pre-norm residual branches h += f(rmsnorm(h)) (a
// mixer, then a feed-forward where the layer has one; model_config.h LayerKind); each layer
// kind's file holds its forward, backward, what it saves and its decoding cache (mamba_mixer.h,
// attention_layer.h, feed_forward.h). One residual loop serves training, evaluation and
// recurrent decoding: forward() keeps the activations backward() needs, llm.c style;
// eval_loss() keeps one layer's at a time; forward_cached() runs a block of tokens from
// per-layer caches and keeps nothing.
// Virtual-token methods (the input hook) lengthen sequences: prompt tuning's P vectors go
// before the embedded input and are dropped before norm_f; prefix tuning's Tq vectors go before
// block i's input and its outputs there are dropped; affix tuning acts inside the mixer.
#pragma once

#include <functional>
#include <vector>

#include "backend/backend.h"
#include "model/model_config.h"
#include "model/attention_layer.h"
#include "model/feed_forward.h"
#include "model/input_hook.h"
#include "model/mamba2_mixer.h"
#include "model/mamba_mixer.h"
#include "model/model_weights.h"
#include "model/router_aux_loss.h"

namespace ssmtune {

struct LmLoss {
  double loss = 0;            // mean token cross-entropy over counted positions (0 if none)
  std::int64_t n_tokens = 0;  // positions with a label (label != -100 after the shift)
  // Models with experts: the router load-balancing loss (router_aux_loss.h), and the
  // objective backward() differentiates, loss + aux_coef * aux (= loss without experts).
  double aux_loss = 0;
  double objective = 0;
};

// Next-token targets from HF-style labels: targets[b, t] = labels[b, t+1], and -100 at the
// last position of each row (HF shifts inside the loss). labels: (B, L) I64 -> (B, L) I64.
Tensor shift_labels(const Tensor& labels);

// One layer's recurrent decoding state (its kind's cache).
struct LayerCache {
  MixerCache mamba;
  AttentionCache attn;
  Mamba2Cache mamba2;
};

class CausalLM {
 public:
  // Weights must stay alive and unchanged between forward and backward.
  CausalLM(const ModelConfig& cfg, const ModelWeights& weights, Backend& be,
          std::int64_t scan_chunk = 64);

  // PEFT terms beside the projections and the embedding (null = none). Must stay alive and
  // unchanged between forward and backward.
  void set_hook(LinearHook* hook) { hook_ = hook; }
  // PEFT terms on every layer's scan state (state-based methods), null = none. Same lifetime.
  void set_scan_hook(ScanHook* hook) { scan_hook_ = hook; }
  // Virtual tokens (prompt, prefix and affix tuning), null = none. Same lifetime.
  void set_input_hook(InputHook* hook) { input_hook_ = hook; }
  // training.recompute "mixers": forward keeps none of a mixer's inner activations (the
  // E-wide tensors of a Mamba mixer, a Mamba-2 mixer's, attention's), only the layer's
  // D-wide input and norm; backward runs each mixer's forward again right before its backward.
  // One more forward of the mixers per step for most of the activation memory; the results are
  // the same bits (the hooks replay their dropout masks, LinearHook::set_recomputing).
  void set_recompute_mixers(bool on) { recompute_mixers_ = on; }

  // ids: (B, L) I64. Computes logits (B, L, V) and keeps the activations for backward.
  // attention_mask: (B, L) I64 on the host, 1 for a token and 0 for right padding, or
  // undefined (no padding). Attention layers do not attend to padding and the router loss
  // does not count it; Mamba layers ignore it (as transformers does).
  void forward(const Tensor& ids, const Tensor& attention_mask = Tensor());
  // As forward, without the logits: loss_and_backward forms them a block of rows at a time, so
  // no (B, L, V) tensor exists in a training step (B*L*V floats, 100 MB at 512 tokens of a
  // 50k vocabulary; more than the rest of the step's activations at small d_model).
  void forward_for_training(const Tensor& ids, const Tensor& attention_mask = Tensor());
  // The weight of the router load-balancing loss in the objective: by default
  // router_aux_loss_coef when the config's output_router_logits is set, else 0.
  void set_router_aux_coef(double coef) { aux_coef_ = coef; }
  double router_aux_coef() const { return aux_coef_; }
  // targets: (B, L) I64 from shift_labels. Mean cross-entropy of the last forward's logits
  // (and the router loss of its MoE layers).
  LmLoss loss(const Tensor& targets);
  // Gradient of loss(targets) w.r.t. every defined tensor of `grads` (accumulated, +=); a
  // default ModelWeights (no layers) means every base tensor is frozen.
  // Consumes the logits (overwritten by their gradient). The loss is the token sum divided by
  // `normaliser_tokens` when given (> 0), so micro-batches of one optimizer step weigh each
  // token equally; by default by this batch's own token count (the mean, as loss()).
  void backward(const Tensor& targets, ModelWeights& grads, std::int64_t normaliser_tokens = 0);
  // After forward_for_training: loss(targets) and backward(targets, grads, normaliser_tokens) in
  // one pass over the vocabulary head, head_chunk_rows() rows of logits at a time (formed,
  // turned into their gradient in place, multiplied back, dropped). The same loss and gradients
  // as the two calls after forward, up to the order of the sums over blocks (the loss's, and a
  // trainable head's gradient over rows).
  LmLoss loss_and_backward(const Tensor& targets, ModelWeights& grads,
                           std::int64_t normaliser_tokens = 0);
  // Evaluation: loss(targets) of ids as forward would give it, keeping no activations (each
  // layer's go into one slot, overwritten by the next layer's, as in decoding) and no logits
  // (formed head_chunk_rows() rows at a time), so memory does not grow with n_layer or V. The
  // logits at `picks`, flat indices into the (B*L, V) logits (the classification metric's class
  // tokens), are returned in *picked in that order. backward is not possible after it.
  LmLoss eval_loss(const Tensor& ids, const Tensor& attention_mask, const Tensor& targets,
                   const std::vector<std::int64_t>& picks = {},
                   std::vector<double>* picked = nullptr);
  // Rows per block of loss_and_backward and eval_loss: 0 (the default) picks about 32 MiB of
  // logits, at least 512 rows (1024 when the head is held in bf16).
  void set_head_chunk_rows(std::int64_t rows) { head_chunk_rows_ = rows; }
  std::int64_t head_chunk_rows() const;

  // Recurrent decoding of one sequence: runs ids (n) I64 on the backend's device from the states
  // in `caches` (one per layer, reset_caches), updating them to the end of the block. The virtual
  // tokens of the input hook go first when `sequence_start`. Returns the logits after the last
  // id, (1, V). Keeps no activations: backward is not possible after it.
  Tensor forward_cached(const Tensor& ids, std::vector<LayerCache>& caches, bool sequence_start);
  // Caches for an empty sequence: zero states, or the scan hook's learned initial states.
  void reset_caches(std::vector<LayerCache>& caches);

  const Tensor& logits() const { return logits_; }  // (B, L, V)
  const ModelConfig& config() const { return cfg_; }
  const std::vector<LinearSite>& sites() const { return sites_; }
  // The residual stream entering layer i, (B, P + L, D) with P prompt vectors in front: i = 0
  // is the embedding output and i = n_layer the input of norm_f (before the prompt is dropped). (HF's output_hidden_states[i] is residual(i + 1) for
  // i < n_layer, and its last entry is final_norm().)
  const Tensor& residual(std::int64_t i) const { return layer_in_.at(i); }
  const Tensor& final_norm() const { return final_norm_; }  // (B, L, D) norm_f output
  // After backward: gradient of the loss w.r.t. the embedding output (B, L, D).
  const Tensor& grad_embeddings() const { return d_embed_; }

 private:
  // The residual stream from the embedded ids (B, L, D) through every layer into norm_f:
  // final_norm_ (B, L, D). caches: null in training and evaluation, else the decoding states
  // (updated). keep: every layer's activations kept in the members below for backward (only
  // without caches), else one layer's at a time. Virtual tokens go in when `virtual_tokens`.
  // Without caches the router loss of the MoE layers is left in aux_.
  void run_layers(const Tensor& embedded, std::vector<LayerCache>* caches, bool virtual_tokens,
                  bool keep);
  // forward's work up to final_norm_ (what forward_for_training does; eval_loss's, keep false).
  void forward_layers(const Tensor& ids, const Tensor& attention_mask, bool keep);
  // The head over final_norm_, head_chunk_rows() rows at a time: block(r0, r1, logits) gets
  // the logits (r1 - r0, V) of rows [r0, r1), on the backend, to read or overwrite.
  void head_blocks(const std::function<void(std::int64_t, std::int64_t, Tensor&)>& block);
  // The LmLoss of a cross-entropy sum over n_tokens counted targets, with the last forward's
  // router loss.
  LmLoss loss_from_sum(double sum, std::int64_t n_tokens) const;
  // logits (rows, V) of x (rows, D) become their gradient in place; then dL/dx of those rows
  // into dx (written) and the head's gradient (accumulated; the embedding's when tied).
  void head_backward(Tensor& logits, const Tensor& targets, double scale, const Tensor& x,
                     Tensor& dx, ModelWeights& grads);
  // backward from dL/d(final_norm) (B*L, D) down to the embedding; n_tokens: the batch's
  // counted targets, scale: 1 / the normaliser (the router loss's share uses both).
  void layers_backward(const Tensor& dnorm, ModelWeights& grads, std::int64_t n_tokens,
                       double scale);
  MixerHooks mixer_hooks(std::int64_t layer) const;
  const LinearSite* ffn_sites(std::int64_t layer) const;
  // The attention key mask for a block of Lb steps whose first Lb - L are virtual (always
  // kept): (B, Lb) I64 on the device, or undefined without padding.
  Tensor key_mask(std::int64_t Lb) const;
  // Layer i's mixer (weights lw) over norm_out_[s] into mix: (B, Lb, D), its activations in
  // slot s; caches: as run_layers's.
  void mixer_forward_at(std::int64_t i, const LayerWeights& lw, std::size_t s,
                        std::vector<LayerCache>* caches, Tensor& mix);
  void drop_mixer_activations(std::size_t s);
  // Layer i's mixer activations again, as forward made them (set_recompute_mixers).
  void recompute_mixer(std::int64_t i, const LayerWeights& lw);
  // layer i's feed-forward (weights lw) over n: (B, Lb, D) into out (slot s of the activations).
  void ffn_forward(std::int64_t i, const LayerWeights& lw, std::size_t s, const Tensor& n,
                   Tensor& out);
  // The router loss's gradient w.r.t. MoE layer i's probabilities (B*Lb, X), times `weight`.
  Tensor aux_grad(std::int64_t i, double weight) const;
  // Rows of layer i's MoE counted by the router loss, (B*Lb) I64 host, or undefined (all).
  Tensor counted_rows(std::int64_t i) const;

  const ModelConfig& cfg_;
  const ModelWeights& w_;
  Backend& be_;
  std::int64_t scan_chunk_;
  bool recompute_mixers_ = false;
  std::int64_t head_chunk_rows_ = 0;
  bool kept_activations_ = false;  // a forward's, not yet consumed by a backward
  LinearHook* hook_ = nullptr;
  ScanHook* scan_hook_ = nullptr;
  InputHook* input_hook_ = nullptr;
  std::vector<LinearSite> sites_;        // linear_sites(cfg_)
  std::vector<std::int64_t> mixer_site_;  // per layer: its mixer's first site in sites_
  std::vector<std::int64_t> ffn_site_;    // per layer: its feed-forward's first site, or -1
  double aux_coef_ = 0;

  Tensor ids_;                           // (B, L)
  Tensor attention_mask_;                // (B, L) I64 host, or undefined
  std::int64_t n_prompt_ = 0;            // P
  std::vector<Tensor> layer_in_;         // n_layer + 1 tensors (B, P+L, D): the residual stream
  std::vector<std::int64_t> n_prefix_;   // per layer Tq
  std::vector<Tensor> block_in_;         // (B, Tq+P+L, D) [prefix ; layer_in_[i]]
  std::vector<Tensor> norm_out_;         // (B, Tq+P+L, D) rmsnorm(block_in_[i])
  std::vector<Tensor> norm_rstd_;        // (B*(Tq+P+L))
  Tensor final_in_;                      // (B, L, D) layer_in_[n_layer] without the prompt
  std::vector<MixerActivations> mixer_;  // per layer (Mamba mixers)
  std::vector<AttentionActivations> attn_;  // per layer (attention mixers)
  std::vector<Mamba2Activations> mamba2_;   // per layer (Mamba-2 mixers)
  std::vector<Tensor> ffn_in_;           // (B, Lb, D) block input + mixer output (feed-forward layers)
  std::vector<Tensor> ffn_norm_out_, ffn_rstd_;  // its pre_ff_layernorm and rstd
  std::vector<MlpActivations> mlp_;
  std::vector<MoeActivations> moe_;
  RouterAuxLoss aux_;                    // of the last forward (MoE layers only)
  Tensor final_norm_, final_rstd_;       // norm_f output (B, L, D) and its rstd (B*L)
  Tensor logits_;                        // (B, L, V)
  Tensor d_embed_;
};

}  // namespace ssmtune
