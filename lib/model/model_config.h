// The model configuration, read from a Hugging Face config.json: Mamba (Mamba-1; field names,
// aliases and defaults of transformers' MambaConfig, docs/models.md "Mamba config") or Jamba
// (transformers' JambaConfig, docs/models.md "Jamba").
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ssmtune {

// What one layer is made of: a sequence mixer, then (optionally) a feed-forward block, each a
// pre-norm residual branch h += f(norm(h)). Mamba-1 models have a Mamba mixer and no
// feed-forward in every layer; Jamba's layers have a Mamba mixer or causal attention, then a
// dense MLP or a mixture of experts (the schedule: layer_kind below). Mamba-2 models have a
// Mamba-2 (SSD) mixer and no feed-forward in every layer.
enum class MixerKind { Mamba, Attention, Mamba2 };
enum class FeedForwardKind { None, Mlp, MoE };
struct LayerKind {
  MixerKind mixer = MixerKind::Mamba;
  FeedForwardKind ffn = FeedForwardKind::None;
};

struct ModelConfig {
  std::string model_type = "mamba";  // config.json's model_type
  std::int64_t vocab_size = 50280;
  std::int64_t d_model = 768;      // hidden_size (alias d_model)
  std::int64_t n_layer = 32;       // num_hidden_layers (alias n_layer)
  // The Mamba mixer's sizes (every Mamba layer of the model has the same).
  std::int64_t d_state = 16;       // state_size (alias d_state)
  double expand = 2;
  std::int64_t d_inner = 1536;     // intermediate_size (alias d_inner), default int(expand * d_model)
  std::int64_t d_conv = 4;         // conv_kernel (alias d_conv)
  std::int64_t dt_rank = 48;       // time_step_rank (alias dt_rank), "auto" = ceil(d_model / 16)
  bool use_bias = false;           // bias on in_proj and out_proj
  bool use_conv_bias = true;
  bool tie_word_embeddings = true;
  bool residual_in_fp32 = true;
  double layer_norm_epsilon = 1e-5;
  std::string hidden_act = "silu";
  std::int64_t pad_token_id = 0, bos_token_id = 0, eos_token_id = 0;

  // Initialisation only (ssmtune init, new layers): docs/models.md "Mamba config".
  double initializer_range = 0.1;
  double time_step_min = 0.001, time_step_max = 0.1, time_step_floor = 1e-4, time_step_scale = 1.0;
  std::string time_step_init_scheme = "random";
  bool rescale_prenorm_residual = false;

  std::string torch_dtype = "float32";  // what the checkpoint says it stores (informational)

  // Jamba only (model_type "jamba"; JambaConfig's names in the comments). A Mamba config leaves
  // these as they are: no attention, no feed-forward, no mixer norms.
  bool mamba_inner_norms = false;          // RMSNorms on dt, B and C inside the Mamba mixer
  std::int64_t n_heads = 0;                // num_attention_heads
  std::int64_t n_kv_heads = 0;             // num_key_value_heads (divides n_heads)
  std::int64_t attn_layer_period = 0;      // layer i is attention iff i % period == offset
  std::int64_t attn_layer_offset = 0;      //   (an offset >= period: no attention layer)
  std::int64_t d_ffn = 0;                  // intermediate_size: the MLPs' and experts' width
  std::int64_t n_experts = 1;              // num_experts (1: every feed-forward is a dense MLP)
  std::int64_t experts_per_token = 1;      // num_experts_per_tok (top-k)
  std::int64_t expert_layer_period = 1;    // layer i has experts iff i % period == offset
  std::int64_t expert_layer_offset = 0;
  bool output_router_logits = false;       // add router_aux_loss_coef * aux to the training loss
  double router_aux_loss_coef = 0.001;
  // Kept only to be written back (the model never reads them): JambaConfig's defaults.
  std::int64_t max_position_embeddings = 262144;
  std::int64_t num_logits_to_keep = 1;

  // Mamba-2 only (model_type "mamba2"; Mamba2Config's names in the comments). The mixer's
  // d_inner, d_state, d_conv, expand, use_bias and use_conv_bias are the fields above.
  std::int64_t ssm_heads = 0;        // num_heads: H, heads of the SSD scan
  std::int64_t ssm_head_dim = 0;     // head_dim: P, with H * P = d_inner
  std::int64_t n_groups = 1;         // n_groups: G, head h reads B and C of group h / (H / G)
  std::int64_t chunk_size = 256;     // chunk_size: the SSD scan's chunk length
  // time_step_limit: dt = clamp(softplus(dt + dt_bias), min, max), as transformers >= 4.48 and
  // mamba_ssm do (docs/models.md "Mamba-2"; Python writes the default max as Infinity).
  double time_step_limit_min = 0, time_step_limit_max = INFINITY;
  // Kept to be written back: flags no torch path reads (the gate always comes first).
  bool norm_before_gate = true, rms_norm = true;

  bool is_jamba() const { return model_type == "jamba"; }
  bool is_mamba2() const { return model_type == "mamba2"; }
  const char* family_name() const {
    return is_jamba() ? "Jamba" : is_mamba2() ? "Mamba-2" : "Mamba";
  }
  std::int64_t conv_dim() const { return d_inner + 2 * n_groups * d_state; }  // Mamba-2: x|B|C
  std::int64_t head_dim() const { return n_heads ? d_model / n_heads : 0; }
};

// What layer i (0 <= i < n_layer) is made of.
LayerKind layer_kind(const ModelConfig& c, std::int64_t i);
// The layers whose mixer is Mamba-1, ascending: every layer of a Mamba-1 model, Jamba's
// non-attention layers (none of a Mamba-2 model). The SSM-specific PEFT methods act on these.
std::vector<std::int64_t> mamba_layers(const ModelConfig& c);
// The layers with a state-space mixer (Mamba-1 or Mamba-2), ascending: every layer but Jamba's
// attention layers. The methods that need a layer's scan but not its Mamba-1 internals (prefix
// tuning, partial tuning, BitFit) act on these.
std::vector<std::int64_t> ssm_layers(const ModelConfig& c);

// Parses a config.json object. `file` names the source in error messages, e.g.
//   error: model/config.json: field "state_size": expected a positive integer, got string "16"
// Accepts Hugging Face names and the original mamba_ssm names (d_model, n_layer, ssm_cfg,
// pad_vocab_size_multiple) for Mamba, and JambaConfig's names for model_type "jamba". Throws
// ssmtune::Error on a missing required field, a wrong type, a value out of range or a
// model_type other than "mamba" and "jamba".
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& file);
// Reads model_dir/config.json (Python's Infinity and NaN allowed: io/json_file.h).
ModelConfig load_model_config(const std::string& model_dir);

// The config.json that transformers writes for this config (round-trips through parse). An
// infinite float is the string "Infinity": write it with dump_python_json (io/json_file.h).
nlohmann::json model_config_to_json(const ModelConfig& c);

}  // namespace ssmtune
