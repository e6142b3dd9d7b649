// Fuzz target: a checkpoint directory (trainer_state.json, optimizer state and the methods'
// files), through read_checkpoint into a fresh run on mamba-tiny, as `ssmtune train --resume`
// reads it. Input: one byte picking the run's methods (fuzz_setups.h
// checkpoint_peft_configs), then the files framed in checkpoint_files() order.
#include <cstddef>
#include <cstdint>

#include "backend/backend.h"
#include "core/error.h"
#include "fuzz_files.h"
#include "fuzz_setups.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/peft_model.h"
#include "train/adamw.h"
#include "train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ssmtune;
  static fuzz::ScratchDir dir;
  static const std::unique_ptr<Backend> be = make_cpu_backend();
  static const std::string model_dir = (fuzz::fixtures_dir() / fuzz::kBaseModels[0]).string();
  static const ModelConfig cfg = load_model_config(model_dir);
  static const std::vector<PeftConfig> runs = fuzz::checkpoint_peft_configs();
  if (size == 0) return 0;
  const std::vector<std::string> files = fuzz::checkpoint_files();
  dir.write(files, fuzz::split_files(data + 1, size - 1, files.size()));
  // A fresh run each time: a failed read may leave the one it restored into half loaded.
  ModelWeights base = load_model_weights(model_dir, cfg);
  PeftModel peft(cfg, base, runs[data[0] % runs.size()], *be, /*seed=*/0);
  AdamW optimizer(OptimizerConfig{}, peft.trainables(), *be);
  try {
    (void)read_checkpoint(dir.path(), peft, optimizer);
  } catch (const Error&) {  // the expected refusal of a bad checkpoint
  }
  return 0;
}
