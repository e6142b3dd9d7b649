// The scan hook (docs/architecture.md "Where PEFT methods attach"): terms on a layer's selective scan, for
// the state-based methods of State-offset Tuning (docs/methods.md section 4) and MambaPEFT's additional scan
// (docs/methods.md section 6):
//   initial-state tuning   the scan starts from a learned h_0 instead of 0
//   state-offset tuning    y_t += C_t h' (the h variant) or y_t += y' (the y variant), added where
//                          the state is read out; the recurrence carries the unmodified h_t
//   additional scan        y_t += the read-out of extra states driven by the same u and dt
// The model calls it around each layer's scan; lib/peft implements it.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ssmtune {

// What one layer's scan read: u, delta (B, L, E) (delta after softplus) and Cm (B, L, N).
struct ScanIO {
  Tensor u, delta, Cm;
};
// Gradients w.r.t. those inputs, (B, L, E) and (B, L, N): hooks add to them.
struct ScanIOGrads {
  Tensor du, ddelta, dCm;
};

class ScanHook {
 public:
  virtual ~ScanHook() = default;
  // The scan's initial state for layer `layer`: (batch, E, N), or undefined for zeros.
  virtual Tensor initial_state(std::int64_t layer, std::int64_t batch) = 0;
  // dh0: (batch, E, N), the gradient w.r.t. what initial_state returned. Accumulates.
  virtual void initial_state_backward(std::int64_t layer, const Tensor& dh0) = 0;
  // The conv's left context for layer `layer` instead of zero padding (initial-state tuning's
  // learned conv state): (1, K-1, E) time-major, or undefined for zeros.
  virtual Tensor initial_conv_state(std::int64_t) { return Tensor(); }
  // d: (1, K-1, E), summed over the batch. Accumulates.
  virtual void initial_conv_state_backward(std::int64_t, const Tensor&) {}
  // The state the hook's terms carry from one block of tokens to the next in recurrent decoding,
  // per sequence (the additional scan's extra states: (E, n)), or empty when they carry none.
  virtual Shape carried_state_shape(std::int64_t layer) const = 0;
  // y: (B, L, E), the scan output before the gate, += the hook's terms. carry: null in training
  // (every sequence starts from zero); in recurrent decoding (B = 1) the carried state
  // (1, carried_state_shape), read at the start of the block and updated to its end.
  virtual void output_forward(std::int64_t layer, const ScanIO& in, Tensor& y, Tensor* carry) = 0;
  // dy: (B, L, E) the gradient at y. Adds the terms' gradients w.r.t. the scan's inputs to
  // `grads` and accumulates the hook's parameter gradients.
  virtual void output_backward(std::int64_t layer, const ScanIO& in, const Tensor& dy,
                               ScanIOGrads& grads) = 0;
};

}  // namespace ssmtune
