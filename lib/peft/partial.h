// Partial tuning and BitFit (docs/methods.md section 2): which base tensors a "partial" / "bitfit"
// config makes trainable, as ParamTuning entries. Names in the config are relative to a layer
// (A_log, D, conv1d, conv1d.bias, dt_proj, dt_proj.bias, in_proj, in_proj.bias, x_proj, out_proj,
// out_proj.bias, norm; optionally prefixed by "layers.I." or "layers.I-J."), or model-level
// (embeddings, norm_f, lm_head); Jamba adds dt_layernorm, b_layernorm, c_layernorm. Layer names
// act on the Mamba layers (on Jamba: not the attention layers, whose tensors LoRA or full
// fine-tuning reach); "norm" is the norm before the mixer (Jamba: input_layernorm). Each entry's
// trainable name is "partial." + the HF name.
// BitFit (P1) = the conv1d and dt_proj biases of every Mamba layer, created where the model has
// none.
#pragma once

#include <vector>

#include "model/model_config.h"
#include "peft/param_tuning.h"
#include "peft/peft_config.h"

namespace ssmtune {

// Entries for `partial` (may be null) and `bitfit` together; a tensor named by both, or twice,
// is an error, as is a name that matches no tensor. UsageError names the config field.
std::vector<TunedTensor> plan_partial_entries(const ModelConfig& cfg, const PartialConfig* partial,
                                              bool bitfit);

}  // namespace ssmtune
