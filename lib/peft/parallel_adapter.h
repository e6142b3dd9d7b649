// Parallel adapter (MambaPEFT, P3; docs/methods.md section 7) beside every layer's out_proj:
//   o = W_out g + s * W_up Dropout(ReLU(W_down g)),   g = y * silu(z) (tokens, E)
//   W_down (r, E): nn.Linear's default init, kaiming_uniform(a = sqrt(5)) = U(+-1/sqrt(E))
//   W_up (D, r): zero, so the model is unchanged at step 0. No biases (docs/methods.md section 7).
// Backward, with a = g W_down^T, h = dropout(relu(a)):
//   dW_up += s dO^T h,  dh = s dO W_up,  da = dropout'(dh) * [a > 0],  dW_down += da^T g,
//   dg += da W_down.
// Not mergeable (the ReLU): merge-adapter refuses it. Implements the model's LinearHook.
// Beside the Mamba and Mamba-2 mixers' out_proj only (on Jamba: not beside attention's o_proj;
// on Mamba-2, g is out_proj's input, the gated norm's output).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/rng.h"
#include "model/linear_hook.h"
#include "model/model_config.h"
#include "peft/peft_config.h"
#include "peft/peft_method.h"
#include "peft/trainable.h"

namespace ssmtune {

class ParallelAdapter final : public LinearHook, public PeftMethod {
 public:
  // Zero-filled parameters: call init() or load into them. dtype: F32 or F64.
  ParallelAdapter(const ModelConfig& cfg, const ParallelAdapterConfig& config, DType dtype,
                  Backend& be);
  void init(std::uint64_t seed);
  void set_training(bool training, Rng* dropout_rng) override;
  void set_recomputing(bool on) override { recomputing_ = on; }
  const ParallelAdapterConfig& config() const { return config_; }
  // "parallel_adapter.layers.I.down" (r, E), ".up" (D, r)
  void append_trainables(std::vector<TrainableParam>& out) override;

  // PeftMethod: init(seed) above; its method file (below); not linear (the ReLU), so it stays
  // beside the merged weights as a linear hook.
  LinearHook* linear_hook() override { return this; }
  void init(const ModelWeights&, std::uint64_t seed) override { init(seed); }
  void save(const std::filesystem::path& dir, const AdapterInfo& info) override;
  void load(const std::filesystem::path& dir) override;
  std::string unmergeable_reason() const override;
  std::vector<std::string> summary() override;

  void linear_forward(const LinearSite& site, const Tensor& x,
                      std::vector<LinearPart>& out) override;
  void linear_backward(const LinearSite& site, const Tensor& x,
                       const std::vector<LinearPart>& dout, Tensor& dx) override;
  void embedding_forward(const Tensor&, Tensor&) override {}
  void embedding_backward(const Tensor&, const Tensor&) override {}

 private:
  struct Layer {
    Tensor down, up, ddown, dup;
    Tensor a, h;        // (tokens, r) saved by forward: pre-ReLU and dropout(relu(a))
    Tensor keep_scale;  // (tokens, r) the dropout mask, or undefined
  };
  ParallelAdapterConfig config_;
  Backend& be_;
  std::vector<Layer> layers_;  // per layer of the model; attention layers' stay undefined
  bool training_ = false;
  Rng* dropout_rng_ = nullptr;
  bool recomputing_ = false;  // LinearHook::set_recomputing
};

// In an adapter directory: ssmtune_parallel_adapter.safetensors (method_file.h), settings
// {"rank", "scale", "dropout"}. read: null when the file is absent; errors name the file.
void write_parallel_adapter(const std::filesystem::path& dir, ParallelAdapter& pa,
                            const std::map<std::string, std::string>& metadata = {});
std::unique_ptr<ParallelAdapter> read_parallel_adapter(const std::filesystem::path& dir,
                                                       const ModelConfig& cfg, DType dtype,
                                                       Backend& be);

}  // namespace ssmtune
