#include "model/linear_hook.h"

#include "core/error.h"
#include "model/attention_layer.h"
#include "model/feed_forward.h"
#include "model/mamba2_mixer.h"
#include "model/mamba_mixer.h"

namespace ssmtune {

std::vector<LinearSite> linear_sites(const ModelConfig& c) {
  std::vector<LinearSite> sites;
  for (std::int64_t i = 0; i < c.n_layer; ++i) {
    const LayerKind kind = layer_kind(c, i);
    switch (kind.mixer) {
      case MixerKind::Mamba: append_mamba_mixer_sites(c, i, mixer_module(c, i), sites); break;
      case MixerKind::Attention: append_attention_sites(c, i, mixer_module(c, i), sites); break;
      case MixerKind::Mamba2: append_mamba2_mixer_sites(c, i, mixer_module(c, i), sites); break;
    }
    switch (kind.ffn) {
      case FeedForwardKind::None: break;
      case FeedForwardKind::Mlp: append_mlp_sites(c, i, -1, ffn_module(c, i), sites); break;
      case FeedForwardKind::MoE: append_moe_sites(c, i, ffn_module(c, i), sites); break;
    }
  }
  for (std::size_t k = 0; k < sites.size(); ++k) sites[k].index = std::int64_t(k);
  return sites;
}

Tensor linear_weight(const ModelWeights& w, const LinearSite& site) {
  check(site.layer >= 0 && site.layer < std::int64_t(w.layers.size()),
        site.module + ": the weights have no layer " + std::to_string(site.layer));
  const LayerWeights& l = w.layers[std::size_t(site.layer)];
  // A site's module is its layer's mixer or feed-forward module plus its own name.
  if (l.moe.router.defined() && site.module.find(".feed_forward.") != std::string::npos)
    return moe_linear_weight(l.moe, site);
  if (l.mlp.gate_proj.defined() && site.module.find(".feed_forward.") != std::string::npos)
    return mlp_linear_weight(l.mlp, site);
  if (l.attn.q_proj.defined()) return attention_linear_weight(l.attn, site);
  if (l.mamba2.in_proj.defined()) return mamba2_mixer_linear_weight(l.mamba2, site);
  return mamba_mixer_linear_weight(l.mamba, site);
}

}  // namespace ssmtune
