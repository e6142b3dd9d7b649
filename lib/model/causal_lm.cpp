#include "model/causal_lm.h"

#include <algorithm>

#include "model/linear.h"
#include "model/sequence_steps.h"

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
  for (const LinearSite& s : sites_)
    if (mixer_site_[std::size_t(s.layer)] < 0) mixer_site_[std::size_t(s.layer)] = s.index;
}

MixerHooks CausalLM::mixer_hooks(std::int64_t layer) const {
  return {hook_, scan_hook_, input_hook_, sites_.data() + mixer_site_[std::size_t(layer)]};
}

void CausalLM::forward(const Tensor& ids) {
  check(ids.ndim() == 2, "input ids must be (batch, length), got " + shape_str(ids.shape()));
  const std::int64_t B = ids.dim(0), L = ids.dim(1), D = cfg_.d_model, rows = B * L;
  const DType dt = w_.embedding.dtype();
  ids_ = ids;
  Tensor embedded = be_.empty({B, L, D}, dt);
  Tensor e2 = embedded.reshape({rows, D});
  be_.embedding_forward(ids.reshape({rows}), w_.embedding, e2);
  if (hook_) hook_->embedding_forward(ids.reshape({rows}), e2);
  run_layers(embedded, nullptr, true);
  logits_ = be_.empty({B, L, cfg_.vocab_size}, dt);
  Tensor logits2 = logits_.reshape({rows, cfg_.vocab_size});
  linear_forward(be_, final_norm_.reshape({rows, D}), w_.lm_head, Tensor(), logits2);
}

Tensor CausalLM::forward_cached(const Tensor& ids, std::vector<LayerCache>& caches,
                                bool sequence_start) {
  check(ids.ndim() == 1, "decoding: ids must be (n), got " + shape_str(ids.shape()));
  check(std::int64_t(caches.size()) == cfg_.n_layer,
        "decoding: " + std::to_string(caches.size()) + " layer caches for " +
            std::to_string(cfg_.n_layer) + " layers");
  const std::int64_t n = ids.dim(0), D = cfg_.d_model, V = cfg_.vocab_size;
  const DType dt = w_.embedding.dtype();
  Tensor embedded = be_.empty({1, n, D}, dt);
  Tensor e2 = embedded.reshape({n, D});
  be_.embedding_forward(ids, w_.embedding, e2);
  if (hook_) hook_->embedding_forward(ids, e2);
  logits_ = Tensor();  // the activations backward() would need are gone
  run_layers(embedded, &caches, sequence_start);
  // Only the last token's logits are wanted (docs/models.md, Mamba step 10).
  const Tensor last = final_norm_.reshape({n, D}).rows(n - 1, n);  // (1, D)
  Tensor logits = be_.empty({1, V}, dt);
  linear_forward(be_, last, w_.lm_head, Tensor(), logits);
  return logits;
}

void CausalLM::reset_caches(std::vector<LayerCache>& caches) {
  caches.resize(std::size_t(cfg_.n_layer));
  const DType dt = w_.embedding.dtype();
  for (std::int64_t i = 0; i < cfg_.n_layer; ++i) {
    switch (layer_kind(cfg_, i).mixer) {
      case MixerKind::Mamba:
        reset_mixer_cache(be_, cfg_, w_.layers[std::size_t(i)].mamba, i, mixer_hooks(i), dt,
                          caches[std::size_t(i)].mamba);
        break;
    }
  }
}

void CausalLM::run_layers(const Tensor& embedded, std::vector<LayerCache>* caches,
                          bool virtual_tokens) {
  const std::int64_t B = embedded.dim(0), L = embedded.dim(1), D = cfg_.d_model, rows = B * L;
  const std::int64_t n_layer = cfg_.n_layer;
  const DType dt = embedded.dtype();
  // Training keeps every layer's activations for backward; decoding keeps none (each layer's
  // go into slot 0 and are overwritten by the next layer's).
  const bool keep = caches == nullptr;
  const std::size_t n_slots = keep ? std::size_t(n_layer) : 1;
  const auto slot = [&](std::int64_t i) { return keep ? std::size_t(i) : 0; };
  layer_in_.assign(keep ? n_layer + 1 : 1, Tensor());
  block_in_.assign(n_slots, Tensor());
  n_prefix_.assign(std::size_t(n_layer), 0);
  norm_out_.assign(n_slots + 1, Tensor());
  norm_rstd_.assign(n_slots + 1, Tensor());
  mixer_.assign(n_slots, MixerActivations());

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
    const LayerWeights& lw = w_.layers[std::size_t(i)];
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
    Tensor mix = be_.empty({B, Lb, D}, dt);
    switch (layer_kind(cfg_, i).mixer) {
      case MixerKind::Mamba: {
        MixerCache* cache = caches ? &(*caches)[std::size_t(i)].mamba : nullptr;
        // Decoding saves nothing for backward: the whole block is one scan chunk.
        const std::int64_t chunk = keep ? scan_chunk_ : std::max<std::int64_t>(Lb, 1);
        mixer_forward(be_, cfg_, lw.mamba, norm_out_[s], chunk, mixer_[s], mix, i,
                      mixer_hooks(i), cache);
        break;
      }
    }
    // The residual (fp32 or wider, so residual_in_fp32 holds trivially), fused with the next
    // norm (the next layer's, or norm_f after the last) when no steps are put in or taken out
    // between them.
    const bool last = i + 1 == n_layer;
    normed = !Tq && (last ? !n_prompt_ : !prefix_of(i + 1).defined());
    if (normed && last) {
      be_.add_rmsnorm_forward(block_in_[s], mix, w_.norm_f, cfg_.layer_norm_epsilon,
                              final_norm_, final_rstd_);
    } else if (normed) {
      norm_out_[next] = be_.empty({B, Lb, D}, dt);
      norm_rstd_[next] = be_.empty({B * Lb}, dt);
      be_.add_rmsnorm_forward(block_in_[s], mix, w_.layers[std::size_t(i) + 1].norm,
                              cfg_.layer_norm_epsilon, norm_out_[next], norm_rstd_[next]);
    } else {
      be_.add(block_in_[s], mix);
    }
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
    be_.rmsnorm_forward(final_in_, w_.norm_f, cfg_.layer_norm_epsilon, final_norm_, final_rstd_);
}

