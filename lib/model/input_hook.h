// The input hook (docs/architecture.md "Where PEFT methods attach"): learned vectors placed at the start of
// a sequence, for the virtual-token methods (docs/methods.md section 5):
//   prompt tuning   T vectors (T, D) before the embedded input; their outputs are dropped
//                   before norm_f
//   prefix tuning   per layer T vectors (T, D) before the block's input sequence; the block's
//                   outputs at those positions are dropped, so the next layer never sees them
//   affix tuning    per layer T vectors (T, E) before the x~ half of in_proj's output: the conv,
//                   x_proj, dt and the scan run over them; they are dropped before the gate.
//                   On Mamba-2 (T, C + H): in front of in_proj's xBC (the conv) and dt_in
// Every sequence of a batch gets the same vectors. The model calls the hook; lib/peft
// implements it.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ssmtune {

class InputHook {
 public:
  virtual ~InputHook() = default;
  // The vectors, or undefined where the method is off.
  virtual Tensor prompt() = 0;                    // (T, D)
  virtual Tensor prefix(std::int64_t layer) = 0;  // (T, D)
  virtual Tensor affix(std::int64_t layer) = 0;   // (T, E); Mamba-2: (T, C + H)
  // Gradients w.r.t. them, summed over the batch, same shapes: accumulate.
  virtual void prompt_backward(const Tensor& d) = 0;
  virtual void prefix_backward(std::int64_t layer, const Tensor& d) = 0;
  virtual void affix_backward(std::int64_t layer, const Tensor& d) = 0;
};

}  // namespace ssmtune
