#include "model/model_weights.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <set>

#include "core/error.h"
#include "io/finite_tensors.h"
#include "io/json_file.h"
#include "io/safetensors_checkpoint.h"
#include "model/attention_layer.h"
#include "model/feed_forward.h"
#include "model/mamba2_mixer.h"
#include "model/mamba_mixer.h"

namespace ssmtune {

namespace {

constexpr const char* kEmbeddingMambaSsm = "backbone.embedding.weight";  // mamba_ssm's name
constexpr const char* kLmHead = "lm_head.weight";

// "backbone.layers." / "model.layers.": what every layer tensor's name starts with.
std::string layers_prefix(const ModelConfig& c) {
  return c.is_jamba() ? "model.layers." : "backbone.layers.";
}

}  // namespace

std::string embedding_name(const ModelConfig& c) {
  return c.is_jamba() ? "model.embed_tokens.weight" : "backbone.embeddings.weight";
}

std::string embedding_module(const ModelConfig& c) {
  return c.is_jamba() ? "model.embed_tokens" : "backbone.embeddings";
}

std::string norm_f_name(const ModelConfig& c) {
  return c.is_jamba() ? "model.final_layernorm.weight" : "backbone.norm_f.weight";
}

std::string mixer_norm_name(const ModelConfig& c, std::int64_t i) {
  return layer_module(c, i) + (c.is_jamba() ? ".input_layernorm.weight" : ".norm.weight");
}

std::string layer_module(const ModelConfig& c, std::int64_t i) {
  return layers_prefix(c) + std::to_string(i);
}

std::string mixer_module(const ModelConfig& c, std::int64_t i) {
  if (!c.is_jamba()) return layer_module(c, i) + ".mixer";
  return layer_module(c, i) +
         (layer_kind(c, i).mixer == MixerKind::Attention ? ".self_attn" : ".mamba");
}

std::string ffn_module(const ModelConfig& c, std::int64_t i) {
  return layer_module(c, i) + ".feed_forward";
}

std::vector<ParamSlot> param_slots(const ModelConfig& c, ModelWeights& w) {
  if (w.layers.size() != std::size_t(c.n_layer))
    throw Error("model weights hold " + std::to_string(w.layers.size()) + " layers, the config " +
                std::to_string(c.n_layer));
  const std::int64_t D = c.d_model, V = c.vocab_size;
  std::vector<ParamSlot> slots;
  slots.push_back({embedding_name(c), &w.embedding, {V, D}});
  for (std::int64_t i = 0; i < c.n_layer; ++i) {
    LayerWeights& l = w.layers[std::size_t(i)];
    const LayerKind kind = layer_kind(c, i);
    const std::string layer = layer_module(c, i);
    // Mamba registers the norm first; Jamba's decoder layers the mixer and the feed-forward
    // first, then input_layernorm and pre_ff_layernorm.
    if (!c.is_jamba()) slots.push_back({mixer_norm_name(c, i), &l.norm, {D}});
    switch (kind.mixer) {
      case MixerKind::Mamba: append_mamba_mixer_slots(c, mixer_module(c, i), l.mamba, slots); break;
      case MixerKind::Attention: append_attention_slots(c, mixer_module(c, i), l.attn, slots); break;
      case MixerKind::Mamba2:
        append_mamba2_mixer_slots(c, mixer_module(c, i), l.mamba2, slots);
        break;
    }
    switch (kind.ffn) {
      case FeedForwardKind::None: break;
      case FeedForwardKind::Mlp: append_mlp_slots(c, ffn_module(c, i), l.mlp, slots); break;
      case FeedForwardKind::MoE: append_moe_slots(c, ffn_module(c, i), l.moe, slots); break;
    }
    if (c.is_jamba()) {
      slots.push_back({mixer_norm_name(c, i), &l.norm, {D}});
      slots.push_back({layer + ".pre_ff_layernorm.weight", &l.ffn_norm, {D}});
    }
  }
  slots.push_back({norm_f_name(c), &w.norm_f, {D}});
  slots.push_back({kLmHead, &w.lm_head, {V, D}, c.tie_word_embeddings ? "it is tied" : nullptr});
  return slots;
}

namespace {

bool is_float(DType t) {
  return t == DType::F32 || t == DType::F64 || t == DType::F16 || t == DType::BF16;
}

// "backbone.layers.7.mixer.D" -> 7; -1 when the name is not a layer tensor.
std::int64_t layer_index(const std::string& name, const std::string& prefix) {
  if (name.rfind(prefix, 0) != 0) return -1;
  std::int64_t i = 0;
  std::size_t pos = prefix.size();
  if (pos >= name.size() || !std::isdigit(static_cast<unsigned char>(name[pos]))) return -1;
  for (; pos < name.size() && std::isdigit(static_cast<unsigned char>(name[pos])) && i < 1'000'000;
       ++pos)
    i = i * 10 + (name[pos] - '0');
  return i;
}

// Collects every problem so one run reports them together; the error names the first few.
class Problems {
 public:
  void add(std::string message) { list_.push_back(std::move(message)); }
  void throw_if_any() const {
    if (list_.empty()) return;
    std::string msg = list_[0];
    for (std::size_t i = 1; i < list_.size() && i < 3; ++i) msg += "; " + list_[i];
    if (list_.size() > 3)
      msg += "; and " + std::to_string(list_.size() - 3) +
             (list_.size() == 4 ? " more problem" : " more problems");
    throw Error(msg);
  }

