#include "model/causal_lm.h"

#include <algorithm>

#include "model/linear.h"
#include "model/sequence_steps.h"
#include "model/weight_storage.h"

namespace ssmtune {

Tensor shift_labels(const Tensor& labels) {
  check(labels.ndim() == 2, "labels must be (batch, length), got " + shape_str(labels.shape()));
  const std::int64_t B = labels.dim(0), L = labels.dim(1);
  Tensor targets = Tensor::empty({B, L}, DType::I64);
  const std::int64_t* in = labels.data<std::int64_t>();
  std::int64_t* out = targets.data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < L; ++t) out[b * L + t] = t + 1 < L ? in[b * L + t + 1] : -100;
  return targets;
}

CausalLM::CausalLM(const ModelConfig& cfg, const ModelWeights& weights, Backend& be,
                   std::int64_t scan_chunk)
    : cfg_(cfg), w_(weights), be_(be), scan_chunk_(scan_chunk), sites_(linear_sites(cfg)) {
  mixer_site_.assign(std::size_t(cfg.n_layer), -1);
  ffn_site_.assign(std::size_t(cfg.n_layer), -1);
  for (const LinearSite& s : sites_) {
    const bool ffn = layer_kind(cfg, s.layer).ffn != FeedForwardKind::None &&
                     s.module.rfind(ffn_module(cfg, s.layer) + ".", 0) == 0;
    std::int64_t& first = (ffn ? ffn_site_ : mixer_site_)[std::size_t(s.layer)];
    if (first < 0) first = s.index;
  }
  aux_coef_ = cfg.output_router_logits ? cfg.router_aux_loss_coef : 0.0;
}

MixerHooks CausalLM::mixer_hooks(std::int64_t layer) const {
  return {hook_, scan_hook_, input_hook_, sites_.data() + mixer_site_[std::size_t(layer)]};
}

const LinearSite* CausalLM::ffn_sites(std::int64_t layer) const {
  const std::int64_t first = ffn_site_[std::size_t(layer)];
  return first < 0 ? nullptr : sites_.data() + first;
}

Tensor CausalLM::counted_rows(std::int64_t Lb) const {
  if (!attention_mask_.defined()) return Tensor();
  const std::int64_t B = attention_mask_.dim(0), L = attention_mask_.dim(1);
  Tensor rows = Tensor::empty({B * Lb}, DType::I64);
  const std::int64_t* m = attention_mask_.data<std::int64_t>();
  std::int64_t* r = rows.data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < Lb; ++t)  // virtual steps (t < Lb - L) always count
      r[b * Lb + t] = t < Lb - L ? 1 : m[b * L + t - (Lb - L)] != 0;
  return rows;
}

Tensor CausalLM::key_mask(std::int64_t Lb) const {
  if (!attention_mask_.defined()) return Tensor();
  const Tensor host = counted_rows(Lb);
  Tensor mask = be_.empty({attention_mask_.dim(0), Lb}, DType::I64);
  be_.copy(host.reshape(mask.shape()), mask);
  return mask;
}

void CausalLM::ffn_forward(std::int64_t i, const LayerWeights& lw, std::size_t s, const Tensor& n,
                           Tensor& out) {
  const std::int64_t rows = n.dim(0) * n.dim(1), D = cfg_.d_model;
  const Tensor n2 = n.reshape({rows, D});
  Tensor out2 = out.reshape({rows, D});
  switch (layer_kind(cfg_, i).ffn) {
    case FeedForwardKind::None: break;
    case FeedForwardKind::Mlp: mlp_forward(be_, lw.mlp, n2, mlp_[s], out2, hook_, ffn_sites(i)); break;
    case FeedForwardKind::MoE:
      moe_forward(be_, cfg_, lw.moe, n2, moe_[s], out2, hook_, ffn_sites(i));
      break;
  }
}

