// Virtual-token methods (docs/methods.md section 5), learned vectors at the start of every
// sequence:
//   prompt tuning   P (T, D) before the embedded input, outputs dropped before norm_f.
//                   Init: the embeddings of T random vocabulary tokens, or of a given text.
//   prefix tuning   per layer P_i (T, D) before block i's input (MambaPEFT's "outer" affix),
//                   outputs there dropped. Init: embeddings of random tokens, as prompt tuning.
//   affix tuning    per layer X_i (T, E) before the x~ half of in_proj's output (MambaPEFT);
//                   the mixer runs over them and drops them before the gate. Their z half
//                   would only gate dropped outputs, so it is not a parameter. Init: zero.
//                   On Mamba-2, X_i (T, C + H): in_proj's xBC and dt_in parts (no z).
// P1 and P2 report that prompt and prefix tuning do poorly on SSMs; they are here so users can
// see it. None is mergeable. Implements the model's InputHook.
// Prefix and affix tuning act on the SSM layers: on Jamba, an attention layer gets neither
// (prefix(i), affix(i) are undefined there). Affix tokens sit inside the SSM mixer, which an
// attention layer lacks; prefix tuning is MambaPEFT's "outer" affix of a Mamba block, and the
// attention analogue (prefix keys and values, as in Li & Liang) is another method.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/input_hook.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/peft_config.h"
#include "peft/peft_method.h"
#include "peft/trainable.h"

namespace ssmtune {

class VirtualTokens final : public InputHook, public PeftMethod {
 public:
  // Zero-filled vectors for the methods `config` turns on: call init() or load into them.
  VirtualTokens(const ModelConfig& cfg, const VirtualTokensConfig& config, DType dtype,
                Backend& be);
  // `base` gives the embeddings the prompt and prefix start from.
  void init(const ModelWeights& base, std::uint64_t seed) override;
  const VirtualTokensConfig& config() const { return config_; }
  // "prompt.embeddings" (T, D), "prefix.layers.I.tokens" (T, D), "affix.layers.I.x" (T, E)
  void append_trainables(std::vector<TrainableParam>& out) override;

  // PeftMethod: init() above; its method file (below); lengthens every sequence, so it stays
  // beside the merged weights as the input hook.
  InputHook* input_hook() override { return this; }
  void save(const std::filesystem::path& dir, const AdapterInfo& info) override;
  void load(const std::filesystem::path& dir) override;
  std::string unmergeable_reason() const override;
  std::vector<std::string> summary() override;

  Tensor prompt() override { return prompt_; }
  Tensor prefix(std::int64_t layer) override;
  Tensor affix(std::int64_t layer) override;
  void prompt_backward(const Tensor& d) override;
  void prefix_backward(std::int64_t layer, const Tensor& d) override;
  void affix_backward(std::int64_t layer, const Tensor& d) override;

 private:
  VirtualTokensConfig config_;
  Backend& be_;
  Tensor prompt_, dprompt_;
  std::vector<Tensor> prefix_, dprefix_, affix_, daffix_;
};

// In an adapter directory: ssmtune_virtual_tokens.safetensors (method_file.h), settings
// {"prompt_tokens", "prefix_tokens", "affix_tokens"}. read: null when the file is absent.
void write_virtual_tokens(const std::filesystem::path& dir, VirtualTokens& vt,
                          const std::map<std::string, std::string>& metadata = {});
std::unique_ptr<VirtualTokens> read_virtual_tokens(const std::filesystem::path& dir,
                                                   const ModelConfig& cfg, DType dtype,
                                                   Backend& be);

}  // namespace ssmtune
