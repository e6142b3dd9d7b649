// The directories the adapter and checkpoint targets read, shared with the seed maker so the
// seeds it writes are inputs the targets take: which file each framed part becomes, and the
// methods of the run whose checkpoints are read (fuzz_files.h "framing").
#pragma once
#include <string>
#include <vector>

#include "peft/peft_config.h"

namespace ssmtune::fuzz {

// An adapter directory, in framing order (after the base model's name).
inline const std::vector<std::string> kAdapterFiles = {"adapter_config.json",
                                                       "adapter_model.safetensors",
                                                       "ssmtune_state.safetensors",
                                                       "ssmtune_params.safetensors",
                                                       "ssmtune_parallel_adapter.safetensors",
                                                       "ssmtune_additional_scan.safetensors",
                                                       "ssmtune_virtual_tokens.safetensors"};

// A checkpoint directory, in framing order (after the byte that picks the run's methods).
inline std::vector<std::string> checkpoint_files() {
  std::vector<std::string> files = {"trainer_state.json", "optimizer.safetensors"};
  files.insert(files.end(), kAdapterFiles.begin(), kAdapterFiles.end());
  return files;
}

// The base models the adapter target loads (tests/fixtures/<name>); the checkpoint target's
// run is on the first.
inline const std::vector<std::string> kBaseModels = {"mamba-tiny", "jamba-tiny", "mamba2-tiny"};

// Runs on mamba-tiny whose checkpoints the checkpoint target reads: together they write every
// file of a checkpoint (LoRA, DoRA, SDT's phases, partial tuning, the state methods, the
// parallel adapter, the additional scan, virtual tokens). Tiny ranks keep the seeds small.
inline std::vector<PeftConfig> checkpoint_peft_configs() {
  PeftConfig lora_mix;
  lora_mix.lora = LoraConfig{};
  lora_mix.lora->targets = {"in_proj", "x_proj.dt", "embeddings"};
  lora_mix.lora->rank = 2;
  lora_mix.partial = PartialConfig{};
  lora_mix.partial->tensors = {"A_log", "layers.0.D"};
  lora_mix.partial->mode = "delta";
  lora_mix.initial_state = true;
  lora_mix.state_offset = "h";
  lora_mix.parallel_adapter = ParallelAdapterConfig{2, 0.1, 0.0};

  PeftConfig dora_sdt;
  dora_sdt.lora = LoraConfig{};
  dora_sdt.lora->targets = {"out_proj"};
  dora_sdt.lora->rank = 2;
  dora_sdt.lora->dora = true;
  dora_sdt.sdt = SdtConfig{2, 0.5, 0.5};

  PeftConfig modules;
  modules.additional_scan = AdditionalScanConfig{2, "copy"};
  modules.virtual_tokens.prefix_tokens = 2;
  modules.virtual_tokens.prompt_tokens = 2;
  modules.state_offset = "y";
  modules.initial_conv_state = true;
  modules.bitfit = true;
  return {lora_mix, dora_sdt, modules};
}

}  // namespace ssmtune::fuzz
