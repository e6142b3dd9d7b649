// A freshly initialised causal LM of either kind (ssmtune init, ssmtune bench --config). The rules
// per tensor are in mamba_init.cpp (MambaForCausalLM) and jamba_init.cpp (JambaForCausalLM); this
// file draws the tensors by those rules, so both kinds share one RNG convention.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

// How one tensor's initial values are drawn. Values are computed in double and rounded to F32
// once.
struct InitRule {
  enum Kind {
    kNormal,    // N(0, scale)
    kUniform,   // U(-scale, scale)
    kConstant,  // every element = scale
    kLogA,      // A_log[..., n] = ln(n + 1) over the last dimension: S4D-real
    kDtBias,    // Mamba's dt_proj bias: softplus^-1 of a log-uniform dt (mamba_init.cpp)
  };
  Kind kind;
  double scale = 0;
};

// Every parameter of `c` in dtype `held` (F32, or BF16: each tensor drawn in F32 and rounded at
// once, so a model held in bf16 never exists in F32 whole), the tensor named `name` (its HF name)
// drawn by rule_for(name) from its own Rng::for_stream(seed, stream_id(name)): a tensor's values
// depend only on (seed, its name, the config), not on the order tensors are visited, and adding a
// layer leaves the other layers' values unchanged. Same seed, same bytes (Rng is defined bit for
// bit; the libm exp/log/cos behind normal() and dt could differ in a last bit elsewhere). A tied
// lm_head shares the embedding's storage. Throws Error, before allocating, when `param_count` F32
// values exceed this machine's memory.
ModelWeights draw_model_weights(const ModelConfig& c, std::uint64_t seed, std::int64_t param_count,
                                const std::function<InitRule(const std::string& name)>& rule_for,
                                DType held = DType::F32);

// The model `c` describes as transformers builds it from the config alone: init_mamba_weights or
// init_jamba_weights by c.model_type, held in `held` (draw_model_weights).
ModelWeights init_model_weights(const ModelConfig& c, std::uint64_t seed,
                                DType held = DType::F32);

// Its number of parameters, a tied lm_head counted once: mamba_param_count or jamba_param_count.
std::int64_t model_param_count(const ModelConfig& c);

}  // namespace ssmtune
