// A freshly initialised Jamba causal LM, as transformers 4.44.2's JambaForCausalLM(config) draws
// it (docs/models.md "Jamba initialisation"). write_mamba_model_dir (mamba_init.h) writes its
// model directory.
#pragma once

#include <cstdint>

#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

// Number of parameters of the Jamba model `c` describes (c.is_jamba()), a tied lm_head counted
// once: what `sum(p.numel() for p in model.parameters())` gives in transformers. From the sizes
// alone, so a caller can refuse a model too large for memory before anything is allocated.
std::int64_t jamba_param_count(const ModelConfig& c);

// Every parameter of the Jamba config `c` in `held` (F32 or BF16), drawn by the rules listed in
// jamba_init.cpp through draw_model_weights (model_init.h: one RNG stream per tensor name, same
// seed same bytes). The lm_head shares the embedding's storage when c.tie_word_embeddings. Throws
// Error for a config that is not Jamba's or a negative initializer_range.
ModelWeights init_jamba_weights(const ModelConfig& c, std::uint64_t seed,
                                DType held = DType::F32);

}  // namespace ssmtune
