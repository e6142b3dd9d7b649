// Fuzz target: a model directory's config.json (Mamba, Mamba-2, Jamba) through
// load_model_config, and, when the input has a second file, model.safetensors loaded against
// that config as `ssmtune info` and training do: hostile sizes must meet the shape checks.
// Input: config.json [separator model.safetensors] (fuzz_files.h).
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "fuzz_files.h"
#include "model/model_config.h"
#include "model/model_weights.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ssmtune::fuzz::ScratchDir dir;
  const auto parts = ssmtune::fuzz::split_files(data, size, 2);
  dir.write({"config.json", "model.safetensors"}, parts);
  try {
    const ssmtune::ModelConfig cfg = ssmtune::load_model_config(dir.path().string());
    if (parts.size() > 1) (void)ssmtune::load_model_weights(dir.path().string(), cfg);
  } catch (const ssmtune::Error&) {  // the expected refusal of a bad file
  }
  return 0;
}
