// The model `ssmtune bench` runs: a model directory, or a config.json's shapes with random
// weights (Hugging Face's initialisation, `ssmtune init`'s), its frozen weights held in fp32 or
// bf16.
#pragma once

#include <string>

#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

struct BenchModel {
  ModelConfig cfg;
  ModelWeights w;
  std::string label;  // the directory, or "<config>, random weights"
};

// `model_dir` or `config_file` (exactly one non-empty); `held` F32 or BF16; `seed` the random
// weights' seed. A tied lm_head is the embedding.
BenchModel load_bench_model(const std::string& model_dir, const std::string& config_file,
                            DType held, std::uint64_t seed);

// The model's shapes in one line; a Jamba model also counts its attention and MoE layers.
std::string describe_model(const ModelConfig& cfg);

// Bytes the tensors of `w` hold (0 for an empty ModelWeights: no gradients).
double weight_bytes(const ModelConfig& cfg, ModelWeights& w);

}  // namespace ssmtune
