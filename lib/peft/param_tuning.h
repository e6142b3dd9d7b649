// Parameter tuning (docs/architecture.md "Where PEFT methods attach"; docs/methods.md
// sections 2 and 3): base tensors of
// the model made trainable. Each entry acts on one Hugging Face tensor W in one of three ways:
//   direct   W itself trains (the entry's value is the model's own tensor, updated in place)
//   delta    W_eff = W + delta, delta: shape of W, zero-initialised, W frozen (MambaPEFT's v2)
//   masked   W_eff = W + scatter(index, values), values: (k) zero-initialised at the flat
//            row-major indices `index` of W, W frozen (SDT: the optimizer state is sized k)
// The model runs on effective weights: the base tensors, except that a tensor with delta or
// masked entries is its own copy W + terms (sync() recomputes it after each optimizer step).
// The model's gradient of an effective tensor is the delta's gradient as it is, and the masked
// values' gradient gathered at their index (gather_grads()). A bias the model lacks (conv1d.bias
// with use_conv_bias false: BitFit) is created as zeros; a direct entry on it acts as a delta
// on zero, which is the same thing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/trainable.h"

namespace ssmtune {

enum class TuneMode { Direct, Delta, Masked };
const char* tune_mode_name(TuneMode mode);  // "direct", "delta", "masked"

struct TunedTensor {
  std::string name;    // trainable name, unique: "partial.backbone.layers.0.mixer.A_log"
  std::string tensor;  // the HF tensor it acts on: "backbone.layers.0.mixer.A_log"
  TuneMode mode = TuneMode::Delta;
  Tensor index;  // masked only: (k) I64, strictly ascending flat indices into the tensor
  double lr_multiplier = 1.0;
  std::optional<double> weight_decay_multiplier;
  // Set by ParamTuning: direct: the model's tensor; delta: shape of W; masked: (k).
  Tensor value, grad;
};

class ParamTuning {
 public:
  // Checks every entry against the model (the tensor exists or is a creatable bias, indices in
  // range and ascending, no element under two delta/masked entries) and allocates values and
  // gradients as zeros (direct values are the base tensors). UsageError on a bad entry.
  // `base` must outlive this object; direct entries update it in place.
  ParamTuning(const ModelConfig& cfg, ModelWeights& base, std::vector<TunedTensor> entries,
              Backend& be);

  // The weights the model runs on (current after sync()), and the gradients it accumulates
  // into: defined exactly for the tuned tensors.
  const ModelWeights& weights() const { return eff_; }
  ModelWeights& grads() { return grads_; }
  void sync();
  // After backward: masked values' gradients from the dense gradients of their tensors.
  void gather_grads();
  void zero_grads();

  std::vector<TunedTensor>& entries() { return entries_; }
  const std::vector<TunedTensor>& entries() const { return entries_; }
  void append_trainables(std::vector<TrainableParam>& out);

  // Writes W_eff of every tuned tensor into `w` (a copy of the base with the same config):
  // the exact merge. Creates the biases it created, setting cfg.use_conv_bias / cfg.use_bias
  // (use_bias covers in_proj and out_proj: the other one is created as zeros).
  void merge_into(ModelConfig& cfg, ModelWeights& w) const;

 private:
  Backend& be_;
  std::vector<TunedTensor> entries_;
  ModelWeights eff_, grads_;
  // One tuned HF tensor: its handles in base_ (undefined when created), eff_ and grads_, set
  // up once, so sync() and gather_grads() need no lookup by slot.
  struct Target {
    Tensor base, eff, grad;
    bool created = false;   // absent in the model, created as zeros
    bool own_copy = false;  // eff is its own tensor (some delta/masked entry, or created)
  };
  std::map<std::string, Target> targets_;  // by HF name
};

// In an adapter directory: ssmtune_params.safetensors holds every entry's value under its
// name, masked entries' indices under "<name>.index" (I64), and metadata
// "ssmtune.param_tuning" = {"entries": [{"name", "tensor", "mode"}...], ...extra}.
inline constexpr const char* kParamTuningFile = "ssmtune_params.safetensors";
// `extra` (a JSON object) goes into the metadata beside "entries" (SDT's phase and settings).
void write_param_tuning(const std::filesystem::path& dir, const ParamTuning& pt,
                        const std::string& extra_json = "{}",
                        const std::map<std::string, std::string>& metadata = {});
// The entries of a saved file, values and indices read and checked (names unique, shapes
// match the model's tensors, indices in range and ascending); null when `dir` has no such
// file. `extra_json` receives the metadata's extra part. Errors name the file and the tensor.
struct SavedParamTuning {
  std::vector<TunedTensor> entries;  // value holds the saved value (F32 or F64 as asked)
  std::string extra_json;
};
std::optional<SavedParamTuning> read_param_tuning(const std::filesystem::path& dir,
                                                  const ModelConfig& cfg, DType dtype);

}  // namespace ssmtune