 private:
  std::vector<std::string> list_;
};

}  // namespace

void for_each_param(const ModelConfig& c, ModelWeights& w,
                    const std::function<void(const std::string& name, Tensor& t)>& fn) {
  for (ParamSlot& s : param_slots(c, w))
    if (!s.absent_because && s.tensor->defined()) fn(s.name, *s.tensor);
}

Shape expected_param_shape(const ModelConfig& c, const std::string& name) {
  ModelWeights w;
  w.layers.resize(std::size_t(c.n_layer));
  const std::string wanted =
      name == kEmbeddingMambaSsm && !c.is_jamba() ? embedding_name(c) : name;
  for (const ParamSlot& s : param_slots(c, w)) {
    if (s.name != wanted) continue;
    // A tied lm_head is still a (V, D) parameter, only not stored on its own.
    if (s.absent_because && wanted != kLmHead)
      throw Error("tensor " + quote_str(name) + " is not a parameter of this " +
                  c.family_name() + " config (" + s.absent_because + ")");
    return s.shape;
  }
  throw Error("tensor " + quote_str(name) + " is not a parameter of a " +
              c.family_name() + " model with " + std::to_string(c.n_layer) + " layers");
}

ModelWeights zeros_like_params(const ModelConfig& c, DType dtype) {
  ModelWeights w;
  w.layers.resize(std::size_t(c.n_layer));
  for (ParamSlot& s : param_slots(c, w))
    if (!s.absent_because) *s.tensor = Tensor::zeros(s.shape, dtype);
  if (c.tie_word_embeddings) w.lm_head = w.embedding;
  return w;
}

ModelWeights load_model_weights(const std::string& model_dir, const ModelConfig& c, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::F64 && dtype != DType::BF16)
    throw Error("load_model_weights: weights load as F32, F64 or BF16, not " +
                std::string(dtype_name(dtype)));
  const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(model_dir);
  ModelWeights w;
  w.layers.resize(std::size_t(c.n_layer));
  std::vector<ParamSlot> slots = param_slots(c, w);

  // A Mamba embedding may carry mamba_ssm's name (docs/models.md "Mamba config").
  std::string embedding = embedding_name(c);
  Problems problems;
  if (!c.is_jamba() && ckpt.contains(kEmbeddingMambaSsm)) {
    if (ckpt.contains(embedding))
      problems.add(model_dir + ": both " + quote_str(embedding) + " and " +
                   quote_str(kEmbeddingMambaSsm) + " are stored; expected one embedding");
    else
      embedding = kEmbeddingMambaSsm;
  }
  // The config key that asks for an optional tensor, for "missing" messages.
  const char* conv_bias_key = c.is_jamba() ? "mamba_conv_bias" : "use_conv_bias";
  const char* proj_bias_key = c.is_jamba() ? "mamba_proj_bias" : "use_bias";

