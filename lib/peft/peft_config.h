// What the "peft" section of an experiment config says: which methods train (docs/config.md).
#pragma once

#include <optional>
#include <string>

#include "peft/lora_config.h"

namespace ssmtune {

struct PeftConfig {
  std::optional<LoraConfig> lora;  // present = LoRA on
  bool full = false;               // full fine-tuning: every base tensor trains
  bool initial_state = false;      // initial-state tuning: a learned h_0 per layer (E, N)
  std::string state_offset;        // state-offset tuning: "" (off), "h" (E, N) or "y" (E)
  std::string init_from;           // adapter directory to start from, or ""
};

}  // namespace ssmtune
