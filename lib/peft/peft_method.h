// The interface every PEFT method that adds its own tensors implements (LoRA/DoRA, the state
// methods, the parallel adapter, the additional scan, the virtual tokens), so that PeftModel
// (training) and load_model_with_adapter (eval, generate, merge) handle them in one loop each
// instead of one branch per method. A method says which of the model's extension points it
// acts through (its hooks), what it trains, how it starts, how it is saved into and restored
// from an adapter directory, and whether it folds into the weights.
//
// Parameter tuning (full, partial, BitFit, SDT) is not such a method: it trains base tensors
// themselves and changes the weights the model runs on; PeftModel runs it beside these.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/input_hook.h"
#include "model/linear_hook.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "model/scan_hook.h"
#include "peft/trainable.h"

namespace ssmtune {

// What an adapter's files record beside the tensors.
struct AdapterInfo {
  std::string base_model;                       // the base model directory (PEFT's field)
  std::map<std::string, std::string> metadata;  // safetensors metadata of every file
};

class PeftMethod {
 public:
  virtual ~PeftMethod() = default;
  // The extension points the method acts through (null where it does not).
  virtual LinearHook* linear_hook() { return nullptr; }
  virtual ScanHook* scan_hook() { return nullptr; }
  virtual InputHook* input_hook() { return nullptr; }

  // Every trainable tensor with its gradient, under names unique across methods.
  virtual void append_trainables(std::vector<TrainableParam>& out) = 0;
  // Fresh values from `seed` (and from the pretrained `base` where the method starts from it):
  // at the start of a run and at SDT's reset.
  virtual void init(const ModelWeights& base, std::uint64_t seed) = 0;
  // Dropout (where the method has any) while training, with masks from `dropout_rng`.
  virtual void set_training(bool /*training*/, Rng* /*dropout_rng*/) {}

  // Writes the method's file(s) into the adapter directory `dir` (existing).
  virtual void save(const std::filesystem::path& dir, const AdapterInfo& info) = 0;
  // Restores exactly what save() wrote into this method's tensors (resume). Errors name the
  // file and the tensor: missing, or holding another method's settings or shapes.
  virtual void load(const std::filesystem::path& dir) = 0;

  // "" when merge_into() folds the method into the weights exactly; else why it cannot
  // (what merge-adapter reports, naming the file that holds the method).
  virtual std::string unmergeable_reason() const = 0;
  // W and cfg take the method's terms (only when unmergeable_reason() is "").
  virtual void merge_into(ModelConfig& /*cfg*/, ModelWeights& /*w*/) const {}

  // One or more lines: what trains and how many parameters (the run's log).
  virtual std::vector<std::string> summary() = 0;
};

// How many values `m` trains.
inline std::int64_t n_trainable(PeftMethod& m) {
  std::vector<TrainableParam> params;
  m.append_trainables(params);
  std::int64_t n = 0;
  for (const TrainableParam& p : params) n += p.value.numel();
  return n;
}

}  // namespace ssmtune
