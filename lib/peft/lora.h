// LoRA (docs/methods.md section 1; Hu et al. 2021, PEFT's LoraLayer): beside a frozen W (out, in),
//   y = x W^T + s * dropout(x) A^T B^T,   A: (r, in), B: (rows, r), s = alpha / r (rsLoRA:
//   alpha / sqrt(r)),
// on any Mamba projection or on a slice of one (in_proj.x, in_proj.z, x_proj.dt, x_proj.B,
// x_proj.C), where B covers only the slice's rows of W; and on the embedding, as PEFT does it
// (lora_embedding_A: (r, V), lora_embedding_B: (D, r), no dropout). Implements the model's
// LinearHook; forward saves U = dropout(x) A^T for backward:
//   dB += s dY^T U,  dU = s dY B,  dA += dU^T dropout(x),  dx += dropout'(dU A).
// With peft.lora.dora a term is DoRA instead (whole modules only; the math is in dora.h): it
// also trains a magnitude m per output row and needs its module's base weight W, which the
// hook interface does not pass, so the LoraModel is given the model's weights
// (set_base_weights) and reads W from them at every forward: the norms ||W + s B A||_row follow
// every change of A and B without any cache to invalidate. The hook runs only where the model
// trains (and in tests): eval and generate run on merged weights, so this costs a few weight-
// sized products per training step, small beside the tokens x weight products of the step.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/rng.h"
#include "model/linear_hook.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/lora_config.h"
#include "peft/peft_method.h"
#include "peft/trainable.h"

namespace ssmtune {

struct LoraTerm {
  std::string name;         // ssmtune's name: "layers.3.in_proj.x", "embeddings"
  std::string module;       // the HF module it sits on: "backbone.layers.3.mixer.in_proj"
  std::int64_t layer = -1;  // -1 for the embedding
  LinearSite site;          // the linear layer it sits beside (index -1 for the embedding)
  bool embedding = false;
  std::int64_t row0 = 0, rows = 0;  // the weight rows it updates (all rows: [0, out))
  std::int64_t module_rows = 0;     // the weight's row count (out), for the PEFT layout
  std::int64_t in = 0, rank = 0;
  double scale = 1;
  // Linear: A (r, in), B (rows, r). Embedding: A holds lora_embedding_A transposed, (V, r),
  // so the forward is a row lookup; B is lora_embedding_B (D, r).
  Tensor A, B, dA, dB;
  Tensor U;           // (tokens, r) saved by forward
  Tensor x_dropped;   // (tokens, in) dropout(x), saved by forward when dropout is on
  Tensor keep_scale;  // (tokens, in) 0 or 1/(1-p), the dropout mask
  // DoRA only (undefined otherwise): the magnitude m (rows) and its gradient, and n (rows) =
  // ||W + s B A||_row as the last forward computed it, the constant backward uses (PEFT
  // detaches it).
  Tensor magnitude, dmagnitude, norm;
  bool dora() const { return magnitude.defined(); }
};

// The targets the model's linear sites offer, in site order: "in_proj, in_proj.x, in_proj.z,
// x_proj, ..." (the module names alone when `with_slices` is false).
std::string lora_target_names(const std::vector<LinearSite>& sites, bool with_slices);

// The terms a LoraConfig asks for on a model, with zero-filled tensors (shapes only).
// Throws UsageError for an unknown target, a target that matches nothing, two targets that
// update the same rows of one module, or a slice / the embedding with DoRA. dtype: F32 or F64.
// device_free_bytes: Backend::free_device_bytes of the backend that will hold them.
std::vector<LoraTerm> plan_lora_terms(const ModelConfig& cfg, const LoraConfig& lora, DType dtype,
                                      std::uint64_t device_free_bytes = UINT64_MAX);

class LoraModel final : public LinearHook, public PeftMethod {
 public:
  // The terms `lora` asks for (plan_lora_terms), zero-filled: call init() or load into them.
  LoraModel(const ModelConfig& cfg, const LoraConfig& lora, DType dtype, Backend& be);
  // Given terms (read from an adapter file for a model with config `cfg`); their dA/dB (and
  // dmagnitude) are allocated here.
  LoraModel(const ModelConfig& cfg, LoraConfig lora, std::vector<LoraTerm> terms, Backend& be);

