// The parameters of a causal LM, one Tensor per Hugging Face tensor, grouped by layer and, in a
// layer, by the part that owns them (each layer kind's file names its tensors: e.g.
// mamba_mixer.h). The same structs hold gradients (same shapes). Absent optional tensors
// (biases a config leaves out) and the parts a layer's kind does not have are undefined Tensors.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"

namespace ssmtune {

// The Mamba-1 mixer (HF MambaMixer). E = d_inner, D = d_model, N = d_state, R = dt_rank,
// K = d_conv.
struct MambaMixerWeights {
  Tensor in_proj;       // (2E, D)      rows [0, E) -> x, [E, 2E) -> z
  Tensor in_proj_bias;  // (2E) or undefined
  Tensor conv1d;        // (E, 1, K)    depthwise
  Tensor conv1d_bias;   // (E) or undefined
  Tensor x_proj;        // (R + 2N, E)  rows dt (R) | B (N) | C (N)
  Tensor dt_proj;       // (E, R)
  Tensor dt_proj_bias;  // (E)
  Tensor A_log;         // (E, N)       A = -exp(A_log)
  Tensor D;             // (E)
  Tensor out_proj;      // (D, E)
  Tensor out_proj_bias; // (D) or undefined
  // Jamba's mixer only (ModelConfig::mamba_inner_norms): RMSNorm gains on dt_in, B and C.
  Tensor dt_norm;       // (R)  dt_layernorm.weight
  Tensor B_norm;        // (N)  b_layernorm.weight
  Tensor C_norm;        // (N)  c_layernorm.weight
};

// The Mamba-2 mixer (HF Mamba2Mixer). E = d_inner = H * P, D = d_model, G = n_groups,
// N = d_state, H = ssm_heads, K = d_conv, C = E + 2 G N (conv_dim: the x|B|C channels).
struct Mamba2MixerWeights {
  Tensor in_proj;        // (E + C + H, D)  rows z (E) | x (E) | B (G N) | C (G N) | dt (H)
  Tensor in_proj_bias;   // (E + C + H) or undefined
  Tensor conv1d;         // (C, 1, K)       depthwise over x|B|C
  Tensor conv1d_bias;    // (C) or undefined
  Tensor dt_bias;        // (H)
  Tensor A_log;          // (H)             A = -exp(A_log), a scalar per head
  Tensor D;              // (H)
  Tensor norm;           // (E)             the gated RMSNorm's gain
  Tensor out_proj;       // (D, E)
  Tensor out_proj_bias;  // (D) or undefined
};

// Jamba's causal grouped-query attention (HF JambaAttention): H = n_heads, KV = n_kv_heads,
// hd = D / H. No biases.
struct AttentionWeights {
  Tensor q_proj;  // (H*hd, D)
  Tensor k_proj;  // (KV*hd, D)
  Tensor v_proj;  // (KV*hd, D)
  Tensor o_proj;  // (D, H*hd)
};

// A SwiGLU MLP (HF JambaMLP): down(silu(gate(x)) * up(x)), F = d_ffn. No biases.
struct MlpWeights {
  Tensor gate_proj;  // (F, D)
  Tensor up_proj;    // (F, D)
  Tensor down_proj;  // (D, F)
};

// A mixture of experts (HF JambaSparseMoeBlock): X = n_experts MLPs and a router.
struct MoeWeights {
  Tensor router;                    // (X, D)
  std::vector<MlpWeights> experts;  // X
};

struct LayerWeights {
  Tensor norm;              // (D) the mixer branch's RMSNorm (Jamba: input_layernorm)
  MambaMixerWeights mamba;  // a Mamba mixer's tensors (LayerKind::mixer == Mamba)
  AttentionWeights attn;    // an attention mixer's (LayerKind::mixer == Attention)
  Mamba2MixerWeights mamba2;  // a Mamba-2 mixer's (LayerKind::mixer == Mamba2)
  Tensor ffn_norm;          // (D) the feed-forward branch's RMSNorm (pre_ff_layernorm)
  MlpWeights mlp;           // LayerKind::ffn == Mlp
  MoeWeights moe;           // LayerKind::ffn == MoE
};

struct ModelWeights {
  Tensor embedding;  // (V, D) backbone.embeddings.weight
  std::vector<LayerWeights> layers;
  Tensor norm_f;     // (D) backbone.norm_f.weight
  Tensor lm_head;    // (V, D) lm_head.weight; shares storage with `embedding` when tied
};

// One parameter: its HF name, where it lives in a ModelWeights, its shape under the config, and
// why it is absent when the config leaves it out (nullptr when present).
struct ParamSlot {
  std::string name;
  Tensor* tensor;
  Shape shape;
  const char* absent_because = nullptr;
};

// Every parameter slot of `w` (which must hold c.n_layer layers) in PyTorch state_dict order
// (docs/models.md "Mamba tensors", "Jamba"), absent ones included: what PEFT methods use to
// reach a tensor by name. Sizes each MoE layer's expert list.
std::vector<ParamSlot> param_slots(const ModelConfig& c, ModelWeights& w);

// The Hugging Face module names of layer i's parts. Mamba: "backbone.layers.3" (the layer),
// "backbone.layers.3.mixer" (its mixer). Jamba: "model.layers.3", "model.layers.3.mamba" or
// "model.layers.3.self_attn", and "model.layers.3.feed_forward".
std::string layer_module(const ModelConfig& c, std::int64_t i);
std::string mixer_module(const ModelConfig& c, std::int64_t i);
std::string ffn_module(const ModelConfig& c, std::int64_t i);
// The embedding's tensor name: "backbone.embeddings.weight" / "model.embed_tokens.weight",
// and its module (the name without ".weight").
std::string embedding_name(const ModelConfig& c);
std::string embedding_module(const ModelConfig& c);
// The final norm's tensor: "backbone.norm_f.weight" / "model.final_layernorm.weight"; the norm
// before layer i's mixer: "backbone.layers.3.norm.weight" /
// "model.layers.3.input_layernorm.weight".
std::string norm_f_name(const ModelConfig& c);
std::string mixer_norm_name(const ModelConfig& c, std::int64_t i);

// Visits every parameter with its Hugging Face name, in checkpoint order. Undefined
// (absent) tensors are skipped; a tied lm_head is skipped (it is the embedding).
void for_each_param(const ModelConfig& c, ModelWeights& w,
                    const std::function<void(const std::string& name, Tensor& t)>& fn);

// Shape every named parameter must have under config `c` (HF names as above).
Shape expected_param_shape(const ModelConfig& c, const std::string& name);

// Fresh tensors of the right shapes, dtype `dtype`, filled with zeros (used for gradients).
ModelWeights zeros_like_params(const ModelConfig& c, DType dtype);

// Loads model_dir/model.safetensors or the shards of model.safetensors.index.json, checks every
// tensor against the config (missing, unexpected or wrong-shape tensors are errors naming the
// tensor, the expected and the found shape), converts to `dtype` (F32, F64, or BF16: frozen
// weights held in bf16, model/weight_storage.h; stored BF16 is kept as read, wider dtypes are
// rounded to nearest even) and ties lm_head to the embedding (shared storage) when
// tie_word_embeddings is set. Accepts mamba_ssm's `backbone.embedding.weight`.
ModelWeights load_model_weights(const std::string& model_dir, const ModelConfig& c,
                                DType dtype = DType::F32);

}  // namespace ssmtune
