#include "model/model_config.h"

#include <cmath>
#include <filesystem>
#include <optional>
#include <tuple>
#include <utility>

#include "core/error.h"
#include "io/json_fields.h"
#include "io/json_file.h"

namespace ssmtune {

namespace {

// Upper bounds far above any real Mamba (2.8b: D 2560, 64 layers, V 50280) that stop a
// hostile config from asking for absurd allocations before a weight file is even opened.
constexpr std::int64_t kMaxVocab = 10'000'000;
constexpr std::int64_t kMaxDModel = 65536;
constexpr std::int64_t kMaxDInner = 4 * kMaxDModel;
constexpr std::int64_t kMaxLayers = 1024;
constexpr std::int64_t kMaxDState = 1024;
constexpr std::int64_t kMaxDConv = 16;
constexpr std::int64_t kMaxDtRank = kMaxDModel;
constexpr double kMaxExpand = 64;
constexpr std::int64_t kMaxHeads = 4096;
constexpr std::int64_t kMaxExperts = 1024;  // the routing kernels' limit (docs/cuda.md)

// HF name first, then its mamba_ssm alias; when a file has both (the -hf configs do) they
// must agree, else the file means two models.
std::optional<std::int64_t> get_aliased_int(const JsonFields& f, const std::string& name,
                                            const std::string& alias, std::int64_t min,
                                            std::int64_t max) {
  const auto a = f.get_int(name, min, max);
  const auto b = f.get_int(alias, min, max);
  if (a && b && *a != *b)
    throw Error(f.where(name) + " = " + std::to_string(*a) + " disagrees with its alias \"" +
                alias + "\" = " + std::to_string(*b));
  return a ? a : b;
}

std::int64_t require(const std::optional<std::int64_t>& v, const JsonFields& f,
                     const std::string& name, const std::string& alias = "") {
  if (!v)
    throw Error(f.where(name) + (alias.empty() ? "" : " (or \"" + alias + "\")") +
                ": missing, a config.json must set it");
  return *v;
}

// time_step_rank / dt_rank: a positive integer or "auto" = ceil(d_model / 16) (HF ModelConfig).
std::optional<std::int64_t> get_dt_rank(const JsonFields& f, const std::string& key,
                                        std::int64_t d_model) {
  if (!f.has(key)) return std::nullopt;
  if (f.raw(key) == "auto") return (d_model + 15) / 16;
  if (!f.raw(key).is_number_integer()) f.fail(key, "a positive integer or \"auto\"");
  return f.get_int(key, 1, kMaxDtRank);
}

double positive_number(const JsonFields& f, const std::string& key, double fallback) {
  const double v = f.get_number(key).value_or(fallback);
  if (!(v > 0)) f.fail(key, "a positive number");
  return v;
}

// "expand" (default 2): positive and at most kMaxExpand, checked before any caller converts
// int(expand * width), since a double past int64's range has no conversion.
double get_expand(const JsonFields& f) {
  const double v = positive_number(f, "expand", 2);
  if (v > kMaxExpand) f.fail("expand", "a positive number no larger than 64");
  return v;
}

// A token id in [0, vocab) or null (unset, stored as -1).
std::int64_t get_token_id(const JsonFields& f, const std::string& key, std::int64_t vocab,
                          std::int64_t fallback) {
  if (f.has(key) && f.raw(key).is_null()) return -1;
  return f.get_int(key, 0, vocab - 1).value_or(fallback);
}

// The sizes a Jamba or Mamba-2 config.json must state, under their HF names only.
void read_required_sizes(const JsonFields& f, ModelConfig& c) {
  c.vocab_size = require(f.get_int("vocab_size", 1, kMaxVocab), f, "vocab_size");
  c.d_model = require(f.get_int("hidden_size", 1, kMaxDModel), f, "hidden_size");
  c.n_layer = require(f.get_int("num_hidden_layers", 1, kMaxLayers), f, "num_hidden_layers");
}

// transformers v5 writes "dtype" instead of "torch_dtype"; null means "not recorded".
void read_torch_dtype(const JsonFields& f, ModelConfig& c) {
  for (const char* key : {"torch_dtype", "dtype"})
    if (f.has(key) && !f.raw(key).is_null()) c.torch_dtype = *f.get_string(key);
}

// Reads what both layouts share once the sizes are known.
void read_common(const JsonFields& f, ModelConfig& c) {
  c.residual_in_fp32 = f.get_bool("residual_in_fp32").value_or(c.residual_in_fp32);
  c.pad_token_id = get_token_id(f, "pad_token_id", c.vocab_size, c.pad_token_id);
  c.bos_token_id = get_token_id(f, "bos_token_id", c.vocab_size, c.bos_token_id);
  c.eos_token_id = get_token_id(f, "eos_token_id", c.vocab_size, c.eos_token_id);
}

// transformers' MambaConfig (docs/models.md "Mamba config").
ModelConfig parse_hf(const JsonFields& f) {
  ModelConfig c;
  c.vocab_size = require(f.get_int("vocab_size", 1, kMaxVocab), f, "vocab_size");
  c.d_model = require(get_aliased_int(f, "hidden_size", "d_model", 1, kMaxDModel), f, "hidden_size",
                      "d_model");
  c.n_layer = require(get_aliased_int(f, "num_hidden_layers", "n_layer", 1, kMaxLayers), f,
                      "num_hidden_layers", "n_layer");
  c.d_state = get_aliased_int(f, "state_size", "d_state", 1, kMaxDState).value_or(16);
  c.d_conv = get_aliased_int(f, "conv_kernel", "d_conv", 1, kMaxDConv).value_or(4);
  c.expand = get_expand(f);
  // An explicit intermediate_size wins over int(expand * hidden_size) (docs/models.md "Mamba config").
  const auto d_inner = get_aliased_int(f, "intermediate_size", "d_inner", 1, kMaxDInner);
  c.d_inner = d_inner ? *d_inner : std::int64_t(c.expand * double(c.d_model));
  if (!d_inner && (c.d_inner < 1 || c.d_inner > kMaxDInner))
    f.fail("expand", "a value with int(expand * hidden_size) from 1 to 262144");
  const auto rank = get_dt_rank(f, "time_step_rank", c.d_model);
  const auto rank_alias = get_dt_rank(f, "dt_rank", c.d_model);
  if (rank && rank_alias && *rank != *rank_alias)
    throw Error(f.where("time_step_rank") + " = " + std::to_string(*rank) +
                " disagrees with its alias \"dt_rank\" = " + std::to_string(*rank_alias));
  c.dt_rank = rank ? *rank : rank_alias ? *rank_alias : (c.d_model + 15) / 16;

  c.use_bias = f.get_bool("use_bias").value_or(false);  // absent: mamba_ssm's bias=False
  c.use_conv_bias = f.get_bool("use_conv_bias").value_or(true);
  c.tie_word_embeddings = f.get_bool("tie_word_embeddings").value_or(true);
  c.layer_norm_epsilon = positive_number(f, "layer_norm_epsilon", 1e-5);
  c.hidden_act = f.get_choice("hidden_act", {"silu", "swish"}).value_or("silu");
  read_common(f, c);

  c.initializer_range = f.get_number("initializer_range").value_or(c.initializer_range);
  c.time_step_min = positive_number(f, "time_step_min", c.time_step_min);
  c.time_step_max = positive_number(f, "time_step_max", c.time_step_max);
  c.time_step_floor = positive_number(f, "time_step_floor", c.time_step_floor);
  c.time_step_scale = f.get_number("time_step_scale").value_or(c.time_step_scale);
  c.time_step_init_scheme =
      f.get_choice("time_step_init_scheme", {"random", "constant"}).value_or("random");
  c.rescale_prenorm_residual =
      f.get_bool("rescale_prenorm_residual").value_or(c.rescale_prenorm_residual);
  read_torch_dtype(f, c);
  return c;
}

// mamba_ssm's MambaConfig dataclass (docs/models.md "Mamba config"): sizes in the top level, mixer settings in
// ssm_cfg with Mamba.__init__'s defaults, vocab padded as MambaLMHeadModel does.
ModelConfig parse_original(const JsonFields& f, const std::string& file) {
  ModelConfig c;
  const std::int64_t vocab = require(f.get_int("vocab_size", 1, kMaxVocab), f, "vocab_size");
  const std::int64_t multiple = f.get_int("pad_vocab_size_multiple", 1, 1 << 20).value_or(8);
  c.vocab_size = (vocab + multiple - 1) / multiple * multiple;
  if (c.vocab_size > kMaxVocab)
    f.fail("vocab_size", "a vocabulary of at most 10000000 once padded");
  c.d_model = require(f.get_int("d_model", 1, kMaxDModel), f, "d_model");
  c.n_layer = require(f.get_int("n_layer", 1, kMaxLayers), f, "n_layer");
  // Parts of mamba_ssm that ssmtune does not implement: refuse rather than load wrong math.
  if (!f.get_bool("rms_norm").value_or(true))
    f.fail("rms_norm", "true (LayerNorm blocks are not supported)");
  if (f.has("d_intermediate") && f.raw("d_intermediate") != 0)
    f.fail("d_intermediate", "0 (MLP blocks are not supported)");
  if (f.has("attn_layer_idx") && f.raw("attn_layer_idx") != nlohmann::json::array())
    f.fail("attn_layer_idx", "an empty list (attention layers are not supported)");

  static const nlohmann::json kNoSsmCfg = nlohmann::json::object();
  const JsonFields ssm = f.get_object("ssm_cfg").value_or(JsonFields(kNoSsmCfg, file, "ssm_cfg."));
  ssm.get_choice("layer", {"Mamba1"});
  c.d_state = ssm.get_int("d_state", 1, kMaxDState).value_or(16);
  c.d_conv = ssm.get_int("d_conv", 1, kMaxDConv).value_or(4);
  c.expand = get_expand(ssm);
  c.d_inner = std::int64_t(c.expand * double(c.d_model));
  if (c.d_inner < 1 || c.d_inner > kMaxDInner)
    ssm.fail("expand", "a value with int(expand * d_model) from 1 to 262144");
  c.dt_rank = get_dt_rank(ssm, "dt_rank", c.d_model).value_or((c.d_model + 15) / 16);
  c.use_conv_bias = ssm.get_bool("conv_bias").value_or(true);
  c.use_bias = ssm.get_bool("bias").value_or(false);
  c.time_step_min = positive_number(ssm, "dt_min", c.time_step_min);
  c.time_step_max = positive_number(ssm, "dt_max", c.time_step_max);
  c.time_step_floor = positive_number(ssm, "dt_init_floor", c.time_step_floor);
  c.time_step_scale = ssm.get_number("dt_scale").value_or(c.time_step_scale);
  c.time_step_init_scheme = ssm.get_choice("dt_init", {"random", "constant"}).value_or("random");
  c.tie_word_embeddings = f.get_bool("tie_embeddings").value_or(true);
  read_common(f, c);
  return c;
}

// transformers' JambaConfig (docs/models.md "Jamba"): JambaConfig's defaults where a field is
// absent, except the sizes, which a config.json must state.
ModelConfig parse_jamba(const JsonFields& f) {
  ModelConfig c;
  c.model_type = "jamba";
  read_required_sizes(f, c);
  c.d_ffn = require(f.get_int("intermediate_size", 1, 16 * kMaxDModel), f, "intermediate_size");

  c.n_heads = f.get_int("num_attention_heads", 1, kMaxHeads).value_or(32);
  if (c.d_model % c.n_heads != 0)
    f.fail("num_attention_heads", "a divisor of hidden_size = " + std::to_string(c.d_model));
  // null: as many as the query heads (JambaConfig's backward compatibility)
  c.n_kv_heads = f.has("num_key_value_heads") && f.raw("num_key_value_heads").is_null()
                     ? c.n_heads
                     : f.get_int("num_key_value_heads", 1, kMaxHeads).value_or(8);
  if (c.n_heads % c.n_kv_heads != 0)
    f.fail("num_key_value_heads", "a divisor of num_attention_heads = " +
                                      std::to_string(c.n_heads));
  c.attn_layer_period = f.get_int("attn_layer_period", 1, kMaxLayers).value_or(8);
  c.attn_layer_offset = f.get_int("attn_layer_offset", 0, kMaxLayers).value_or(4);
  c.n_experts = f.get_int("num_experts", 1, kMaxExperts).value_or(16);
  c.experts_per_token = f.get_int("num_experts_per_tok", 1, kMaxExperts).value_or(2);
  if (c.n_experts > 1 && c.experts_per_token > c.n_experts)
    f.fail("num_experts_per_tok", "at most num_experts = " + std::to_string(c.n_experts));
  c.expert_layer_period = f.get_int("expert_layer_period", 1, kMaxLayers).value_or(2);
  c.expert_layer_offset = f.get_int("expert_layer_offset", 0, kMaxLayers).value_or(1);
  c.output_router_logits = f.get_bool("output_router_logits").value_or(false);
  c.router_aux_loss_coef = f.get_number("router_aux_loss_coef").value_or(0.001);
  if (c.router_aux_loss_coef < 0) f.fail("router_aux_loss_coef", "a number >= 0");
  // Sliding windows are not part of the eager attention transformers 4.44.2 runs on the CPU.
  if (f.has("sliding_window") && !f.raw("sliding_window").is_null())
    f.fail("sliding_window", "null (sliding-window attention is not supported)");
  if (f.get_number("attention_dropout").value_or(0) != 0)
    f.fail("attention_dropout", "0 (attention dropout is not supported)");
  c.max_position_embeddings =
      f.get_int("max_position_embeddings", 1, std::int64_t(1) << 40).value_or(262144);
  c.num_logits_to_keep = f.get_int("num_logits_to_keep", 0, kMaxVocab).value_or(1);

  c.mamba_inner_norms = true;
  c.d_state = f.get_int("mamba_d_state", 1, kMaxDState).value_or(16);
  c.d_conv = f.get_int("mamba_d_conv", 1, kMaxDConv).value_or(4);
  c.expand = positive_number(f, "mamba_expand", 2);
  // JambaMambaMixer uses mamba_expand * hidden_size as a layer width without int(): it must
  // come out whole.
  const double inner = c.expand * double(c.d_model);
  if (c.expand > kMaxExpand || inner != std::floor(inner) || inner > double(kMaxDInner))
    f.fail("mamba_expand", "a number whose product with hidden_size is a whole number <= 262144");
  c.d_inner = std::int64_t(inner);
  c.dt_rank = get_dt_rank(f, "mamba_dt_rank", c.d_model).value_or((c.d_model + 15) / 16);
  c.use_conv_bias = f.get_bool("mamba_conv_bias").value_or(true);
  c.use_bias = f.get_bool("mamba_proj_bias").value_or(false);
  c.tie_word_embeddings = f.get_bool("tie_word_embeddings").value_or(false);
  c.layer_norm_epsilon = positive_number(f, "rms_norm_eps", 1e-6);
  c.residual_in_fp32 = false;  // Jamba's residual stays in the model's dtype
  c.hidden_act = f.get_choice("hidden_act", {"silu", "swish"}).value_or("silu");
  c.pad_token_id = get_token_id(f, "pad_token_id", c.vocab_size, 0);
  c.bos_token_id = get_token_id(f, "bos_token_id", c.vocab_size, 1);
  c.eos_token_id = get_token_id(f, "eos_token_id", c.vocab_size, 2);
  c.initializer_range = f.get_number("initializer_range").value_or(0.02);
  read_torch_dtype(f, c);
  return c;
}

// time_step_limit: [min, max], numbers or Python's Infinity (read as the string "Infinity").
std::pair<double, double> get_time_step_limit(const JsonFields& f) {
  if (!f.has("time_step_limit")) return {0.0, INFINITY};
  const nlohmann::json& v = f.raw("time_step_limit");
  const auto bound = [&](const nlohmann::json& b, double& out) {
    if (b.is_number()) out = b.get<double>();
    else if (b == "Infinity") out = INFINITY;
    else if (b == "-Infinity") out = -INFINITY;
    else return false;
    return true;
  };
  std::pair<double, double> lim;
  if (!v.is_array() || v.size() != 2 || !bound(v[0], lim.first) || !bound(v[1], lim.second) ||
      !(lim.first <= lim.second))
    f.fail("time_step_limit", "a list [min, max] of two numbers with min <= max");
  return lim;
}

// transformers' Mamba2Config (docs/models.md "Mamba-2"): Mamba2Config's defaults where a field
// is absent, except the sizes, which a config.json must state.
ModelConfig parse_mamba2(const JsonFields& f) {
  ModelConfig c;
  c.model_type = "mamba2";
  read_required_sizes(f, c);
  c.d_state = f.get_int("state_size", 1, kMaxDState).value_or(128);
  c.d_conv = f.get_int("conv_kernel", 1, kMaxDConv).value_or(4);
  c.expand = get_expand(f);
  // Mamba2Mixer: intermediate_size = int(expand * hidden_size)
  c.d_inner = std::int64_t(c.expand * double(c.d_model));
  if (c.d_inner < 1 || c.d_inner > kMaxDInner)
    f.fail("expand", "a value with int(expand * hidden_size) from 1 to 262144");
  c.ssm_heads = f.get_int("num_heads", 1, kMaxDInner).value_or(128);
  c.ssm_head_dim = f.get_int("head_dim", 1, kMaxDInner).value_or(64);
  // The scan reshapes the d_inner channels into heads of head_dim; dt, A and D have num_heads.
  // (Either may be absent, taking its default: the message states both values.)
  if (c.ssm_heads * c.ssm_head_dim != c.d_inner)
    throw Error(f.where("num_heads") + " = " + std::to_string(c.ssm_heads) +
                " and \"head_dim\" = " + std::to_string(c.ssm_head_dim) +
                ": expected num_heads * head_dim = " +
                "int(expand * hidden_size) = " + std::to_string(c.d_inner));
  c.n_groups = f.get_int("n_groups", 1, kMaxHeads).value_or(8);
  if (c.ssm_heads % c.n_groups != 0)
    throw Error(f.where("n_groups") + " = " + std::to_string(c.n_groups) +
                ": expected a divisor of num_heads = " + std::to_string(c.ssm_heads));
  c.chunk_size = f.get_int("chunk_size", 1, 1 << 16).value_or(256);
  c.use_bias = f.get_bool("use_bias").value_or(false);
  c.use_conv_bias = f.get_bool("use_conv_bias").value_or(true);
  c.tie_word_embeddings = f.get_bool("tie_word_embeddings").value_or(false);
  c.layer_norm_epsilon = positive_number(f, "layer_norm_epsilon", 1e-5);
  c.hidden_act = f.get_choice("hidden_act", {"silu", "swish"}).value_or("silu");
  c.residual_in_fp32 = f.get_bool("residual_in_fp32").value_or(true);
  c.norm_before_gate = f.get_bool("norm_before_gate").value_or(true);
  c.rms_norm = f.get_bool("rms_norm").value_or(true);
  c.pad_token_id = get_token_id(f, "pad_token_id", c.vocab_size, 1);
  c.bos_token_id = get_token_id(f, "bos_token_id", c.vocab_size, 0);
  c.eos_token_id = get_token_id(f, "eos_token_id", c.vocab_size, 2);
  c.initializer_range = f.get_number("initializer_range").value_or(0.1);
  c.time_step_min = positive_number(f, "time_step_min", c.time_step_min);
  c.time_step_max = positive_number(f, "time_step_max", c.time_step_max);
  c.time_step_floor = positive_number(f, "time_step_floor", c.time_step_floor);
  std::tie(c.time_step_limit_min, c.time_step_limit_max) = get_time_step_limit(f);
  c.rescale_prenorm_residual =
      f.get_bool("rescale_prenorm_residual").value_or(c.rescale_prenorm_residual);
  read_torch_dtype(f, c);
  return c;
}

}  // namespace

ModelConfig parse_model_config(const nlohmann::json& j, const std::string& file) {
  const JsonFields f(j, file);
  if (f.has("model_type")) {
    const auto type = f.get_string("model_type");
    if (*type == "jamba") return parse_jamba(f);
    if (*type == "mamba2") return parse_mamba2(f);
    if (*type != "mamba")
      throw Error(f.where("model_type") + ": expected \"mamba\", \"mamba2\" or \"jamba\", got " +
                  quote_str(*type));
  }
  // mamba_ssm's own config.json has no model_type and no hidden_size; the -hf configs keep
  // d_model and n_layer as leftovers beside the HF names, so those alone decide nothing.
  const bool original = !f.has("model_type") && !f.has("hidden_size") && f.has("d_model");
  return original ? parse_original(f, file) : parse_hf(f);
}

ModelConfig load_model_config(const std::string& model_dir) {
  const std::filesystem::path path = std::filesystem::path(model_dir) / "config.json";
  return parse_model_config(read_python_json_file(path), path.string());
}

LayerKind layer_kind(const ModelConfig& c, std::int64_t i) {
  check(i >= 0 && i < c.n_layer, "layer " + std::to_string(i) + " of a model with " +
                                     std::to_string(c.n_layer) + " layers");
  if (c.is_mamba2()) return LayerKind{MixerKind::Mamba2, FeedForwardKind::None};
  if (!c.is_jamba()) return LayerKind{MixerKind::Mamba, FeedForwardKind::None};
  // JambaConfig.layers_block_type and layers_num_experts (docs/models.md "Jamba")
  LayerKind k;
  k.mixer = i % c.attn_layer_period == c.attn_layer_offset ? MixerKind::Attention
                                                           : MixerKind::Mamba;
  k.ffn = c.n_experts > 1 && i % c.expert_layer_period == c.expert_layer_offset
              ? FeedForwardKind::MoE
              : FeedForwardKind::Mlp;
  return k;
}

std::vector<std::int64_t> mamba_layers(const ModelConfig& c) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < c.n_layer; ++i)
    if (layer_kind(c, i).mixer == MixerKind::Mamba) out.push_back(i);
  return out;
}