  // A sharded checkpoint's tensors are listed in its index: a missing one is missing there.
  const std::string missing_where =
      ckpt.sharded() ? (ckpt.dir() / "model.safetensors.index.json").string() : model_dir;
  // Pass 1, names and shapes only: every problem is found before any data is read.
  std::set<std::string> used;
  std::vector<std::pair<ParamSlot*, std::string>> to_load;  // slot, stored name
  for (ParamSlot& s : slots) {
    const std::string stored = s.tensor == &w.embedding ? embedding : s.name;
    const bool has = ckpt.contains(stored);
    if (has) used.insert(stored);
    if (s.tensor == &w.lm_head && c.tie_word_embeddings) {
      if (has) to_load.push_back({&s, stored});  // allowed if equal to the embedding (below)
    } else if (s.absent_because) {
      if (has)
        problems.add(ckpt.file_of(stored).path().string() + ": tensor " + quote_str(stored) +
                     " is stored, but config.json says " + s.absent_because);
      continue;
    } else if (!has) {
      std::string why;
      if (s.tensor == &w.lm_head) why = " (tie_word_embeddings is false)";
      if (s.name.ends_with("conv1d.bias")) why = std::string(" (") + conv_bias_key + " is true)";
      if (s.name.ends_with("in_proj.bias") || s.name.ends_with("out_proj.bias"))
        why = std::string(" (") + proj_bias_key + " is true)";
      problems.add(missing_where + ": missing tensor " + quote_str(stored) + ", expected shape " +
                   shape_str(s.shape) + why);
      continue;
    } else {
      to_load.push_back({&s, stored});
    }
    if (!has) continue;
    const SafetensorsEntry& e = ckpt.entry(stored);
    const std::string where =
        ckpt.file_of(stored).path().string() + ": tensor " + quote_str(stored);
    if (e.shape != s.shape)
      problems.add(where + ": expected shape " + shape_str(s.shape) + ", found " +
                   shape_str(e.shape));
    else if (!is_float(e.dtype))
      problems.add(where + ": expected F32, F16, BF16 or F64, found " +
                   std::string(dtype_name(e.dtype)));
  }
  for (const std::string& name : ckpt.names()) {
    if (used.count(name)) continue;
    const std::int64_t layer = layer_index(name, layers_prefix(c));
    problems.add(ckpt.file_of(name).path().string() + ": unexpected tensor " + quote_str(name) +
                 (layer >= c.n_layer
                      ? " (config.json has num_hidden_layers = " + std::to_string(c.n_layer) + ")"
                      : ""));
  }
  problems.throw_if_any();

  // Pass 2: read and convert. A view of the file is kept when no conversion is needed.
  for (auto& [slot, stored] : to_load) {
    Tensor t = ckpt.tensor(stored);
    const bool converted = t.dtype() != dtype;
    if (converted) t = t.to(dtype);  // to BF16: rounded to nearest even (core/dtype.h)
    // Cheap insurance before fine-tuning (docs/models.md "safetensors"): a NaN in a base weight
    // poisons every step. A float beyond bf16's range (3.4e38) becomes Inf rounded to bf16.
    const std::int64_t bad = first_non_finite(t);
    if (bad >= 0)
      throw Error(ckpt.file_of(stored).path().string() + ": tensor " + quote_str(stored) +
                  " holds a non-finite value (NaN or Inf) at element " + std::to_string(bad) +
                  (converted ? " once converted to " + std::string(dtype_name(dtype)) : ""));
    *slot->tensor = t;
  }
  if (c.tie_word_embeddings) {
    // Stored while tied: transformers would ignore it; it must be the embedding, or the
    // checkpoint is not the model its config says.
    if (w.lm_head.defined() &&
        std::memcmp(w.lm_head.raw(), w.embedding.raw(), w.embedding.nbytes()) != 0)
      throw Error(ckpt.file_of(kLmHead).path().string() +
                  ": tensor \"lm_head.weight\" differs from " + quote_str(embedding) +
                  ", but config.json sets tie_word_embeddings = true");
    w.lm_head = w.embedding;
  }
  return w;
}

}  // namespace ssmtune
