// AdamW over a run's trainable tensors (Loshchilov and Hutter 2019; torch.optim.AdamW's
// arithmetic, Backend::adamw_update), global-norm gradient clipping as
// torch.nn.utils.clip_grad_norm_, and the optimizer state a checkpoint saves.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "peft/trainable.h"
#include "train/experiment_config.h"

namespace ssmtune {

// Weight decay applies to a parameter unless an entry of `no_decay` is one of its
// dot-separated name components, or the start of one followed by '_' ("norm" matches
// backbone.norm_f.weight, "bias" matches mixer.conv1d.bias, "D" matches mixer.D).
bool decays(const std::string& name, const std::vector<std::string>& no_decay);

class AdamW {
 public:
  // `params` must outlive the optimizer; their moments start at zero.
  AdamW(const OptimizerConfig& cfg, std::vector<TrainableParam>& params, Backend& be);
  // Forgets every moment and the step count and re-reads `params`, which may have changed
  // (SDT's switch from warmup to masked training starts a fresh optimizer).
  void reset();

  // Global L2 norm of all gradients; if max_norm > 0, scales every gradient by
  // min(1, max_norm / (norm + 1e-6)) (torch's formula). Returns the norm before clipping.
  double clip_grad_norm(double max_norm);
  // One update of every parameter with learning rate `lr`.
  void step(double lr);
  std::int64_t steps_taken() const { return step_; }

  // optimizer.safetensors: m.<name>, v.<name> for every parameter; metadata step.
  void save(const std::filesystem::path& file) const;
  // Restores the moments and step count; errors name the file and the tensor (missing,
  // wrong shape, unexpected).
  void load(const std::filesystem::path& file);

 private:
  OptimizerConfig cfg_;
  std::vector<TrainableParam>& params_;
  Backend& be_;
  std::vector<Tensor> m_, v_;
  std::vector<double> weight_decay_;  // per parameter, after no_decay and multipliers
  std::int64_t step_ = 0;
};

}  // namespace ssmtune
