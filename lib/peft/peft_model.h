// PeftModel: the methods a run trains on top of a frozen base model, put together from the
// "peft" config section. It owns the method parameters and their gradients, gives the model
// its hook, lists every trainable tensor for the optimizer, and saves and loads them:
// LoRA as a PEFT adapter (lora_adapter_io.h), full fine-tuning as the model's own tensors.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/mamba_config.h"
#include "model/mamba_weights.h"
#include "peft/lora.h"
#include "peft/peft_config.h"
#include "peft/state_tuning.h"
#include "peft/trainable.h"

namespace ssmtune {

class PeftModel {
 public:
  // Plans the methods (errors for targets that match nothing) and initialises them from
  // `seed`; with peft.init_from, LoRA starts from that adapter instead (its own targets, rank
  // and alpha). `base` must outlive this object; full fine-tuning updates it in place.
  PeftModel(const MambaConfig& cfg, MambaWeights& base, const PeftConfig& peft, Backend& be,
            std::uint64_t seed);

  LinearHook* hook() { return lora_.get(); }
  ScanHook* scan_hook() { return state_.get(); }
  LoraModel* lora() { return lora_.get(); }
  StateTuning* state() { return state_.get(); }
  // Gradients of the base tensors: defined exactly where a base tensor trains.
  MambaWeights& base_grads() { return base_grads_; }
  std::vector<TrainableParam>& trainables() { return trainables_; }
  std::int64_t n_trainable() const;
  void zero_grads();
  void set_training(bool training, Rng* dropout_rng);

  // One line per method and module group: what trains and how many parameters.
  std::vector<std::string> summary() const;

  // Writes the trained state into `dir` (existing): adapter_config.json +
  // adapter_model.safetensors for LoRA; ssmtune_state.safetensors for the state methods;
  // config.json + model.safetensors for full fine-tuning.
  void save(const std::filesystem::path& dir, const std::string& base_model,
            const std::map<std::string, std::string>& metadata) const;
  // Restores exactly what save() wrote (resume). Errors name the file and tensor.
  void load(const std::filesystem::path& dir);

 private:
  void collect_trainables();

  const MambaConfig& cfg_;
  MambaWeights& base_;
  PeftConfig config_;
  Backend& be_;
  std::unique_ptr<LoraModel> lora_;
  std::unique_ptr<StateTuning> state_;
  MambaWeights base_grads_;
  std::vector<TrainableParam> trainables_;
};

}  // namespace ssmtune