Tensor CausalLM::aux_grad(std::int64_t i, double weight) const {
  const MoeActivations& m = moe_[std::size_t(i)];
  const std::int64_t rows = m.probs.dim(0), X = cfg_.n_experts;
  const Tensor counted = counted_rows(rows / ids_.dim(0));
  Tensor host = Tensor::zeros({rows, X}, m.probs.dtype());
  for (std::int64_t t = 0; t < rows; ++t) {
    if (counted.defined() && counted.data<std::int64_t>()[t] == 0) continue;
    for (std::int64_t e = 0; e < X; ++e) {
      const double g = weight * aux_.dprob[std::size_t(e)];
      if (host.dtype() == DType::F32)
        host.data<float>()[t * X + e] = float(g);
      else
        host.data<double>()[t * X + e] = g;
    }
  }
  Tensor dev = be_.empty({rows, X}, m.probs.dtype());
  be_.copy(host, dev);
  return dev;
}

void CausalLM::forward(const Tensor& ids, const Tensor& attention_mask) {
  forward_layers(ids, attention_mask, true);
  const std::int64_t rows = ids.numel(), D = cfg_.d_model;
  logits_ = be_.empty({ids.dim(0), ids.dim(1), cfg_.vocab_size}, final_norm_.dtype());
  Tensor logits2 = logits_.reshape({rows, cfg_.vocab_size});
  linear_forward(be_, final_norm_.reshape({rows, D}), w_.lm_head, Tensor(), logits2);
}

void CausalLM::forward_for_training(const Tensor& ids, const Tensor& attention_mask) {
  forward_layers(ids, attention_mask, true);
  logits_ = Tensor();
}

void CausalLM::forward_layers(const Tensor& ids, const Tensor& attention_mask, bool keep) {
  check(ids.ndim() == 2, "input ids must be (batch, length), got " + shape_str(ids.shape()));
  check(!attention_mask.defined() ||
            (attention_mask.shape() == ids.shape() && attention_mask.dtype() == DType::I64),
        "attention mask must be (batch, length) I64 like the ids");
  const std::int64_t B = ids.dim(0), L = ids.dim(1), D = cfg_.d_model, rows = B * L;
  const DType dt = compute_dtype(w_);
  ids_ = ids;
  attention_mask_ = attention_mask;
  Tensor embedded = be_.empty({B, L, D}, dt);
  Tensor e2 = embedded.reshape({rows, D});
  be_.embedding_forward(ids.reshape({rows}), w_.embedding, e2);  // reads a bf16 table as is
  if (hook_) hook_->embedding_forward(ids.reshape({rows}), e2);
  logits_ = Tensor();
  run_layers(embedded, nullptr, true, keep);
  kept_activations_ = keep;
}

Tensor CausalLM::forward_cached(const Tensor& ids, std::vector<LayerCache>& caches,
                                bool sequence_start) {
  check(ids.ndim() == 1, "decoding: ids must be (n), got " + shape_str(ids.shape()));
  check(std::int64_t(caches.size()) == cfg_.n_layer,
        "decoding: " + std::to_string(caches.size()) + " layer caches for " +
            std::to_string(cfg_.n_layer) + " layers");
  const std::int64_t n = ids.dim(0), D = cfg_.d_model, V = cfg_.vocab_size;
  const DType dt = compute_dtype(w_);
  Tensor embedded = be_.empty({1, n, D}, dt);
  Tensor e2 = embedded.reshape({n, D});
  be_.embedding_forward(ids, w_.embedding, e2);
  if (hook_) hook_->embedding_forward(ids, e2);
  logits_ = Tensor();  // the activations backward() would need are gone
  kept_activations_ = false;
  attention_mask_ = Tensor();
  run_layers(embedded, &caches, sequence_start, false);
  // Only the last token's logits are wanted (docs/models.md, Mamba step 10).
  const Tensor last = final_norm_.reshape({n, D}).rows(n - 1, n);  // (1, D)
  Tensor logits = be_.empty({1, V}, dt);
  linear_forward(be_, last, w_.lm_head, Tensor(), logits);
  return logits;
}

