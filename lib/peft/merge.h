// Models with an adapter folded into their weights: what `generate`, `eval` and
// `merge-adapter` run. Merging LoRA is exact (W += s B A), so a merged model computes what the
// base model with the adapter's hook computes, up to float rounding.
#pragma once

#include <string>

#include "backend/backend.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include <memory>
#include <vector>

#include "peft/hook_lists.h"
#include "peft/lora.h"
#include "peft/peft_method.h"

namespace ssmtune {

struct LoadedModel {
  ModelConfig cfg;
  ModelWeights weights;  // F32; frozen tensors may be BF16 (load_model_with_adapter)
  // The adapter's methods that no weight can hold, applied through the model's hooks: state
  // methods, additional scan (scan hook), parallel adapter (linear hook), virtual tokens (input
  // hook).
  std::vector<std::shared_ptr<PeftMethod>> unmerged;
  std::shared_ptr<ScanHookList> scan_hooks = nullptr;  // theirs, as the model takes them
  std::shared_ptr<LinearHookList> hooks = nullptr;
  InputHook* input = nullptr;
  // What eval and generate give the model and the decoder (null when nothing).
  ScanHook* scan_hook() const { return scan_hooks ? scan_hooks->get() : nullptr; }
  LinearHook* hook() const { return hooks ? hooks->get() : nullptr; }
  InputHook* input_hook() const { return input; }
  // The unmergeable methods present, with the file that holds each ("" when none): what
  // merge-adapter refuses.
  std::string unmergeable() const;
};

// A deep copy of `w` with `lora` (if not null) merged in; `w` is unchanged.
LoadedModel merged_copy(const ModelConfig& cfg, const ModelWeights& w, const LoraModel* lora,
                        Backend& be);

// Loads model_dir; when adapter_dir is not empty, reads the adapter's files (each checked
// against the model), merges LoRA and parameter tuning into the weights and sets up the rest
// as hooks. frozen: how the base weights are held, F32 or BF16 (model/weight_storage.h); with
// BF16 the tensors an adapter merges into are held in F32 and plain LoRA (not DoRA) is not
// merged but runs as a hook beside the bf16 base, as in training.
LoadedModel load_model_with_adapter(const std::string& model_dir, const std::string& adapter_dir,
                                    Backend& be, DType frozen = DType::F32);

}  // namespace ssmtune
