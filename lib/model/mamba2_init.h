// A freshly initialised Mamba-2 causal LM, as transformers 4.44.2's Mamba2ForCausalLM(config)
// draws it (the rules in mamba2_init.cpp). write_mamba_model_dir (mamba_init.h) writes its model
// directory.
#pragma once

#include <cstdint>

#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

// Number of parameters of the Mamba-2 model `c` describes (c.is_mamba2()), a tied lm_head
// counted once, from the sizes alone.
std::int64_t mamba2_param_count(const ModelConfig& c);

// Every parameter of the Mamba-2 config `c` in `held` (F32 or BF16), drawn through
// draw_model_weights (model_init.h: one RNG stream per tensor name, same seed same bytes). Throws
// Error for a config that is not Mamba-2's, time_step_min > time_step_max or a negative
// initializer_range.
ModelWeights init_mamba2_weights(const ModelConfig& c, std::uint64_t seed,
                                 DType held = DType::F32);

}  // namespace ssmtune