void CausalLM::reset_caches(std::vector<LayerCache>& caches) {
  caches.resize(std::size_t(cfg_.n_layer));
  const DType dt = compute_dtype(w_);
  for (std::int64_t i = 0; i < cfg_.n_layer; ++i) {
    switch (layer_kind(cfg_, i).mixer) {
      case MixerKind::Mamba: {
        MambaMixerWeights mw = w_.layers[std::size_t(i)].mamba;  // the cache reads A_log only
        mw.A_log = in_dtype(be_, mw.A_log, dt);
        reset_mixer_cache(be_, cfg_, mw, i, mixer_hooks(i), dt, caches[std::size_t(i)].mamba);
        break;
      }
      case MixerKind::Attention: caches[std::size_t(i)].attn = AttentionCache(); break;
      case MixerKind::Mamba2: {
        Mamba2MixerWeights mw = w_.layers[std::size_t(i)].mamba2;  // the cache reads A_log only
        mw.A_log = in_dtype(be_, mw.A_log, dt);
        reset_mamba2_cache(be_, cfg_, mw, i, mixer_hooks(i), dt, caches[std::size_t(i)].mamba2);
        break;
      }
    }
  }
}

void CausalLM::mixer_forward_at(std::int64_t i, const LayerWeights& lw, std::size_t s,
                                std::vector<LayerCache>* caches, Tensor& mix) {
  const std::int64_t Lb = norm_out_[s].dim(1);
  switch (layer_kind(cfg_, i).mixer) {
    case MixerKind::Mamba: {
      MixerCache* cache = caches ? &(*caches)[std::size_t(i)].mamba : nullptr;
      // Decoding saves nothing for backward: the whole block is one scan chunk.
      const std::int64_t chunk = caches ? std::max<std::int64_t>(Lb, 1) : scan_chunk_;
      mixer_forward(be_, cfg_, lw.mamba, norm_out_[s], chunk, mixer_[s], mix, i, mixer_hooks(i),
                    cache);
      break;
    }
    case MixerKind::Attention:
      attention_forward(be_, cfg_, lw.attn, norm_out_[s], caches ? Tensor() : key_mask(Lb),
                        attn_[s], mix, hook_, mixer_hooks(i).sites,
                        caches ? &(*caches)[std::size_t(i)].attn : nullptr);
      break;
    case MixerKind::Mamba2:
      mamba2_mixer_forward(be_, cfg_, lw.mamba2, norm_out_[s], mamba2_[s], mix, i,
                           mixer_hooks(i), caches ? &(*caches)[std::size_t(i)].mamba2 : nullptr);
      break;
  }
}

void CausalLM::drop_mixer_activations(std::size_t s) {
  mixer_[s] = MixerActivations();
  attn_[s] = AttentionActivations();
  mamba2_[s] = Mamba2Activations();
}

void CausalLM::recompute_mixer(std::int64_t i, const LayerWeights& lw) {
  // The hooks replay their first forward (the same dropout masks) while it runs again.
  struct Replay {
    LinearHook* hook;
    explicit Replay(LinearHook* h) : hook(h) {
      if (hook) hook->set_recomputing(true);
    }
    ~Replay() {
      if (hook) hook->set_recomputing(false);
    }
  } replay(hook_);
  Tensor mix = be_.empty(norm_out_[std::size_t(i)].shape(), norm_out_[std::size_t(i)].dtype());
  mixer_forward_at(i, lw, std::size_t(i), nullptr, mix);  // the output is the forward's: unused
}