std::vector<std::int64_t> ssm_layers(const ModelConfig& c) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < c.n_layer; ++i)
    if (layer_kind(c, i).mixer != MixerKind::Attention) out.push_back(i);
  return out;
}

namespace {

nlohmann::json token_json(std::int64_t id) {
  return id < 0 ? nlohmann::json(nullptr) : nlohmann::json(id);
}

// transformers writes expand as the int it was given; keep 2 rather than 2.0.
nlohmann::json expand_json(double expand) {
  return expand == std::floor(expand) ? nlohmann::json(std::int64_t(expand))
                                      : nlohmann::json(expand);
}

// What transformers 4.44.2's JambaConfig.save_pretrained writes (minus transformers_version).
nlohmann::json jamba_config_to_json(const ModelConfig& c) {
  return {
      {"architectures", {"JambaForCausalLM"}},
      {"model_type", "jamba"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.d_model},
      {"intermediate_size", c.d_ffn},
      {"num_hidden_layers", c.n_layer},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.n_kv_heads},
      {"attn_layer_period", c.attn_layer_period},
      {"attn_layer_offset", c.attn_layer_offset},
      {"num_experts", c.n_experts},
      {"num_experts_per_tok", c.experts_per_token},
      {"expert_layer_period", c.expert_layer_period},
      {"expert_layer_offset", c.expert_layer_offset},
      {"output_router_logits", c.output_router_logits},
      {"router_aux_loss_coef", c.router_aux_loss_coef},
      {"mamba_d_state", c.d_state},
      {"mamba_d_conv", c.d_conv},
      {"mamba_expand", expand_json(c.expand)},
      {"mamba_dt_rank", c.dt_rank},
      {"mamba_conv_bias", c.use_conv_bias},
      {"mamba_proj_bias", c.use_bias},
      {"use_mamba_kernels", false},
      {"hidden_act", c.hidden_act},
      {"rms_norm_eps", c.layer_norm_epsilon},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"attention_dropout", 0.0},
      {"sliding_window", nullptr},
      {"max_position_embeddings", c.max_position_embeddings},
      {"num_logits_to_keep", c.num_logits_to_keep},
      {"initializer_range", c.initializer_range},
      {"pad_token_id", token_json(c.pad_token_id)},
      {"bos_token_id", token_json(c.bos_token_id)},
      {"eos_token_id", token_json(c.eos_token_id)},
      {"use_cache", true},
      {"torch_dtype", c.torch_dtype},
  };
}

