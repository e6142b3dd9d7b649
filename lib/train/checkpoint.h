// Checkpoints: `<output_dir>/checkpoint-STEP/`, written as a StagedDir so a kill at any instant
// leaves complete checkpoints only. One holds everything a resumed run needs to continue
// bit-exactly (docs/architecture.md "Files it writes"):
//   adapter_config.json, adapter_model.safetensors   LoRA, in PEFT's layout (also an adapter
//                                                    `ssmtune generate --adapter` can use)
//   config.json, model.safetensors                   full fine-tuning: the trained base tensors
//   optimizer.safetensors                            AdamW moments and step count
//   trainer_state.json                               TrainerState below
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace ssmtune {

class PeftModel;
class AdamW;

struct TrainerState {
  std::int64_t step = 0;        // optimizer steps completed
  std::int64_t data_epoch = 0;  // EpochSampler position of the next batch
  std::int64_t data_index = 0;
  Rng::State dropout_rng{};      // the LoRA dropout generator
  std::string config_hash;       // experiment_config_hash of the run
  std::int64_t tokens_seen = 0;  // loss tokens trained on
  double last_loss = 0;          // training loss of the last step
  double elapsed_s = 0;          // training wall time so far
  double best_metric = 0;        // early stopping: best eval value so far
  bool has_best = false;
  std::int64_t evals_without_improvement = 0;
  // The step at which the current optimizer (and its schedule) started: 0, or SDT's warmup
  // length once its masked training runs with a fresh optimizer.
  std::int64_t optimizer_start_step = 0;
};

// Writes checkpoint-<state.step> into output_dir, then removes the oldest checkpoints beyond
// `keep` (0 = keep all). Returns the checkpoint's path.
std::filesystem::path write_checkpoint(const std::filesystem::path& output_dir,
                                       const TrainerState& state, const PeftModel& peft,
                                       const AdamW& optimizer, const std::string& base_model,
                                       std::int64_t keep);

// The checkpoint-N directories of output_dir, by increasing N (staging leftovers ignored).
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& output_dir);

// Restores `peft` and `optimizer` from a checkpoint directory and returns its trainer state.
// Every file is validated; errors name the file and the field or tensor.
TrainerState read_checkpoint(const std::filesystem::path& dir, PeftModel& peft, AdamW& optimizer);

}  // namespace ssmtune