void CausalLM::run_layers(const Tensor& embedded, std::vector<LayerCache>* caches,
                          bool virtual_tokens, bool keep) {
  const std::int64_t B = embedded.dim(0), L = embedded.dim(1), D = cfg_.d_model, rows = B * L;
  const std::int64_t n_layer = cfg_.n_layer;
  const DType dt = embedded.dtype();
  check(!(keep && caches), "CausalLM: decoding keeps no activations");
  // Training keeps every layer's activations for backward; evaluation and decoding keep none
  // (each layer's go into slot 0 and are overwritten by the next layer's).
  const std::size_t n_slots = keep ? std::size_t(n_layer) : 1;
  const auto slot = [&](std::int64_t i) { return keep ? std::size_t(i) : 0; };
  layer_in_.assign(keep ? n_layer + 1 : 1, Tensor());
  block_in_.assign(n_slots, Tensor());
  n_prefix_.assign(std::size_t(n_layer), 0);
  norm_out_.assign(n_slots + 1, Tensor());
  norm_rstd_.assign(n_slots + 1, Tensor());
  mixer_.assign(n_slots, MixerActivations());
  attn_.assign(n_slots, AttentionActivations());
  mamba2_.assign(n_slots, Mamba2Activations());
  ffn_in_.assign(n_slots, Tensor());
  ffn_norm_out_.assign(n_slots, Tensor());
  ffn_rstd_.assign(n_slots, Tensor());
  mlp_.assign(n_slots, MlpActivations());
  moe_.assign(n_slots, MoeActivations());
  std::vector<LayerRouting> routing;  // the router loss over every MoE layer's rows

  const bool with_virtual = virtual_tokens && input_hook_;
  const Tensor prompt = with_virtual ? input_hook_->prompt() : Tensor();
  n_prompt_ = prompt.defined() ? prompt.dim(0) : 0;
  Tensor h = n_prompt_ ? prepend_steps(be_, prompt, embedded) : embedded;  // (B, P+L, D)
  layer_in_[0] = h;
  const auto prefix_of = [&](std::int64_t i) {
    return with_virtual ? input_hook_->prefix(i) : Tensor();
  };

  final_norm_ = be_.empty({B, L, D}, dt);
  final_rstd_ = be_.empty({rows}, dt);
  // Whether this layer's norm was done by the previous layer's fused residual add; its output
  // and rstd then sit in norm_out_/norm_rstd_ at the next slot (slot 1 when decoding).
  bool normed = false;
  for (std::int64_t i = 0; i < n_layer; ++i) {
    // The layer's weights as it computes with them, dropped at the end of the iteration: fp32
    // scratch for its small frozen tensors held in bf16 (model/weight_storage.h).
    const LayerWeights lw = layer_in_dtype(be_, w_.layers[std::size_t(i)], dt);
    const std::size_t s = slot(i), next = keep ? s + 1 : 1;
    const Tensor prefix = prefix_of(i);
    n_prefix_[std::size_t(i)] = prefix.defined() ? prefix.dim(0) : 0;
    const std::int64_t Tq = n_prefix_[std::size_t(i)];
    block_in_[s] = Tq ? prepend_steps(be_, prefix, h) : h;
    const std::int64_t Lb = block_in_[s].dim(1);
    if (normed) {  // the previous layer left this layer's norm in the next slot
      if (!keep) {
        norm_out_[0] = norm_out_[1];
        norm_rstd_[0] = norm_rstd_[1];
      }
    } else {
      norm_out_[s] = be_.empty({B, Lb, D}, dt);
      norm_rstd_[s] = be_.empty({B * Lb}, dt);
      be_.rmsnorm_forward(block_in_[s], lw.norm, cfg_.layer_norm_epsilon, norm_out_[s],
                          norm_rstd_[s]);
    }
    const LayerKind kind = layer_kind(cfg_, i);
    Tensor mix = be_.empty({B, Lb, D}, dt);
    mixer_forward_at(i, lw, s, caches, mix);
    if (keep && recompute_mixers_) drop_mixer_activations(s);  // backward runs it again
    // `residual` + `branch` is the layer's output: the mixer's branch, or the feed-forward's
    // on top of block input + mixer output.
    Tensor residual = block_in_[s], branch = mix;
    if (kind.ffn != FeedForwardKind::None) {
      ffn_norm_out_[s] = be_.empty({B, Lb, D}, dt);
      ffn_rstd_[s] = be_.empty({B * Lb}, dt);
      be_.add_rmsnorm_forward(block_in_[s], mix, lw.ffn_norm, cfg_.layer_norm_epsilon,
                              ffn_norm_out_[s], ffn_rstd_[s]);
      ffn_in_[s] = mix;
      branch = be_.empty({B, Lb, D}, dt);
      ffn_forward(i, lw, s, ffn_norm_out_[s], branch);
      residual = mix;
      if (kind.ffn == FeedForwardKind::MoE && !caches) {
        const MoeActivations& m = moe_[s];
        routing.push_back({Tensor::empty(m.probs.shape(), m.probs.dtype()), m.experts_host,
                           counted_rows(Lb)});
        be_.copy(m.probs, routing.back().probs);
      }
    }
    // The residual (in the model's dtype; fp32 or wider, so Mamba's residual_in_fp32 holds
    // trivially), fused with the next norm (the next layer's, or norm_f after the last) when
    // no steps are put in or taken out between them.
    const bool last = i + 1 == n_layer;
    normed = !Tq && (last ? !n_prompt_ : !prefix_of(i + 1).defined());
    if (normed && last) {
      be_.add_rmsnorm_forward(residual, branch, in_dtype(be_, w_.norm_f, dt),
                              cfg_.layer_norm_epsilon, final_norm_, final_rstd_);
    } else if (normed) {
      norm_out_[next] = be_.empty({B, Lb, D}, dt);
      norm_rstd_[next] = be_.empty({B * Lb}, dt);
      be_.add_rmsnorm_forward(residual, branch,
                              in_dtype(be_, w_.layers[std::size_t(i) + 1].norm, dt),
                              cfg_.layer_norm_epsilon, norm_out_[next], norm_rstd_[next]);
    } else {
      be_.add(residual, branch);
    }
    mix = branch;
    if (Tq) {  // the prefix's outputs are dropped: the next layer never sees them
      h = be_.empty({B, Lb - Tq, D}, dt);
      take_steps(be_, mix, Tq, h);
    } else {
      h = mix;
    }
    if (keep) layer_in_[std::size_t(i) + 1] = h;
  }

  if (n_prompt_) {  // the prompt's outputs are dropped before norm_f
    final_in_ = be_.empty({B, L, D}, dt);
    take_steps(be_, h, n_prompt_, final_in_);
  } else {
    final_in_ = h;
  }
  if (!normed)
    be_.rmsnorm_forward(final_in_, in_dtype(be_, w_.norm_f, dt), cfg_.layer_norm_epsilon,
                        final_norm_, final_rstd_);
  if (!caches) aux_ = router_aux_loss(routing, cfg_.n_experts);
}

