// The committed mamba-tiny fixture (data_scripts/make_fixtures.py) with its reference inputs:
// what most PEFT method tests run on.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/model_config.h"
#include "model/causal_lm.h"
#include "model/model_weights.h"

namespace ssmtune::test {

struct TinyModel {
  std::string dir = (std::filesystem::path(SSMTUNE_FIXTURES_DIR) / "mamba-tiny").string();
  ModelConfig cfg = load_model_config(dir);
  ModelWeights w;
  std::unique_ptr<Backend> be = make_cpu_backend();
  Tensor ids, targets;  // (2, 9) reference.safetensors' input_ids and shifted labels
  explicit TinyModel(DType dtype) {
    w = load_model_weights(dir, cfg, dtype);
    const SafetensorsFile ref =
        SafetensorsFile::open(std::filesystem::path(dir) / "reference.safetensors");
    ids = ref.tensor("input_ids");
    targets = shift_labels(ref.tensor("labels"));
  }
};

}  // namespace ssmtune::test
