#include "peft/partial.h"

#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"
#include "io/json_file.h"
#include "peft/target_names.h"

namespace ssmtune {

namespace {

// Layer-relative config names -> the HF tensor after "backbone.layers.I.".
const std::map<std::string, std::string>& layer_tensors() {
  static const std::map<std::string, std::string> table = {
      {"norm", "norm.weight"},
      {"A_log", "mixer.A_log"},
      {"D", "mixer.D"},
      {"conv1d", "mixer.conv1d.weight"},
      {"conv1d.weight", "mixer.conv1d.weight"},
      {"conv1d.bias", "mixer.conv1d.bias"},
      {"in_proj", "mixer.in_proj.weight"},
      {"in_proj.weight", "mixer.in_proj.weight"},
      {"in_proj.bias", "mixer.in_proj.bias"},
      {"x_proj", "mixer.x_proj.weight"},
      {"x_proj.weight", "mixer.x_proj.weight"},
      {"dt_proj", "mixer.dt_proj.weight"},
      {"dt_proj.weight", "mixer.dt_proj.weight"},
      {"dt_proj.bias", "mixer.dt_proj.bias"},
      {"out_proj", "mixer.out_proj.weight"},
      {"out_proj.weight", "mixer.out_proj.weight"},
      {"out_proj.bias", "mixer.out_proj.bias"},
  };
  return table;
}

const std::map<std::string, std::string>& model_tensors() {
  static const std::map<std::string, std::string> table = {
      {"embeddings", "backbone.embeddings.weight"},
      {"norm_f", "backbone.norm_f.weight"},
      {"lm_head", "lm_head.weight"},
  };
  return table;
}

std::string valid_names_text() {
  std::string s;
  for (const auto& [name, hf] : layer_tensors()) s += (s.empty() ? "" : ", ") + name;
  return s + " (optionally prefixed by layers.I. or layers.I-J.), embeddings, norm_f, lm_head";
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
  if (bitfit)
    for (const char* t : {"conv1d.bias", "dt_proj.bias"})
      wanted.push_back({t, "peft.bitfit", mode});

  std::vector<TunedTensor> out;
  std::map<std::string, std::string> owner;  // HF name -> the pattern that asked for it
  for (const Wanted& w : wanted) {
    std::vector<std::string> hf_names;
    if (model_tensors().count(w.pattern)) {
      hf_names.push_back(model_tensors().at(w.pattern));
    } else {
      std::string name = w.pattern;
      std::int64_t first = 0, last = cfg.n_layer - 1;
      take_layer_range(name, cfg.n_layer, first, last, w.field, w.pattern);
      const auto it = layer_tensors().find(name);
      if (it == layer_tensors().end())
        throw UsageError(w.field + ": unknown tensor " + quote_str(w.pattern) +
                         "; valid: " + valid_names_text());
      for (std::int64_t i = first; i <= last; ++i)
        hf_names.push_back("backbone.layers." + std::to_string(i) + "." + it->second);
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
