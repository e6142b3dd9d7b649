#include "peft/param_tuning.h"

#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/json_fields.h"
#include "io/json_file.h"
#include "io/finite_tensors.h"
#include "io/safetensors.h"
#include "model/weight_storage.h"

namespace ssmtune {

namespace {

// The Mamba mixer's optional biases (Mamba's "mixer.", Jamba's "mamba." module): only Mamba
// mixers have tensors of these names.
bool is_creatable_bias(const std::string& name) {
  return name.ends_with(".conv1d.bias") || name.ends_with(".in_proj.bias") ||
         name.ends_with(".out_proj.bias");
}

// The slot named `name` in `w` (laid out for cfg), or null.
ParamSlot* find_slot(std::vector<ParamSlot>& slots, const std::string& name) {
  for (ParamSlot& s : slots)
    if (s.name == name) return &s;
  return nullptr;
}

// The first position of `index` (k, I64) that is outside [0, numel) or not above the one
// before it, or -1 when it is strictly ascending within range.
std::int64_t bad_index_position(const Tensor& index, std::int64_t numel) {
  const std::int64_t* idx = index.data<std::int64_t>();
  for (std::int64_t i = 0; i < index.numel(); ++i)
    if (idx[i] < 0 || idx[i] >= numel || (i > 0 && idx[i] <= idx[i - 1])) return i;
  return -1;
}

ModelWeights empty_layers(const ModelConfig& cfg) {
  ModelWeights w;
  w.layers.resize(std::size_t(cfg.n_layer));
  return w;
}

}  // namespace

const char* tune_mode_name(TuneMode mode) {
  switch (mode) {
    case TuneMode::Direct: return "direct";
    case TuneMode::Delta: return "delta";
    case TuneMode::Masked: return "masked";
  }
  return "?";
}

ParamTuning::ParamTuning(const ModelConfig& cfg, ModelWeights& base,
                         std::vector<TunedTensor> entries, Backend& be)
    : be_(be), entries_(std::move(entries)), eff_(base), grads_(empty_layers(cfg)) {
  const DType dtype = compute_dtype(base);  // frozen base tensors may be held in bf16
  std::vector<ParamSlot> base_slots = param_slots(cfg, base);
  std::vector<ParamSlot> eff_slots = param_slots(cfg, eff_);
  std::vector<ParamSlot> grad_slots = param_slots(cfg, grads_);
  std::set<std::string> names;
  // Per tensor, which elements some delta/masked entry already covers (for the overlap check).
  std::map<std::string, std::vector<char>> covered;
  for (TunedTensor& e : entries_) {
    if (!names.insert(e.name).second) throw UsageError("parameter tuning: " + e.name + " twice");
    ParamSlot* b = find_slot(base_slots, e.tensor);
    if (!b) throw UsageError(e.name + ": " + quote_str(e.tensor) + " is not a tensor of the model");
    if (e.tensor == "lm_head.weight" && cfg.tie_word_embeddings)
      throw UsageError(e.name + ": lm_head is tied to the embedding; tune \"embeddings\" instead");
    const bool absent = b->absent_because || !b->tensor->defined();
    if (absent && !is_creatable_bias(e.tensor))
      throw UsageError(e.name + ": the model has no " + e.tensor +
                       (b->absent_because ? std::string(" (") + b->absent_because + ")" : ""));
    const std::int64_t numel = shape_numel(b->shape);
    if (e.mode == TuneMode::Masked) {
      if (!e.index.defined() || e.index.dtype() != DType::I64 || e.index.ndim() != 1 ||
          e.index.numel() < 1)
        throw UsageError(e.name + ": a masked entry needs a non-empty (k) I64 index");
      if (const std::int64_t i = bad_index_position(e.index, numel); i >= 0)
        throw UsageError(e.name + ": index " + std::to_string(i) + " = " +
                         std::to_string(e.index.data<std::int64_t>()[i]) +
                         ": expected strictly ascending values in [0, " + std::to_string(numel) +
                         ")");
    }
    if (e.mode != TuneMode::Direct) {
      std::vector<char>& cov = covered[e.tensor];
      cov.resize(std::size_t(numel), 0);
      const std::int64_t k = e.mode == TuneMode::Masked ? e.index.numel() : numel;
      for (std::int64_t i = 0; i < k; ++i) {
        const std::int64_t at = e.mode == TuneMode::Masked ? e.index.data<std::int64_t>()[i] : i;
        if (cov[std::size_t(at)])
          throw UsageError(e.name + ": element " + std::to_string(at) + " of " + e.tensor +
                           " is already tuned by another delta; two deltas on the same entries "
                           "are not allowed (docs/methods.md section 8)");
        cov[std::size_t(at)] = 1;
      }
    }
    Target& t = targets_[e.tensor];
    t.created = absent;
    t.own_copy = t.own_copy || absent || e.mode != TuneMode::Direct;
  }
  std::set<std::string> tuned;  // trained or merged into: held in the compute dtype, not bf16
  for (const auto& [name, t] : targets_) tuned.insert(name);
  hold_params_in(cfg, base, tuned, dtype, be_);
  for (auto& [name, t] : targets_) {
    const ParamSlot* b = find_slot(base_slots, name);
    if (!t.created) t.base = *b->tensor;
    t.eff = t.own_copy ? be_.zeros(b->shape, dtype) : t.base;
    t.grad = be_.zeros(b->shape, dtype);
    *find_slot(eff_slots, name)->tensor = t.eff;
    *find_slot(grad_slots, name)->tensor = t.grad;
  }
  if (cfg.tie_word_embeddings) {
    eff_.lm_head = eff_.embedding;
    grads_.lm_head = grads_.embedding;
  }
  for (TunedTensor& e : entries_) {
    const Target& t = targets_.at(e.tensor);
    if (e.mode == TuneMode::Masked) {
      e.value = be_.zeros({e.index.numel()}, dtype);
      e.grad = be_.zeros({e.index.numel()}, dtype);
    } else if (e.mode == TuneMode::Delta || t.created) {
      e.value = be_.zeros(t.grad.shape(), dtype);
      e.grad = t.grad;  // dL/d delta = dL/d W_eff
    } else {
      e.value = t.base;
      e.grad = t.grad;
    }
  }
  sync();
}

void ParamTuning::sync() {
  for (auto& [name, t] : targets_) {
    if (!t.own_copy) continue;
    if (t.created)
      t.eff.fill_zero();
    else
      be_.copy(t.base, t.eff);
  }
  for (const TunedTensor& e : entries_) {
    Target& t = targets_.at(e.tensor);
    if (!t.own_copy) continue;  // direct on the model's own tensor: nothing to add
    if (e.mode == TuneMode::Masked) {
      Tensor flat = t.eff.reshape({t.eff.numel()});
      be_.index_add(e.value, e.index, flat);
    } else if (e.mode == TuneMode::Delta || t.created) {
      be_.add(e.value, t.eff);
    }
    // (a direct entry beside a delta on the same tensor trains W itself: the copy has it)
  }
}

void ParamTuning::gather_grads() {
  for (TunedTensor& e : entries_) {
    if (e.mode != TuneMode::Masked) continue;
    const Tensor& dense = targets_.at(e.tensor).grad;
    be_.index_gather(dense.reshape({dense.numel()}), e.index, e.grad);
  }
}

void ParamTuning::zero_grads() {
  for (auto& [name, t] : targets_) t.grad.fill_zero();
  for (TunedTensor& e : entries_) e.grad.fill_zero();
}

void ParamTuning::append_trainables(std::vector<TrainableParam>& out) {
  for (TunedTensor& e : entries_)
    out.push_back({e.name, e.value, e.grad, e.lr_multiplier, e.weight_decay_multiplier});
}

void ParamTuning::merge_into(ModelConfig& cfg, ModelWeights& w) const {
  // Found by name in the target's own layout, whatever its config says about biases.
  std::vector<ParamSlot> dst_slots = param_slots(cfg, w);
  for (const auto& [name, t] : targets_) *find_slot(dst_slots, name)->tensor = t.eff.clone();
  if (cfg.is_mamba2()) {  // the same for Mamba-2's mixers, every layer one
    for (const LayerWeights& l : w.layers) {
      if (l.mamba2.conv1d_bias.defined()) cfg.use_conv_bias = true;
      if (l.mamba2.in_proj_bias.defined() || l.mamba2.out_proj_bias.defined()) cfg.use_bias = true;
    }
    for (LayerWeights& l : w.layers) {
      Mamba2MixerWeights& m = l.mamba2;
      if (cfg.use_bias && !m.in_proj_bias.defined())
        m.in_proj_bias = Tensor::zeros({m.in_proj.dim(0)}, DType::F32);
      if (cfg.use_bias && !m.out_proj_bias.defined())
        m.out_proj_bias = Tensor::zeros({cfg.d_model}, DType::F32);
      if (cfg.use_conv_bias && !m.conv1d_bias.defined())
        m.conv1d_bias = Tensor::zeros({cfg.conv_dim()}, DType::F32);
    }
  }
  // The config's bias flags hold for every Mamba mixer (Jamba's attention layers have none).
  const std::vector<std::int64_t> mamba = mamba_layers(cfg);
  for (const std::int64_t i : mamba) {
    const MambaMixerWeights& l = w.layers[std::size_t(i)].mamba;
    if (l.conv1d_bias.defined()) cfg.use_conv_bias = true;
    if (l.in_proj_bias.defined() || l.out_proj_bias.defined()) cfg.use_bias = true;
  }
  for (const std::int64_t i : mamba) {
    MambaMixerWeights& l = w.layers[std::size_t(i)].mamba;
    if (cfg.use_bias && !l.in_proj_bias.defined())
      l.in_proj_bias = Tensor::zeros({2 * cfg.d_inner}, DType::F32);
    if (cfg.use_bias && !l.out_proj_bias.defined())
      l.out_proj_bias = Tensor::zeros({cfg.d_model}, DType::F32);
    if (cfg.use_conv_bias && !l.conv1d_bias.defined())
      l.conv1d_bias = Tensor::zeros({cfg.d_inner}, DType::F32);
  }
  if (cfg.tie_word_embeddings) w.lm_head = w.embedding;
}

void write_param_tuning(const std::filesystem::path& dir, const ParamTuning& pt,
                        const std::string& extra_json,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<NamedTensor> tensors;
  nlohmann::json list = nlohmann::json::array();
  for (const TunedTensor& e : pt.entries()) {
    tensors.push_back({e.name, e.value});
    if (e.mode == TuneMode::Masked) tensors.push_back({e.name + ".index", e.index});
    list.push_back({{"name", e.name}, {"tensor", e.tensor}, {"mode", tune_mode_name(e.mode)}});
  }
  nlohmann::json meta_json = nlohmann::json::parse(extra_json);
  meta_json["entries"] = list;
  std::map<std::string, std::string> meta = metadata;
  meta["ssmtune.param_tuning"] = meta_json.dump();
  write_safetensors(dir / kParamTuningFile, tensors, meta);
}

std::optional<SavedParamTuning> read_param_tuning(const std::filesystem::path& dir,
                                                  const ModelConfig& cfg, DType dtype) {
  const std::filesystem::path path = dir / kParamTuningFile;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  const std::string file = path.string();
  const SafetensorsFile st = SafetensorsFile::open(path);
  check_finite_tensors(st);
  const auto it = st.metadata().find("ssmtune.param_tuning");
  if (it == st.metadata().end())
    throw Error(file + ": metadata \"ssmtune.param_tuning\" is missing");
  nlohmann::json meta = parse_json_text(it->second, file + ": metadata ssmtune.param_tuning");
  if (!meta.is_object() || !meta.contains("entries") || !meta["entries"].is_array())
    throw Error(file +
                ": metadata ssmtune.param_tuning: expected an object with an "
                "\"entries\" array");
  SavedParamTuning out;
  std::set<std::string> expected;
  ModelWeights layout = empty_layers(cfg);
  std::vector<ParamSlot> slots = param_slots(cfg, layout);
  const nlohmann::json& list = meta["entries"];
  for (std::size_t i = 0; i < list.size(); ++i) {
    const JsonFields f(list[i],
                       file + ": metadata ssmtune.param_tuning.entries[" + std::to_string(i) + "]");
    TunedTensor e;
    e.name = f.get_string("name").value_or("");
    e.tensor = f.get_string("tensor").value_or("");
    const std::string mode = f.get_choice("mode", {"direct", "delta", "masked"}).value_or("");
    if (e.name.empty() || e.tensor.empty() || mode.empty())
      throw Error(f.where("name") + ": expected \"name\", \"tensor\" and \"mode\"");
    e.mode = mode == "direct"  ? TuneMode::Direct
             : mode == "delta" ? TuneMode::Delta
                               : TuneMode::Masked;
    const ParamSlot* slot = find_slot(slots, e.tensor);
    if (!slot)
      throw Error(file + ": entry " + e.name + " acts on " + quote_str(e.tensor) +
                  ", which this model does not have");
    if (!expected.insert(e.name).second) throw Error(file + ": entry " + e.name + " twice");
    if (!st.contains(e.name)) throw Error(file + ": missing tensor " + e.name);
    const Tensor value = st.tensor(e.name);
    Shape want = slot->shape;
    if (e.mode == TuneMode::Masked) {
      const std::string index_name = e.name + ".index";
      expected.insert(index_name);
      if (!st.contains(index_name)) throw Error(file + ": missing tensor " + index_name);
      const Tensor index = st.tensor(index_name);
      if (index.dtype() != DType::I64 || index.ndim() != 1)
        throw Error(file + ": tensor " + index_name + ": expected a (k) I64 index");
      const std::int64_t numel = shape_numel(slot->shape);
      if (const std::int64_t j = bad_index_position(index, numel); j >= 0)
        throw Error(file + ": tensor " + index_name + ": element " + std::to_string(j) + " = " +
                    std::to_string(index.data<std::int64_t>()[j]) +
                    ": expected strictly ascending indices in [0, " + std::to_string(numel) + ")");
      e.index = index.clone();
      want = {index.numel()};
    }
    if (value.shape() != want)
      throw Error(file + ": tensor " + e.name + ": expected shape " + shape_str(want) + ", got " +
                  shape_str(value.shape()));
    e.value = value.to(dtype);
    out.entries.push_back(std::move(e));
  }
  for (const SafetensorsEntry& e : st.entries())
    if (!expected.count(e.name))
      throw Error(file + ": unexpected tensor " + quote_str(e.name) +
                  " (not listed in its metadata's entries)");
  meta.erase("entries");
  out.extra_json = meta.dump();
  return out;
}

}  // namespace ssmtune
