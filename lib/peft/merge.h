// Models with an adapter folded into their weights: what `generate`, `eval` and
// `merge-adapter` run. Merging LoRA is exact (W += s B A), so a merged model computes what the
// base model with the adapter's hook computes, up to float rounding.
#pragma once

#include <string>

#include "backend/backend.h"
#include "model/mamba_config.h"
#include "model/mamba_weights.h"
#include "peft/lora.h"
#include "peft/state_tuning.h"

namespace ssmtune {

struct LoadedModel {
  MambaConfig cfg;
  MambaWeights weights;  // F32
  // State-based methods of the adapter (not mergeable: applied through the scan hook), or null.
  std::shared_ptr<StateTuning> state = nullptr;
};

// A deep copy of `w` with `lora` (if not null) merged in; `w` is unchanged.
LoadedModel merged_copy(const MambaConfig& cfg, const MambaWeights& w, const LoraModel* lora,
                        Backend& be);

// Loads model_dir; when adapter_dir is not empty, reads its LoRA (checked against the model) and
// merges it, and reads its state methods into `state`.
LoadedModel load_model_with_adapter(const std::string& model_dir, const std::string& adapter_dir,
                                    Backend& be);

}  // namespace ssmtune
