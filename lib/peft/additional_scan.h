// Additional scan (MambaPEFT, P3; docs/methods.md section 6): per layer n extra states beside the
// model's N, driven by the same u and dt:
//   B_add = u W_B^T, C_add = u W_C^T   (W_add (2n, E): rows [0, n) = W_B, [n, 2n) = W_C)
//   h_add,t = exp(dt_t A_add) h_add,t-1 + dt_t B_add,t u_t,   A_add = -exp(A_log_add) (E, n)
//   y_t += C_add,t h_add,t      (before the gate; the extra states carry no D skip)
// which is exactly a scan with N + n states, since states do not interact. It runs as a second
// selective scan (the backend's op), so its backward is the scan's own. Init (P2's choice,
// docs/methods.md section 6): A_log_add copies A_log[:, 0] ("copy", MambaPEFT) or
// log(N+1..N+n) ("s4d"); W_B kaiming-uniform, W_C zero, so the model is unchanged at step 0.
// Not mergeable into a model of the original d_state: merge-adapter refuses it.
// Implements the model's ScanHook; in recurrent decoding it carries h_add (E, n). Acts on the
// SSM layers (on Jamba: not the attention layers, which have no scan). On Jamba the extra
// B_add and C_add take no RMSNorm: they are new projections, not the mixer's normed B and C.
// On Mamba-2 (docs/methods.md section 10) the decay is one scalar per head, as the SSD needs:
// A_log_add (H), h_add (H, P, n) per sequence, B_add and C_add one group shared by every head,
// driven by the SSD's x and dt: a second SSD without D. Init "copy" only (A_log_add = the
// head's A_log); "s4d" sets a decay per state, which a per-head decay cannot hold: refused.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "model/scan_hook.h"
#include "peft/peft_config.h"
#include "peft/peft_method.h"
#include "peft/trainable.h"

namespace ssmtune {

class AdditionalScan final : public ScanHook, public PeftMethod {
 public:
  // Zero-filled parameters: call init() or load into them. dtype: F32 or F64.
  AdditionalScan(const ModelConfig& cfg, const AdditionalScanConfig& config, DType dtype,
                 Backend& be, std::int64_t scan_chunk = 64);
  // `base` gives A_log for the "copy" init.
  void init(const ModelWeights& base, std::uint64_t seed) override;
  const AdditionalScanConfig& config() const { return config_; }
  // "additional_scan.layers.I.A_log" (E, n) (Mamba-2: (H)), "additional_scan.layers.I.x_proj"
  // (2n, E)
  void append_trainables(std::vector<TrainableParam>& out) override;

  // PeftMethod: init() above; its method file (below); more states than the model's d_state,
  // so it stays beside the merged weights as a scan hook.
  ScanHook* scan_hook() override { return this; }
  void save(const std::filesystem::path& dir, const AdapterInfo& info) override;
  void load(const std::filesystem::path& dir) override;
  std::string unmergeable_reason() const override;
  std::vector<std::string> summary() override;

  Tensor initial_state(std::int64_t, std::int64_t) override { return Tensor(); }
  void initial_state_backward(std::int64_t, const Tensor&) override {}
  Shape carried_state_shape(std::int64_t) const override;
  void output_forward(std::int64_t layer, const ScanIO& in, Tensor& y, Tensor* carry) override;
  void output_backward(std::int64_t layer, const ScanIO& in, const Tensor& dy,
                       ScanIOGrads& grads) override;

 private:
  struct Layer {
    Tensor A_log, W, dA_log, dW;  // (E, n) or Mamba-2's (H), (2n, E)
    Tensor A, Bm, Cm, h_saved;    // saved by forward: A_log's shape, (B, L, n) x 2, checkpoints
  };
  // The extra states' scan: the selective scan (Mamba-1) or the SSD (Mamba-2) over x = in.u,
  // the layer's dt and the extra A, B, C, from h0 (undefined: zeros). y_add: (B, L, E).
  void scan_forward(Layer& l, const ScanIO& in, const Tensor& h0, std::int64_t chunk,
                    Tensor& y_add, Tensor& h_last);
  // Adds du, ddelta to grads; returns dBm, dCm (B, L, n); dA_log accumulated.
  std::pair<Tensor, Tensor> scan_backward(Layer& l, const ScanIO& in, const Tensor& dy,
                                          ScanIOGrads& grads);
  ModelConfig cfg_;  // a copy: the method may outlive the config it was made from
  AdditionalScanConfig config_;
  Backend& be_;
  std::int64_t scan_chunk_;
  std::vector<Layer> layers_;  // per layer of the model; attention layers' stay undefined
};

// In an adapter directory: ssmtune_additional_scan.safetensors (method_file.h), settings
// {"states", "init"}. read: null when the file is absent; errors name the file.
void write_additional_scan(const std::filesystem::path& dir, AdditionalScan& as,
                           const std::map<std::string, std::string>& metadata = {});
std::unique_ptr<AdditionalScan> read_additional_scan(const std::filesystem::path& dir,
                                                     const ModelConfig& cfg, DType dtype,
                                                     Backend& be);

}  // namespace ssmtune
