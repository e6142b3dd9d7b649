// Models with an adapter folded into their weights: what `generate`, `eval` and
// `merge-adapter` run. Merging LoRA is exact (W += s B A), so a merged model computes what the
// base model with the adapter's hook computes, up to float rounding.
#pragma once

#include <string>

#include "backend/backend.h"
#include "model/mamba_config.h"
#include "model/mamba_weights.h"
#include "peft/additional_scan.h"
#include "peft/hook_lists.h"
#include "peft/lora.h"
#include "peft/parallel_adapter.h"
#include "peft/state_tuning.h"
#include "peft/virtual_tokens.h"

namespace ssmtune {

struct LoadedModel {
  MambaConfig cfg;
  MambaWeights weights;  // F32
  // The adapter's methods that no weight can hold, applied through the model's hooks (null
  // when absent): state methods, additional scan (scan hook), parallel adapter (linear hook).
  std::shared_ptr<StateTuning> state = nullptr;
  std::shared_ptr<AdditionalScan> additional_scan = nullptr;
  std::shared_ptr<ParallelAdapter> parallel_adapter = nullptr;
  std::shared_ptr<VirtualTokens> virtual_tokens = nullptr;  // the input hook
  std::shared_ptr<ScanHookList> scan_hooks = nullptr;  // all of them, as the model takes them
  std::shared_ptr<LinearHookList> hooks = nullptr;
  // What eval and generate give the model and the decoder (null when nothing).
  ScanHook* scan_hook() const { return scan_hooks ? scan_hooks->get() : nullptr; }
  LinearHook* hook() const { return hooks ? hooks->get() : nullptr; }
  InputHook* input_hook() const { return virtual_tokens.get(); }
  // The unmergeable methods present, with the file that holds each ("" when none): what
  // merge-adapter refuses.
  std::string unmergeable() const;
};

// A deep copy of `w` with `lora` (if not null) merged in; `w` is unchanged.
LoadedModel merged_copy(const MambaConfig& cfg, const MambaWeights& w, const LoraModel* lora,
                        Backend& be);

// Loads model_dir; when adapter_dir is not empty, reads the adapter's files (each checked
// against the model), merges LoRA and parameter tuning into the weights and sets up the rest
// as hooks.
LoadedModel load_model_with_adapter(const std::string& model_dir, const std::string& adapter_dir,
                                    Backend& be);

}  // namespace ssmtune
