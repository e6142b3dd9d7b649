// The scan hook (DESIGN.md "Where PEFT methods attach"): terms on a layer's selective-scan state,
// for the state-based methods of State-offset Tuning (METHODS.md 4):
//   initial-state tuning   the scan starts from a learned h_0 instead of 0
//   state-offset tuning    y_t += C_t h' (the h variant) or y_t += y' (the y variant), added where
//                          the state is read out; the recurrence carries the unmodified h_t
// The model calls it around each layer's scan; lib/peft implements it.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ssmtune {

class ScanHook {
 public:
  virtual ~ScanHook() = default;
  // The scan's initial state for layer `layer`: (batch, E, N), or undefined for zeros.
  virtual Tensor initial_state(std::int64_t layer, std::int64_t batch) = 0;
  // dh0: (batch, E, N), the gradient w.r.t. what initial_state returned. Accumulates.
  virtual void initial_state_backward(std::int64_t layer, const Tensor& dh0) = 0;
  // Cm: (tokens, N) the scan's C   y: (tokens, E) the scan output (before the gate) += the term
  virtual void output_forward(std::int64_t layer, const Tensor& Cm, Tensor& y) = 0;
  // dy: (tokens, E) the gradient at y. Adds the term's gradient w.r.t. C to dCm: (tokens, N)
  // and accumulates the hook's parameter gradients.
  virtual void output_backward(std::int64_t layer, const Tensor& Cm, const Tensor& dy,
                               Tensor& dCm) = 0;
};

}  // namespace ssmtune
