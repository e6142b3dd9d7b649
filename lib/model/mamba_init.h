// A freshly initialised Mamba causal LM, as transformers 4.44.2's MambaForCausalLM(config)
// draws it (docs/models.md "Mamba config"), and the Hugging Face model directory that holds it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "model/model_dir.h"
#include "model/model_weights.h"

namespace ssmtune {

// Number of parameters of the model `c` describes, counting a tied lm_head once (what
// `sum(p.numel() for p in model.parameters())` gives in transformers). From the sizes alone,
// so a caller can refuse a model too large for memory before anything is allocated.
std::int64_t mamba_param_count(const ModelConfig& c);

// Every parameter of `c` in `held` (F32 or BF16), drawn by the rules listed in mamba_init.cpp
// through draw_model_weights (model_init.h: one RNG stream per tensor name, same seed same bytes).
// The lm_head shares the embedding's storage when c.tie_word_embeddings. Throws Error if the
// config's init fields are unusable (time_step_min > time_step_max, negative initializer_range).
ModelWeights init_mamba_weights(const ModelConfig& c, std::uint64_t seed,
                                DType held = DType::F32);

// Writes a model directory that transformers' MambaForCausalLM.from_pretrained loads (or, for a
// Jamba config, JambaForCausalLM's: nothing here depends on the model kind), through
// write_model_dir (model_dir.h: staged and renamed into place, the same checks on `dir`):
//   dir/config.json         model_config_to_json(c) with torch_dtype set from the weights' dtype
//   dir/model.safetensors   every parameter under its HF name (a tied lm_head is not stored)
//   dir/<name>              a copy of each of `extra_files` (tokenizer files), by file name
// Weights: all tensors of one float dtype.
void write_mamba_model_dir(const std::string& dir, const ModelConfig& c, const ModelWeights& w,
                           bool overwrite = false,
                           const std::vector<std::filesystem::path>& extra_files = {});

}  // namespace ssmtune