  // The weights the model runs on, from which DoRA terms read their module's W (the layer's
  // in_proj, x_proj, ... tensor; its shape is checked at each use). Needed before init() and
  // forward when any term is DoRA; `w` must outlive this object and hold, for every DoRA
  // module, the weight the model multiplies by (PeftModel refuses to train such a weight).
  void set_base_weights(const ModelWeights* w) { base_weights_ = w; }

  // PEFT's initialisation: "kaiming": A ~ kaiming_uniform(a = sqrt(5)) = U(+-1/sqrt(in)),
  // B = 0; "gaussian": A ~ N(0, 1/r), B = 0. Embedding terms: A = 0, B ~ N(0, 1) (PEFT's
  // reset_lora_parameters for nn.Embedding). Each term draws from its own stream of `seed`.
  // DoRA terms: m = ||W + s B A||_row = ||W||_row (PEFT's DoraLinearLayer.update_layer), so
  // the model starts exactly as the base model.
  void init(std::uint64_t seed);
  // Makes init() take the values of the adapter in `dir` instead (peft.init_from): a run that
  // continues an adapter starts, and restarts after SDT's warmup, from it.
  void set_init_from(const std::filesystem::path& dir) { init_from_ = dir; }

  // Dropout is applied while training: each mask is Backend::dropout_mask's for a key drawn
  // from `dropout_rng` (which the trainer saves in checkpoints); eval runs without it.
  void set_training(bool training, Rng* dropout_rng) override;
  void set_recomputing(bool on) override { recomputing_ = on; }

  std::vector<LoraTerm>& terms() { return terms_; }
  const std::vector<LoraTerm>& terms() const { return terms_; }
  const LoraConfig& config() const { return config_; }
  // "lora.<term name>.A" / ".B" (and ".magnitude" for DoRA): every trainable tensor with its
  // gradient.
  void append_trainables(std::vector<TrainableParam>& out) override;
  // Copies A, B (and m) of every term from `saved` (read from `file`), which must hold the same
  // terms with the same shapes: how a resume or a restart from an adapter takes its values.
  void copy_values_from(const LoraModel& saved, const std::string& file);

  // W[rows of the term] += s B A for every term (exact); a DoRA term sets its module's
  // W = m / ||W + s B A||_row * (W + s B A) row by row (exact as well). An embedding term on a
  // model with tied embeddings unties lm_head first (it keeps the original embedding), as the
  // merged weight no longer equals the head. Changes cfg.tie_word_embeddings in that case.
  void merge_into(ModelConfig& cfg, ModelWeights& w) const override;

  // PeftMethod: init() above (or from set_init_from's adapter); the adapter in PEFT's layout
  // (lora_adapter_io.h); merges exactly.
  LinearHook* linear_hook() override { return this; }
  void init(const ModelWeights& base, std::uint64_t seed) override;
  void save(const std::filesystem::path& dir, const AdapterInfo& info) override;
  void load(const std::filesystem::path& dir) override;
  std::string unmergeable_reason() const override { return ""; }
  std::vector<std::string> summary() override;

  void linear_forward(const LinearSite& site, const Tensor& x,
                      std::vector<LinearPart>& out) override;
  void linear_backward(const LinearSite& site, const Tensor& x,
                       const std::vector<LinearPart>& dout, Tensor& dx) override;
  void embedding_forward(const Tensor& ids, Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor& dout) override;

 private:
  // A DoRA term's module weight W (out, in) in base_weights_ (checked: set, right shape), in
  // the compute dtype (widened from bf16 when the frozen weights are held so).
  Tensor base_weight(const LoraTerm& t) const;

  ModelConfig cfg_;  // a copy: the method may outlive the config it was made from
  LoraConfig config_;
  Backend& be_;
  std::vector<LoraTerm> terms_;
  std::filesystem::path init_from_;
  const ModelWeights* base_weights_ = nullptr;  // not owned; only DoRA terms read it
  bool training_ = false;
  Rng* dropout_rng_ = nullptr;
  bool recomputing_ = false;  // LinearHook::set_recomputing
};

}  // namespace ssmtune
