// State-based PEFT (State-offset Tuning, Kang et al. 2025; METHODS.md 4), per layer, all
// zero-initialised so the model is unchanged at step 0:
//   initial-state tuning   H0 (E, N): the scan starts from h_0 = H0 for every sequence
//   state-offset tuning h  h' (E, N): y_t[d] += sum_n C_t[n] h'[d, n]   (dh' = dy^T C)
//   state-offset tuning y  y' (E):    y_t[d] += y'[d]                   (dy' = sum_t dy_t)
// Both offsets act on y before the gate, so neither can be merged into the base weights.
// Implements the model's ScanHook.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/mamba_config.h"
#include "model/scan_hook.h"
#include "peft/trainable.h"

namespace ssmtune {

enum class StateOffset { None, H, Y };

class StateTuning final : public ScanHook {
 public:
  // Zero parameters for every layer (F32 or F64).
  StateTuning(const MambaConfig& cfg, bool initial_state, StateOffset offset, DType dtype,
              Backend& be);

  // "initial_state.layers.I.h0", "state_offset.layers.I.h" / ".y", with their gradients.
  void append_trainables(std::vector<TrainableParam>& out);
  bool initial_state_on() const { return !h0_.empty(); }
  StateOffset offset() const { return kind_; }

  Tensor initial_state(std::int64_t layer, std::int64_t batch) override;
  void initial_state_backward(std::int64_t layer, const Tensor& dh0) override;
  void output_forward(std::int64_t layer, const Tensor& Cm, Tensor& y) override;
  void output_backward(std::int64_t layer, const Tensor& Cm, const Tensor& dy,
                       Tensor& dCm) override;

 private:
  Backend& be_;
  StateOffset kind_;
  std::vector<Tensor> h0_, dh0_;          // per layer (E, N), empty when off
  std::vector<Tensor> offset_, doffset_;  // per layer (E, N) for H, (E) for Y
};

}  // namespace ssmtune
