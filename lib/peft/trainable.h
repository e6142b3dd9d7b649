// A trainable tensor as the optimizer and checkpoints see it: a stable name, the value, its
// gradient (same shape). Whether weight decay applies is the optimizer's call, by name, unless
// the method that owns the tensor sets a weight-decay multiplier (partial tuning's per-tensor
// settings, docs/methods.md section 2).
#pragma once

#include <optional>
#include <string>

#include "core/tensor.h"

namespace ssmtune {

struct TrainableParam {
  std::string name;  // unique and stable: optimizer state and checkpoints are keyed by it
  Tensor value, grad;
  double lr_multiplier = 1.0;  // lr of this tensor = optimizer lr * lr_multiplier
  // Set: weight decay = optimizer weight_decay * this, whatever optimizer.no_decay says.
  std::optional<double> weight_decay_multiplier = std::nullopt;
};

}  // namespace ssmtune