LmLoss CausalLM::loss(const Tensor& targets) {
  check(logits_.defined(), "CausalLM::loss called before forward");
  check(targets.shape() == ids_.shape(),
        "targets shape " + shape_str(targets.shape()) + " != ids shape " + shape_str(ids_.shape()));
  std::int64_t n_tokens = 0;
  const double sum = be_.cross_entropy_forward(logits_.reshape({ids_.numel(), cfg_.vocab_size}),
                                               targets.reshape({ids_.numel()}), &n_tokens);
  return loss_from_sum(sum, n_tokens);
}

namespace {

// The counted targets (label != -100) of a (rows) I64 host tensor, and the loss's scale:
// 1 / normaliser_tokens when given (> 0), else 1 / that count (0 when there are none).
struct LossScale {
  std::int64_t n_tokens = 0;
  double scale = 0;
};
LossScale loss_scale(const Tensor& targets1, std::int64_t normaliser_tokens) {
  LossScale s;
  for (std::int64_t r = 0; r < targets1.numel(); ++r)
    s.n_tokens += targets1.data<std::int64_t>()[r] != -100;
  const std::int64_t divisor = normaliser_tokens > 0 ? normaliser_tokens : s.n_tokens;
  s.scale = divisor ? 1.0 / double(divisor) : 0.0;
  return s;
}

}  // namespace

LmLoss CausalLM::loss_from_sum(double sum, std::int64_t n_tokens) const {
  LmLoss out;
  out.n_tokens = n_tokens;
  out.loss = n_tokens ? sum / double(n_tokens) : 0.0;
  out.aux_loss = aux_.value;
  out.objective = out.loss + aux_coef_ * aux_.value;
  return out;
}

void CausalLM::head_backward(Tensor& logits, const Tensor& targets, double scale,
                             const Tensor& x, Tensor& dx, ModelWeights& grads) {
  be_.cross_entropy_backward(logits, targets, scale, logits);  // in place: dlogits
  // logits = lm_head(final_norm); the tied head's gradient lands in the embedding's.
  Tensor& d_head = cfg_.tie_word_embeddings ? grads.embedding : grads.lm_head;
  Tensor no_bias;
  linear_backward(be_, logits, x, w_.lm_head, dx, 0.0, d_head, no_bias);
}

