// A trainable tensor as the optimizer and checkpoints see it: a stable name, the value, its
// gradient (same shape). Whether weight decay applies is the optimizer's call, by name.
#pragma once

#include <string>

#include "core/tensor.h"

namespace ssmtune {

struct TrainableParam {
  std::string name;  // unique and stable: optimizer state and checkpoints are keyed by it
  Tensor value, grad;
};

}  // namespace ssmtune
