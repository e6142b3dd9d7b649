// State-based PEFT (State-offset Tuning, Kang et al. 2025; docs/methods.md section 4), per layer,
// all zero-initialised so the model is unchanged at step 0:
//   initial-state tuning   H0 (E, N): the scan starts from h_0 = H0 for every sequence; with the
//                          conv-state option also C0 (K-1, E), the causal conv's left context
//                          instead of zero padding (row j = the input at time j - (K-1))
//   state-offset tuning h  h' (E, N): y_t[d] += sum_n C_t[n] h'[d, n]   (dh' = dy^T C)
//   state-offset tuning y  y' (E):    y_t[d] += y'[d]                   (dy' = sum_t dy_t)
// Both offsets act on y before the gate, so neither can be merged into the base weights.
// Implements the model's ScanHook. Acts on the Mamba layers (on Jamba: not the attention layers,
// which have no scan); the names carry the model's layer index I.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/model_config.h"
#include "model/scan_hook.h"
#include "peft/peft_method.h"
#include "peft/trainable.h"

namespace ssmtune {

enum class StateOffset { None, H, Y };

class StateTuning final : public ScanHook, public PeftMethod {
 public:
  // Zero parameters for every layer (F32 or F64).
  StateTuning(const ModelConfig& cfg, bool initial_state, StateOffset offset, DType dtype,
              Backend& be, bool conv_state = false);

  // "initial_state.layers.I.h0", "initial_state.layers.I.conv", "state_offset.layers.I.h" /
  // ".y", with their gradients.
  void append_trainables(std::vector<TrainableParam>& out) override;
  bool initial_state_on() const { return !h0_.empty(); }
  bool conv_state_on() const { return !conv_.empty(); }
  StateOffset offset() const { return kind_; }

  Tensor initial_state(std::int64_t layer, std::int64_t batch) override;
  void initial_state_backward(std::int64_t layer, const Tensor& dh0) override;
  Tensor initial_conv_state(std::int64_t layer) override;
  void initial_conv_state_backward(std::int64_t layer, const Tensor& d) override;
  Shape carried_state_shape(std::int64_t) const override { return {}; }
  void output_forward(std::int64_t layer, const ScanIO& in, Tensor& y, Tensor* carry) override;
  void output_backward(std::int64_t layer, const ScanIO& in, const Tensor& dy,
                       ScanIOGrads& grads) override;

  // PeftMethod: zeros at init (the model is unchanged at step 0); kStateTuningFile below; acts
  // through the scan, so it does not merge.
  ScanHook* scan_hook() override { return this; }
  void init(const ModelWeights& base, std::uint64_t seed) override;
  void save(const std::filesystem::path& dir, const AdapterInfo& info) override;
  void load(const std::filesystem::path& dir) override;
  std::string unmergeable_reason() const override;
  std::vector<std::string> summary() override;

 private:
  ModelConfig cfg_;  // a copy: the method may outlive the config it was made from
  DType dtype_;
  Backend& be_;
  StateOffset kind_;
  // Per layer of the model, undefined at attention layers; empty when the method is off.
  std::vector<Tensor> h0_, dh0_;          // (E, N)
  std::vector<Tensor> conv_, dconv_;      // (K-1, E)
  std::vector<Tensor> offset_, doffset_;  // (E, N) for H, (E) for Y
};

// In an adapter directory, beside (or without) the LoRA files: ssmtune_state.safetensors holds
// initial_state.layers.I.h0 (E, N) and/or state_offset.layers.I.h (E, N) / .y (E); its metadata
// "ssmtune.state_methods" = {"initial_state": bool, "initial_conv_state": bool,
// "state_offset": "" | "h" | "y"}; initial_state.layers.I.conv (K-1, E) with the conv option.
inline constexpr const char* kStateTuningFile = "ssmtune_state.safetensors";
void write_state_tuning(const std::filesystem::path& dir, StateTuning& st,
                        const std::map<std::string, std::string>& metadata = {});
// Null when `dir` has no state file. Every tensor is checked against the model (names, shapes,
// one per layer); errors name the file and the tensor.
std::unique_ptr<StateTuning> read_state_tuning(const std::filesystem::path& dir,
                                               const ModelConfig& cfg, DType dtype, Backend& be);

}  // namespace ssmtune