LmLoss CausalLM::loss(const Tensor& targets) {
  check(logits_.defined(), "CausalLM::loss called before forward");
  check(targets.shape() == ids_.shape(),
        "targets shape " + shape_str(targets.shape()) + " != ids shape " + shape_str(ids_.shape()));
  LmLoss out;
  const double sum = be_.cross_entropy_forward(logits_.reshape({ids_.numel(), cfg_.vocab_size}),
                                               targets.reshape({ids_.numel()}), &out.n_tokens);
  out.loss = out.n_tokens ? sum / double(out.n_tokens) : 0.0;
  return out;
}

void CausalLM::backward(const Tensor& targets, ModelWeights& grads, std::int64_t normaliser_tokens) {
  check(logits_.defined(), "CausalLM::backward called before forward");
  const std::int64_t B = ids_.dim(0), L = ids_.dim(1), D = cfg_.d_model, rows = B * L;
  const std::int64_t V = cfg_.vocab_size, n_layer = cfg_.n_layer;
  const DType dt = logits_.dtype();
  check(grads.layers.empty() || std::int64_t(grads.layers.size()) == n_layer,
        "CausalLM::backward: gradients for " + std::to_string(grads.layers.size()) +
            " layers, the model has " + std::to_string(n_layer));
  Tensor logits2 = logits_.reshape({rows, V});
  const Tensor targets1 = targets.reshape({rows});

  std::int64_t n_tokens = 0;  // targets live on the host
  for (std::int64_t r = 0; r < rows; ++r) n_tokens += targets1.data<std::int64_t>()[r] != -100;
  const std::int64_t divisor = normaliser_tokens > 0 ? normaliser_tokens : n_tokens;
  const double scale = divisor ? 1.0 / double(divisor) : 0.0;
  be_.cross_entropy_backward(logits2, targets1, scale, logits2);  // in place: dlogits

  // logits = lm_head(final_norm); the tied head's gradient lands in the embedding's.
  Tensor dnorm = be_.empty({rows, D}, dt);
  Tensor& d_head = cfg_.tie_word_embeddings ? grads.embedding : grads.lm_head;
  Tensor no_bias;
  linear_backward(be_, logits2, final_norm_.reshape({rows, D}), w_.lm_head, dnorm, 0.0, d_head,
                  no_bias);
  Tensor dfinal = be_.empty({B, L, D}, dt);
  Tensor dnorm_f = grads.norm_f.defined() ? grads.norm_f : be_.zeros({D}, dt);
  be_.rmsnorm_backward(dnorm.reshape({B, L, D}), final_in_, w_.norm_f, final_rstd_, dfinal,
                       dnorm_f);
  // dL/d(residual stream), (B, P+L, D): the prompt's dropped outputs get no gradient.
  Tensor dh = dfinal;
  if (n_prompt_) {
    dh = be_.zeros({B, n_prompt_ + L, D}, dt);
    put_steps(be_, dfinal, n_prompt_, dh);
  }
  for (std::int64_t i = n_layer - 1; i >= 0; --i) {
    const LayerWeights& lw = w_.layers[i];
    LayerWeights frozen;  // no layer gradients at all: every layer tensor is frozen
    LayerWeights& lg = grads.layers.empty() ? frozen : grads.layers[i];
    const std::int64_t Tq = n_prefix_[i], Lb = block_in_[i].dim(1);
    Tensor dblock = dh;  // gradient at the block's output, (B, Tq+P+L, D)
    if (Tq) {
      dblock = be_.zeros({B, Lb, D}, dt);
      put_steps(be_, dh, Tq, dblock);
    }
    Tensor dn = be_.empty({B, Lb, D}, dt);
    switch (layer_kind(cfg_, i).mixer) {
      case MixerKind::Mamba:
        mixer_backward(be_, cfg_, lw.mamba, norm_out_[i], mixer_[i], dblock, dn, lg.mamba, i,
                       mixer_hooks(i));
        break;
    }
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
  if (grads.embedding.defined())
    be_.embedding_backward(ids_.reshape({rows}), d_embed_.reshape({rows, D}), grads.embedding);
  if (hook_) hook_->embedding_backward(ids_.reshape({rows}), d_embed_.reshape({rows, D}));
  logits_ = Tensor();  // consumed
}

}  // namespace ssmtune