// A float that may be infinite, as model_config_to_json promises.
nlohmann::json float_json(double v) {
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return v;
}

// What transformers 4.44.2's Mamba2Config.save_pretrained writes (minus transformers_version).
nlohmann::json mamba2_config_to_json(const ModelConfig& c) {
  return {
      {"architectures", {"Mamba2ForCausalLM"}},
      {"model_type", "mamba2"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.d_model},
      {"num_hidden_layers", c.n_layer},
      {"state_size", c.d_state},
      {"expand", expand_json(c.expand)},
      {"num_heads", c.ssm_heads},
      {"head_dim", c.ssm_head_dim},
      {"n_groups", c.n_groups},
      {"chunk_size", c.chunk_size},
      {"conv_kernel", c.d_conv},
      {"use_bias", c.use_bias},
      {"use_conv_bias", c.use_conv_bias},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"residual_in_fp32", c.residual_in_fp32},
      {"layer_norm_epsilon", c.layer_norm_epsilon},
      {"hidden_act", c.hidden_act},
      {"norm_before_gate", c.norm_before_gate},
      {"rms_norm", c.rms_norm},
      {"time_step_rank", (c.d_model + 15) / 16},
      {"time_step_min", c.time_step_min},
      {"time_step_max", c.time_step_max},
      {"time_step_floor", c.time_step_floor},
      {"time_step_limit", {float_json(c.time_step_limit_min), float_json(c.time_step_limit_max)}},
      {"rescale_prenorm_residual", c.rescale_prenorm_residual},
      {"initializer_range", c.initializer_range},
      {"pad_token_id", token_json(c.pad_token_id)},
      {"bos_token_id", token_json(c.bos_token_id)},
      {"eos_token_id", token_json(c.eos_token_id)},
      {"use_cache", true},
      {"torch_dtype", c.torch_dtype},
  };
}

}  // namespace

