// The parameters of a Mamba causal LM, one Tensor per Hugging Face tensor. The same
// struct holds gradients (same shapes). Absent optional tensors (biases when use_bias /
// use_conv_bias are off) are undefined Tensors.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/mamba_config.h"

namespace ssmtune {

struct MambaLayerWeights {
  Tensor norm;          // (D)          backbone.layers.{i}.norm.weight
  Tensor in_proj;       // (2E, D)      mixer.in_proj.weight: rows [0, E) -> x, [E, 2E) -> z
  Tensor in_proj_bias;  // (2E) or undefined
  Tensor conv1d;        // (E, 1, K)    mixer.conv1d.weight, depthwise
  Tensor conv1d_bias;   // (E) or undefined
  Tensor x_proj;        // (R + 2N, E)  mixer.x_proj.weight: rows dt (R) | B (N) | C (N)
  Tensor dt_proj;       // (E, R)       mixer.dt_proj.weight
  Tensor dt_proj_bias;  // (E)          mixer.dt_proj.bias
  Tensor A_log;         // (E, N)       mixer.A_log; A = -exp(A_log)
  Tensor D;             // (E)          mixer.D
  Tensor out_proj;      // (D, E)       mixer.out_proj.weight
  Tensor out_proj_bias; // (D) or undefined
};

struct MambaWeights {
  Tensor embedding;  // (V, D) backbone.embeddings.weight
  std::vector<MambaLayerWeights> layers;
  Tensor norm_f;     // (D) backbone.norm_f.weight
  Tensor lm_head;    // (V, D) lm_head.weight; shares storage with `embedding` when tied
};

// One parameter: its HF name, where it lives in a MambaWeights, its shape under the config, and
// why it is absent when the config leaves it out (nullptr when present).
struct ParamSlot {
  std::string name;
  Tensor* tensor;
  Shape shape;
  const char* absent_because = nullptr;
};

// Every parameter slot of `w` (which must hold c.n_layer layers) in PyTorch state_dict order
// (MODELS.md A.3), absent ones included: what PEFT methods use to reach a tensor by name.
std::vector<ParamSlot> param_slots(const MambaConfig& c, MambaWeights& w);

// Visits every parameter with its Hugging Face name, in checkpoint order. Undefined
// (absent) tensors are skipped; a tied lm_head is skipped (it is the embedding).
void for_each_param(const MambaConfig& c, MambaWeights& w,
                    const std::function<void(const std::string& name, Tensor& t)>& fn);

// Shape every named parameter must have under config `c` (HF names as above).
Shape expected_param_shape(const MambaConfig& c, const std::string& name);

// Fresh tensors of the right shapes, dtype `dtype`, filled with zeros (used for gradients).
MambaWeights zeros_like_params(const MambaConfig& c, DType dtype);

// Loads model_dir/model.safetensors or the shards of model.safetensors.index.json, checks every
// tensor against the config (missing, unexpected or wrong-shape tensors are errors naming the
// tensor, the expected and the found shape), converts to `dtype` (F32 or F64) and ties
// lm_head to the embedding (shared storage) when tie_word_embeddings is set. Accepts mamba_ssm's `backbone.embedding.weight`.
MambaWeights load_mamba_weights(const std::string& model_dir, const MambaConfig& c,
                                DType dtype = DType::F32);

}  // namespace ssmtune
