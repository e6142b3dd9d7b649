#include "model/linear_hook.h"

#include "core/error.h"
#include "model/mamba_mixer.h"

namespace ssmtune {

std::vector<LinearSite> linear_sites(const ModelConfig& c) {
  std::vector<LinearSite> sites;
  for (std::int64_t i = 0; i < c.n_layer; ++i) {
    switch (layer_kind(c, i).mixer) {
      case MixerKind::Mamba: append_mamba_mixer_sites(c, i, mixer_module(c, i), sites); break;
    }
  }
  for (std::size_t k = 0; k < sites.size(); ++k) sites[k].index = std::int64_t(k);
  return sites;
}

Tensor linear_weight(const ModelWeights& w, const LinearSite& site) {
  check(site.layer >= 0 && site.layer < std::int64_t(w.layers.size()),
        site.module + ": the weights have no layer " + std::to_string(site.layer));
  return mamba_mixer_linear_weight(w.layers[std::size_t(site.layer)].mamba, site);
}

}  // namespace ssmtune