nlohmann::json model_config_to_json(const ModelConfig& c) {
  if (c.is_jamba()) return jamba_config_to_json(c);
  if (c.is_mamba2()) return mamba2_config_to_json(c);
  const auto token = token_json;
  const nlohmann::json expand = expand_json(c.expand);
  return {
      {"architectures", {"MambaForCausalLM"}},
      {"model_type", "mamba"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.d_model},
      {"num_hidden_layers", c.n_layer},
      {"state_size", c.d_state},
      {"expand", expand},
      {"intermediate_size", c.d_inner},
      {"conv_kernel", c.d_conv},
      {"time_step_rank", c.dt_rank},
      {"use_bias", c.use_bias},
      {"use_conv_bias", c.use_conv_bias},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"residual_in_fp32", c.residual_in_fp32},
      {"layer_norm_epsilon", c.layer_norm_epsilon},
      {"hidden_act", c.hidden_act},
      {"pad_token_id", token(c.pad_token_id)},
      {"bos_token_id", token(c.bos_token_id)},
      {"eos_token_id", token(c.eos_token_id)},
      {"initializer_range", c.initializer_range},
      {"time_step_min", c.time_step_min},
      {"time_step_max", c.time_step_max},
      {"time_step_floor", c.time_step_floor},
      {"time_step_scale", c.time_step_scale},
      {"time_step_init_scheme", c.time_step_init_scheme},
      {"rescale_prenorm_residual", c.rescale_prenorm_residual},
      {"use_cache", true},
      {"torch_dtype", c.torch_dtype},
  };
}

}  // namespace ssmtune