void CausalLM::backward(const Tensor& targets, ModelWeights& grads, std::int64_t normaliser_tokens) {
  check(logits_.defined() && kept_activations_, "CausalLM::backward called before forward");
  const std::int64_t rows = ids_.numel(), D = cfg_.d_model;
  Tensor logits2 = logits_.reshape({rows, cfg_.vocab_size});
  const Tensor targets1 = targets.reshape({rows});
  const LossScale ls = loss_scale(targets1, normaliser_tokens);  // targets live on the host
  Tensor dnorm = be_.empty({rows, D}, logits_.dtype());
  head_backward(logits2, targets1, ls.scale, final_norm_.reshape({rows, D}), dnorm, grads);
  logits_ = Tensor();  // consumed
  layers_backward(dnorm, grads, ls.n_tokens, ls.scale);
}

std::int64_t CausalLM::head_chunk_rows() const {
  if (head_chunk_rows_ > 0) return head_chunk_rows_;
  constexpr std::int64_t kLogitsBytes = std::int64_t(32) << 20;
  const std::int64_t row_bytes = cfg_.vocab_size * std::int64_t(dtype_size(compute_dtype(w_)));
  // Fewer rows make the head's two products slower (OpenBLAS at D 768, V 50280: 140-154
  // GFLOP/s at 166 rows, 186-189 at 512; docs/benchmarks.md, 2026-12-07). A head held in bf16
  // is also widened to fp32, piece by piece, inside each product (Backend::gemm): each block
  // widens all of it twice, hence more rows still.
  const std::int64_t min_rows = w_.lm_head.dtype() == DType::BF16 ? 1024 : 512;
  return std::max(min_rows, kLogitsBytes / std::max<std::int64_t>(row_bytes, 1));
}

void CausalLM::head_blocks(
    const std::function<void(std::int64_t, std::int64_t, Tensor&)>& block) {
  const std::int64_t rows = ids_.numel(), D = cfg_.d_model;
  const Tensor x = final_norm_.reshape({rows, D});
  const std::int64_t chunk = std::min(head_chunk_rows(), std::max<std::int64_t>(rows, 1));
  Tensor buffer = be_.empty({chunk, cfg_.vocab_size}, final_norm_.dtype());
  for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const std::int64_t r1 = std::min(rows, r0 + chunk);
    Tensor logits = buffer.rows(0, r1 - r0);
    linear_forward(be_, x.rows(r0, r1), w_.lm_head, Tensor(), logits);
    block(r0, r1, logits);
  }
}

LmLoss CausalLM::loss_and_backward(const Tensor& targets, ModelWeights& grads,
                                   std::int64_t normaliser_tokens) {
  check(kept_activations_ && !logits_.defined(),
        "CausalLM::loss_and_backward needs forward_for_training first");
  check(targets.shape() == ids_.shape(),
        "targets shape " + shape_str(targets.shape()) + " != ids shape " + shape_str(ids_.shape()));
  const std::int64_t rows = ids_.numel(), D = cfg_.d_model;
  const Tensor targets_by_row = targets.reshape({rows, 1});
  const LossScale ls = loss_scale(targets.reshape({rows}), normaliser_tokens);
  const Tensor x = final_norm_.reshape({rows, D});
  Tensor dnorm = be_.empty({rows, D}, final_norm_.dtype());
  double sum = 0;
  std::int64_t n_tokens = 0;
  head_blocks([&](std::int64_t r0, std::int64_t r1, Tensor& logits) {
    const Tensor t_rows = targets_by_row.rows(r0, r1).reshape({r1 - r0});
    std::int64_t counted = 0;
    sum += be_.cross_entropy_forward(logits, t_rows, &counted);
    n_tokens += counted;
    Tensor dx_rows = dnorm.rows(r0, r1);
    head_backward(logits, t_rows, ls.scale, x.rows(r0, r1), dx_rows, grads);  // overwrites
  });
  layers_backward(dnorm, grads, ls.n_tokens, ls.scale);
  return loss_from_sum(sum, n_tokens);
}

