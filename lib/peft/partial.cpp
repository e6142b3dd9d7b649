#include "peft/partial.h"

#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"
#include "io/json_file.h"
#include "peft/target_names.h"

namespace ssmtune {

namespace {

// Layer-relative config names -> the HF tensor after the Mamba mixer's module
// ("backbone.layers.I.mixer." / "model.layers.I.mamba."); "norm" is the norm before the mixer.
const std::map<std::string, std::string>& mixer_tensors() {
  static const std::map<std::string, std::string> table = {
      {"A_log", "A_log"},
      {"D", "D"},
      {"conv1d", "conv1d.weight"},
      {"conv1d.weight", "conv1d.weight"},
      {"conv1d.bias", "conv1d.bias"},
      {"in_proj", "in_proj.weight"},
      {"in_proj.weight", "in_proj.weight"},
      {"in_proj.bias", "in_proj.bias"},
      {"x_proj", "x_proj.weight"},
      {"x_proj.weight", "x_proj.weight"},
      {"dt_proj", "dt_proj.weight"},
      {"dt_proj.weight", "dt_proj.weight"},
      {"dt_proj.bias", "dt_proj.bias"},
      {"out_proj", "out_proj.weight"},
      {"out_proj.weight", "out_proj.weight"},
      {"out_proj.bias", "out_proj.bias"},
  };
  return table;
}

// The same for a Mamba-2 mixer: a scalar A, D and dt_bias per head, one fused in_proj, and the
// gated RMSNorm's gain (HF "mixer.norm", here "gated_norm": "norm" is the block's norm).
const std::map<std::string, std::string>& mamba2_mixer_tensors() {
  static const std::map<std::string, std::string> table = {
      {"A_log", "A_log"},
      {"D", "D"},
      {"dt_bias", "dt_bias"},
      {"conv1d", "conv1d.weight"},
      {"conv1d.weight", "conv1d.weight"},
      {"conv1d.bias", "conv1d.bias"},
      {"in_proj", "in_proj.weight"},
      {"in_proj.weight", "in_proj.weight"},
      {"in_proj.bias", "in_proj.bias"},
      {"gated_norm", "norm.weight"},
      {"out_proj", "out_proj.weight"},
      {"out_proj.weight", "out_proj.weight"},
      {"out_proj.bias", "out_proj.bias"},
  };
  return table;
}

// Jamba's Mamba mixer only (ModelConfig::mamba_inner_norms): the RMSNorm gains on dt, B and C.
const std::map<std::string, std::string>& inner_norm_tensors() {
  static const std::map<std::string, std::string> table = {
      {"dt_layernorm", "dt_layernorm.weight"},
      {"b_layernorm", "b_layernorm.weight"},
      {"c_layernorm", "c_layernorm.weight"},
  };
  return table;
}

// Layer i's HF tensor for a layer-relative config name, or "" when the name is unknown.
std::string layer_tensor(const ModelConfig& cfg, const std::string& name, std::int64_t i) {
  if (name == "norm") return mixer_norm_name(cfg, i);
  if (cfg.is_mamba2()) {
    const auto it = mamba2_mixer_tensors().find(name);
    return it == mamba2_mixer_tensors().end() ? "" : mixer_module(cfg, i) + "." + it->second;
  }
  if (const auto it = mixer_tensors().find(name); it != mixer_tensors().end())
    return mixer_module(cfg, i) + "." + it->second;
  if (const auto it = inner_norm_tensors().find(name);
      cfg.mamba_inner_norms && it != inner_norm_tensors().end())
    return mixer_module(cfg, i) + "." + it->second;
  return "";
}

std::string valid_names_text(const ModelConfig& cfg) {
  std::string s = "norm";
  for (const auto& [name, hf] : cfg.is_mamba2() ? mamba2_mixer_tensors() : mixer_tensors())
    s += ", " + name;
  if (cfg.mamba_inner_norms)
    for (const auto& [name, hf] : inner_norm_tensors()) s += ", " + name;
  return s + " (optionally prefixed by layers.I. or layers.I-J.), embeddings, norm_f, lm_head";
}

// The HF tensors a layer-relative name asks for in layers [first, last]: those of the Mamba
// layers among them (partial tuning acts on Mamba mixers; Jamba's attention layers have none of
// these tensors). A range without a Mamba layer is an error naming its modules.
std::vector<std::string> mamba_layer_tensors(const ModelConfig& cfg, const std::string& name,
                                             std::int64_t first, std::int64_t last,
                                             const std::string& field, const std::string& pattern) {
  std::vector<std::string> out;
  std::string others;
  for (std::int64_t i = first; i <= last; ++i) {
    if (layer_kind(cfg, i).mixer != MixerKind::Attention)
      out.push_back(layer_tensor(cfg, name, i));
    else
      others += (others.empty() ? "" : ", ") + mixer_module(cfg, i);
  }
  if (out.empty()) {
    std::string mamba;
    for (const std::int64_t i : mamba_layers(cfg))
      mamba += (mamba.empty() ? "" : ", ") + std::to_string(i);
    throw UsageError(field + ": " + quote_str(pattern) + ": " + others +
                     (first == last ? " is an attention layer" : " are attention layers") +
                     ", without " + name + "; partial tuning and BitFit act on the Mamba layers (" +
                     (mamba.empty() ? "this model has none" : mamba) + ")");
  }
  return out;
}

}  // namespace

std::vector<TunedTensor> plan_partial_entries(const ModelConfig& cfg, const PartialConfig* partial,
                                              bool bitfit) {
  struct Wanted {
    std::string pattern, field;
    TuneMode mode;
  };
  std::vector<Wanted> wanted;
  const TuneMode mode = partial && partial->mode == "delta" ? TuneMode::Delta : TuneMode::Direct;
  if (partial)
    for (const std::string& t : partial->tensors)
      wanted.push_back({t, "peft.partial.tensors", mode});
  // BitFit's biases (docs/methods.md): the conv's and dt's (Mamba-2's dt_bias is dt_proj's
  // bias moved into the mixer).
  if (bitfit)
    for (const char* t : {"conv1d.bias", cfg.is_mamba2() ? "dt_bias" : "dt_proj.bias"})
      wanted.push_back({t, "peft.bitfit", mode});

  std::vector<TunedTensor> out;
  std::map<std::string, std::string> owner;  // HF name -> the pattern that asked for it
  for (const Wanted& w : wanted) {
    std::vector<std::string> hf_names;
    if (w.pattern == "embeddings") {
      hf_names.push_back(embedding_name(cfg));
    } else if (w.pattern == "norm_f") {
      hf_names.push_back(norm_f_name(cfg));
    } else if (w.pattern == "lm_head") {
      hf_names.push_back("lm_head.weight");
    } else {
      std::string name = w.pattern;
      std::int64_t first = 0, last = cfg.n_layer - 1;
      take_layer_range(name, cfg.n_layer, first, last, w.field, w.pattern);
      if (layer_tensor(cfg, name, 0).empty())  // (the name alone decides)
        throw UsageError(w.field + ": unknown tensor " + quote_str(w.pattern) +
                         "; valid: " + valid_names_text(cfg));
      hf_names = mamba_layer_tensors(cfg, name, first, last, w.field, w.pattern);
    }
    for (const std::string& hf : hf_names) {
      const auto [at, fresh] = owner.emplace(hf, w.pattern);
      if (!fresh)
        throw UsageError(w.field + ": " + hf + " is asked for twice (by " + quote_str(at->second) +
                         " and " + quote_str(w.pattern) + ")");
      TunedTensor e;
      e.name = "partial." + hf;
      e.tensor = hf;
      e.mode = w.mode;
      if (partial) {
        if (auto m = partial->lr_multipliers.find(w.pattern); m != partial->lr_multipliers.end())
          e.lr_multiplier = m->second;
        if (auto m = partial->weight_decay_multipliers.find(w.pattern);
            m != partial->weight_decay_multipliers.end())
          e.weight_decay_multiplier = m->second;
      }
      out.push_back(std::move(e));
    }
  }
  if (partial) {
    for (const auto* mults : {&partial->lr_multipliers, &partial->weight_decay_multipliers})
      for (const auto& [pattern, value] : *mults)
        if (std::find(partial->tensors.begin(), partial->tensors.end(), pattern) ==
            partial->tensors.end())
          throw UsageError(
              std::string("peft.partial.") +
              (mults == &partial->lr_multipliers ? "lr_multipliers" : "weight_decay_multipliers") +
              ": " + quote_str(pattern) + " is not one of peft.partial.tensors");
  }
  return out;
}

}  // namespace ssmtune
