// PeftModel: the methods a run trains on top of a frozen base model, put together from the
// "peft" config section. It owns the method parameters and their gradients, gives the model
// its hooks and the weights to run on (the base, or the base with parameter-tuning deltas),
// lists every trainable tensor for the optimizer, runs SDT's phases, and saves and loads them:
// LoRA as a PEFT adapter (lora_adapter_io.h), parameter tuning (partial, BitFit, SDT) and the
// state methods in their own files of the adapter, full fine-tuning as the model's own tensors.
//
// A training step: forward/backward on weights() into base_grads(), finish_backward(), the
// optimizer step, after_step().
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/additional_scan.h"
#include "peft/hook_lists.h"
#include "peft/lora.h"
#include "peft/merge.h"
#include "peft/peft_method.h"
#include "peft/parallel_adapter.h"
#include "peft/param_tuning.h"
#include "peft/peft_config.h"
#include "peft/sdt.h"
#include "peft/state_tuning.h"
#include "peft/trainable.h"
#include "peft/virtual_tokens.h"

namespace ssmtune {

class PeftModel {
 public:
  // Plans the methods (errors for targets that match nothing) and initialises them from
  // `seed`; with peft.init_from, LoRA starts from that adapter instead (its own targets, rank
  // and alpha). `base` must outlive this object; full fine-tuning updates it in place.
  PeftModel(const ModelConfig& cfg, ModelWeights& base, const PeftConfig& peft, Backend& be,
            std::uint64_t seed);

  // Every method's terms beside the projections / on the scan, as the model takes them.
  LinearHook* hook() { return hooks_.get(); }
  ScanHook* scan_hook() { return scan_hooks_.get(); }
  // The linear terms that merged() cannot fold in (the parallel adapter), for a decoder that
  // runs on merged().
  LinearHook* unmerged_hook() { return unmerged_hooks_.get(); }
  InputHook* input_hook() { return input_hook_; }
  LoraModel* lora() { return lora_; }
  const LoraModel* lora() const { return lora_; }
  const ParamTuning* params() const { return params_.get(); }
  // The weights the model runs on; the same object for the PeftModel's life (its tensors are
  // updated in place), so a CausalLM may keep a reference.
  const ModelWeights& weights() const { return model_weights_; }
  // Gradients of the base tensors: defined exactly where a base tensor trains. Same lifetime.
  ModelWeights& base_grads() { return model_grads_; }
  std::vector<TrainableParam>& trainables() { return trainables_; }
  std::int64_t n_trainable() const;
  void zero_grads();
  // After the backward passes of a step, before clipping: masked gradients are gathered.
  void finish_backward();
  // After each optimizer step (and after load()): the effective weights follow the deltas.
  void after_step();
  void set_training(bool training, Rng* dropout_rng);

  // SDT: while warming up, the step count at which end_sdt_warmup() is due.
  bool sdt_warming_up() const { return sdt_phase_ == SdtPhase::Warmup; }
  std::int64_t sdt_warmup_steps() const { return config_.sdt ? config_.sdt->warmup_steps : 0; }
  // Selects each layer's channels and states from the warmup delta, restores the pretrained
  // model, re-initialises every other method from the seed and switches to masked training.
  // trainables() changes: the optimizer must be reset. Returns the selection.
  const std::vector<SdtLayerSelection>& end_sdt_warmup();
  // The selection once masked training runs (also after a resume), else empty.
  const std::vector<SdtLayerSelection>& sdt_selection() const { return sdt_selection_; }

  // A deep copy of the base with every mergeable method folded in (LoRA, parameter tuning);
  // the state methods are the caller's to apply through the scan hook.
  LoadedModel merged() const;

  // One line per method and module group: what trains and how many parameters.
  std::vector<std::string> summary() const;

  // Writes the trained state into `dir` (existing): adapter_config.json +
  // adapter_model.safetensors for LoRA; ssmtune_state.safetensors for the state methods;
  // ssmtune_params.safetensors for parameter tuning; ssmtune_<method>.safetensors for the
  // parallel adapter and the additional scan; config.json + model.safetensors for full
  // fine-tuning.
  void save(const std::filesystem::path& dir, const std::string& base_model,
            const std::map<std::string, std::string>& metadata) const;
  // The adapter a run ends with: every method's files, but no LoRA when full fine-tuning
  // (it is merged into the run's model/ then) and no model tensors. Nothing to write: false.
  bool save_adapter(const std::filesystem::path& dir, const std::string& base_model,
                    const std::map<std::string, std::string>& metadata) const;
  // Restores exactly what save() wrote (resume). Errors name the file and tensor.
  void load(const std::filesystem::path& dir);

 private:
  enum class SdtPhase { Off, Warmup, Train };
  // (Re)builds params_ from the partial entries and the SDT phase's, and what depends on it.
  void build_params(std::vector<TunedTensor> sdt_entries);
  void collect_trainables();
  // UsageError when a DoRA module's weight would train (full, partial, SDT on x_proj).
  void refuse_trained_dora_weights() const;
  std::string sdt_json() const;  // SDT's phase and settings for the params file
  std::string sdt_summary(std::int64_t n_sdt) const;  // summary()'s line, n_sdt its values
  void load_params(const std::filesystem::path& dir);
  void restore_pristine();  // SDT's reset: direct-tuned base tensors back to pretrained

  const ModelConfig& cfg_;
  ModelWeights& base_;
  PeftConfig config_;
  Backend& be_;
  std::uint64_t seed_;
  // The methods with their own tensors, in the order their trainables are listed: LoRA, the
  // state methods, the parallel adapter, the additional scan, the virtual tokens.
  std::vector<std::unique_ptr<PeftMethod>> methods_;
  LoraModel* lora_ = nullptr;      // LoRA among them, or null: DoRA's checks and the log
  InputHook* input_hook_ = nullptr;
  LinearHookList hooks_, unmerged_hooks_;
  ScanHookList scan_hooks_;
  std::vector<TunedTensor> partial_plan_;  // partial tuning / BitFit entries, values unset
  std::unique_ptr<ParamTuning> params_;
  SdtPhase sdt_phase_ = SdtPhase::Off;
  std::vector<SdtLayerSelection> sdt_selection_;
  // SDT: each base tensor partial tuning trains in place, and a copy of its pretrained values.
  std::vector<std::pair<Tensor, Tensor>> pristine_;
  ModelWeights base_grads_;  // full fine-tuning's gradients
  ModelWeights model_weights_, model_grads_;
  std::vector<TrainableParam> trainables_;
};

}  // namespace ssmtune
