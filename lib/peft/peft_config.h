// What the "peft" section of an experiment config says: which methods train (docs/config.md).
#pragma once

#include <optional>
#include <string>

#include "peft/lora_config.h"

namespace ssmtune {

struct PeftConfig {
  std::optional<LoraConfig> lora;  // present = LoRA on
  bool full = false;               // full fine-tuning: every base tensor trains
  std::string init_from;           // adapter directory to start from, or ""
};

}  // namespace ssmtune