LmLoss CausalLM::eval_loss(const Tensor& ids, const Tensor& attention_mask,
                           const Tensor& targets, const std::vector<std::int64_t>& picks,
                           std::vector<double>* picked) {
  check(targets.shape() == ids.shape(),
        "targets shape " + shape_str(targets.shape()) + " != ids shape " + shape_str(ids.shape()));
  check(picks.empty() || picked, "CausalLM::eval_loss: picks without a place to put them");
  const std::int64_t V = cfg_.vocab_size;
  for (const std::int64_t p : picks)
    check(p >= 0 && p < ids.numel() * V,
          "CausalLM::eval_loss: pick " + std::to_string(p) + " outside the logits " +
              shape_str({ids.dim(0), ids.dim(1), V}));
  forward_layers(ids, attention_mask, false);
  const Tensor targets_by_row = targets.reshape({ids.numel(), 1});
  if (picked) picked->assign(picks.size(), 0.0);
  double sum = 0;
  std::int64_t n_tokens = 0;
  head_blocks([&](std::int64_t r0, std::int64_t r1, Tensor& logits) {
    std::int64_t counted = 0;
    sum += be_.cross_entropy_forward(
        logits, targets_by_row.rows(r0, r1).reshape({r1 - r0}), &counted);
    n_tokens += counted;
    // This block's picks, gathered on the backend and read back at once.
    std::vector<std::size_t> order;
    for (std::size_t j = 0; j < picks.size(); ++j)
      if (picks[j] >= r0 * V && picks[j] < r1 * V) order.push_back(j);
    if (order.empty()) return;
    const std::int64_t k = std::int64_t(order.size());
    Tensor index = Tensor::empty({k}, DType::I64);
    for (std::int64_t j = 0; j < k; ++j)
      index.data<std::int64_t>()[j] = picks[order[std::size_t(j)]] - r0 * V;
    Tensor values = be_.empty({k}, logits.dtype());
    be_.index_gather(logits, index, values);
    const Tensor host = values.to(DType::F64);
    for (std::int64_t j = 0; j < k; ++j)
      (*picked)[order[std::size_t(j)]] = host.data<double>()[j];
  });
  return loss_from_sum(sum, n_tokens);
}

