// What the "peft" section of an experiment config says: which methods train (docs/config.md).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "peft/lora_config.h"

namespace ssmtune {

// Partial tuning and BitFit (docs/methods.md section 2): base tensors made trainable.
struct PartialConfig {
  // Tensor names relative to a layer (A_log, D, conv1d, conv1d.bias, dt_proj, dt_proj.bias,
  // in_proj, in_proj.bias, x_proj, out_proj, out_proj.bias, norm), optionally prefixed by
  // "layers.I." / "layers.I-J.", or model-level (embeddings, norm_f, lm_head).
  std::vector<std::string> tensors;
  // "direct": the tensor itself trains; "delta": a zero-initialised delta beside the frozen
  // tensor (MambaPEFT's v2), so weight decay pulls toward the pretrained value.
  std::string mode = "direct";
  // Per-entry-of-`tensors` multipliers of optimizer.lr and optimizer.weight_decay. A weight
  // decay multiplier given here overrides optimizer.no_decay for that tensor.
  std::map<std::string, double> lr_multipliers, weight_decay_multipliers;
};

// Sparse Dimension Tuning (docs/methods.md section 3): warmup, selection, reset, masked training.
struct SdtConfig {
  std::int64_t warmup_steps = 250;       // P1: 250 (GLUE), 500 (generation tasks)
  double channel_freeze_fraction = 0.99;  // P1 freezes 99% of the channels
  double state_freeze_fraction = 0.75;    // P1: 75 / 90 / 95%
};

// Parallel adapter beside out_proj (MambaPEFT; docs/methods.md section 7).
struct ParallelAdapterConfig {
  std::int64_t rank = 32;  // r, the bottleneck width
  double scale = 0.1;      // s
  double dropout = 0.1;    // on the ReLU output, while training
};

// Additional scan (MambaPEFT; docs/methods.md section 6): n extra states per layer sharing dt.
struct AdditionalScanConfig {
  std::int64_t states = 8;  // n
  // "copy": A_log_add[d, j] = A_log[d, 0] (MambaPEFT); "s4d": log(N + 1 + j) (S4D-real style).
  std::string init = "copy";
};

// Virtual tokens (docs/methods.md section 5): prompt tuning, prefix tuning (per layer), affix
// tuning.
struct VirtualTokensConfig {
  std::int64_t prompt_tokens = 0;  // T of prompt tuning, 0 = off
  std::string prompt_init_text;    // "" = the embeddings of T random vocabulary tokens
  std::vector<std::int64_t> prompt_init_ids;  // the text's ids, set by whoever has the tokenizer
  std::int64_t prefix_tokens = 0;  // T per layer of prefix tuning, 0 = off
  std::int64_t affix_tokens = 0;   // T per layer of affix tuning, 0 = off
  bool any() const { return prompt_tokens > 0 || prefix_tokens > 0 || affix_tokens > 0; }
};

struct PeftConfig {
  std::optional<LoraConfig> lora;  // present = LoRA on
  bool full = false;               // full fine-tuning: every base tensor trains
  std::optional<PartialConfig> partial;  // present = partial tuning on
  bool bitfit = false;             // BitFit (P1): conv1d and dt_proj biases, created if absent
  std::optional<SdtConfig> sdt;    // present = SDT on (with lora: SDLoRA)
  std::optional<ParallelAdapterConfig> parallel_adapter;  // present = on
  std::optional<AdditionalScanConfig> additional_scan;    // present = on
  VirtualTokensConfig virtual_tokens;  // prompt / prefix / affix tuning, each off at 0 tokens
  bool initial_state = false;      // initial-state tuning: a learned h_0 per layer (E, N)
  bool initial_conv_state = false;  // and a learned conv state per layer (K-1, E)
  std::string state_offset;        // state-offset tuning: "" (off), "h" (E, N) or "y" (E)
  std::string init_from;           // adapter directory to start from, or ""
};

}  // namespace ssmtune