void CausalLM::layers_backward(const Tensor& dnorm, ModelWeights& grads, std::int64_t n_tokens,
                               double scale) {
  const std::int64_t B = ids_.dim(0), L = ids_.dim(1), D = cfg_.d_model, rows = B * L;
  const std::int64_t n_layer = cfg_.n_layer;
  const DType dt = dnorm.dtype();
  check(grads.layers.empty() || std::int64_t(grads.layers.size()) == n_layer,
        "CausalLM::backward: gradients for " + std::to_string(grads.layers.size()) +
            " layers, the model has " + std::to_string(n_layer));
  Tensor dfinal = be_.empty({B, L, D}, dt);
  Tensor dnorm_f = grads.norm_f.defined() ? grads.norm_f : be_.zeros({D}, dt);
  be_.rmsnorm_backward(dnorm.reshape({B, L, D}), final_in_, in_dtype(be_, w_.norm_f, dt),
                       final_rstd_, dfinal, dnorm_f);
  // dL/d(residual stream), (B, P+L, D): the prompt's dropped outputs get no gradient.
  Tensor dh = dfinal;
  if (n_prompt_) {
    dh = be_.zeros({B, n_prompt_ + L, D}, dt);
    put_steps(be_, dfinal, n_prompt_, dh);
  }
  for (std::int64_t i = n_layer - 1; i >= 0; --i) {
    const LayerWeights lw = layer_in_dtype(be_, w_.layers[i], dt);  // widened again, as forward
    LayerWeights frozen;  // no layer gradients at all: every layer tensor is frozen
    LayerWeights& lg = grads.layers.empty() ? frozen : grads.layers[i];
    const std::int64_t Tq = n_prefix_[i], Lb = block_in_[i].dim(1);
    Tensor dblock = dh;  // gradient at the block's output, (B, Tq+P+L, D)
    if (Tq) {
      dblock = be_.zeros({B, Lb, D}, dt);
      put_steps(be_, dh, Tq, dblock);
    }
    const LayerKind kind = layer_kind(cfg_, i);
    Tensor dn = be_.empty({B, Lb, D}, dt);
    if (kind.ffn != FeedForwardKind::None) {  // dblock becomes the gradient at ffn_in_
      const std::int64_t rows_b = B * Lb;
      const Tensor n2 = ffn_norm_out_[i].reshape({rows_b, D}), dout2 = dblock.reshape({rows_b, D});
      Tensor dn2 = dn.reshape({rows_b, D});
      if (kind.ffn == FeedForwardKind::Mlp) {
        mlp_backward(be_, lw.mlp, n2, mlp_[i], dout2, dn2, lg.mlp, hook_, ffn_sites(i));
      } else {
        // the router loss's share of this batch: aux_coef * n_tokens / divisor
        const double aux_weight = aux_coef_ * double(n_tokens) * scale;
        const Tensor dprobs = aux_weight != 0 ? aux_grad(i, aux_weight) : Tensor();
        moe_backward(be_, cfg_, lw.moe, n2, moe_[i], dout2, dprobs, dn2, lg.moe, hook_,
                     ffn_sites(i));
      }
      Tensor dffn_norm = lg.ffn_norm.defined() ? lg.ffn_norm : be_.zeros({D}, dt);
      be_.rmsnorm_backward_add(dn, ffn_in_[i], lw.ffn_norm, ffn_rstd_[i], dblock, dffn_norm);
    }
    if (recompute_mixers_) recompute_mixer(i, lw);
    switch (kind.mixer) {
      case MixerKind::Mamba:
        mixer_backward(be_, cfg_, lw.mamba, norm_out_[i], mixer_[i], dblock, dn, lg.mamba, i,
                       mixer_hooks(i));
        break;
      case MixerKind::Attention:
        attention_backward(be_, cfg_, lw.attn, norm_out_[i], attn_[i], dblock, dn, lg.attn,
                           hook_, mixer_hooks(i).sites);
        break;
      case MixerKind::Mamba2:
        mamba2_mixer_backward(be_, cfg_, lw.mamba2, norm_out_[i], mamba2_[i], dblock, dn,
                              lg.mamba2, i, mixer_hooks(i));
        break;
    }
    if (recompute_mixers_) drop_mixer_activations(std::size_t(i));
    Tensor dnorm_w = lg.norm.defined() ? lg.norm : be_.zeros({D}, dt);
    // residual: the gradient flows through (dblock) plus the block's branch, added in place
    be_.rmsnorm_backward_add(dn, block_in_[i], lw.norm, norm_rstd_[i], dblock, dnorm_w);
    if (Tq) {
      Tensor dprefix = be_.zeros({Tq, D}, dt);
      sum_steps(be_, dblock, 0, dprefix);
      input_hook_->prefix_backward(i, dprefix);
      dh = be_.empty({B, Lb - Tq, D}, dt);
      take_steps(be_, dblock, Tq, dh);
    } else {
      dh = dblock;
    }
  }
  if (n_prompt_) {
    Tensor dprompt = be_.zeros({n_prompt_, D}, dt);
    sum_steps(be_, dh, 0, dprompt);
    input_hook_->prompt_backward(dprompt);
    d_embed_ = be_.empty({B, L, D}, dt);
    take_steps(be_, dh, n_prompt_, d_embed_);
  } else {
    d_embed_ = dh;
  }
  // Jamba's nn.Embedding has padding_idx = pad_token_id: the lookup sends no gradient to that
  // row, wherever the id occurs (docs/models.md "Jamba").
  Tensor d_lookup = d_embed_.reshape({rows, D});
  const std::int64_t pad = cfg_.is_jamba() ? cfg_.pad_token_id : -1;
  const std::int64_t* id = ids_.data<std::int64_t>();
  if (pad >= 0 && std::find(id, id + rows, pad) != id + rows) {
    Tensor keep = Tensor::empty({rows, D}, dt);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < D; ++c) {
        if (dt == DType::F32)
          keep.data<float>()[r * D + c] = id[r] == pad ? 0.f : 1.f;
        else
          keep.data<double>()[r * D + c] = id[r] == pad ? 0.0 : 1.0;
      }
    Tensor keep_dev = be_.empty({rows, D}, dt);
    be_.copy(keep, keep_dev);
    Tensor masked = be_.empty({rows, D}, dt);
    be_.mul(d_lookup, keep_dev, masked);
    d_lookup = masked;
  }
  if (grads.embedding.defined())
    be_.embedding_backward(ids_.reshape({rows}), d_lookup, grads.embedding);
  if (hook_) hook_->embedding_backward(ids_.reshape({rows}), d_lookup);
  kept_activations_ = false;  // mixers' recomputed activations were dropped on the way
}

}  // namespace ssmtune
