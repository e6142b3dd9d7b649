// LoRA adapters on disk in Hugging Face PEFT's layout, so `peft.PeftModel.from_pretrained`
// loads what ssmtune trains and ssmtune loads what PEFT trains (docs/formats.md):
//   adapter_config.json         PEFT's LoraConfig fields (peft_type "LORA", r, lora_alpha,
//                               target_modules = full module names, rank_pattern, alpha_pattern,
//                               use_rslora, use_dora, lora_dropout, ...)
//   adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r, in)
//                               base_model.model.<module>.lora_B.weight (out, r)
//                               base_model.model.<module>.lora_magnitude_vector (out), DoRA only
//                               base_model.model.backbone.embeddings.lora_embedding_A (r, V)
//                               base_model.model.backbone.embeddings.lora_embedding_B (D, r)
// PEFT has one LoRA per module, ssmtune may have several slices of one (in_proj.x and
// in_proj.z): they are written as one LoRA of rank sum(r_i) by stacking the A's and placing each
// B in its slice's rows and its own columns (zero elsewhere), which is exactly the sum of the
// slice terms because every term of a run has the same scale. The scale is kept through
// rank_pattern / alpha_pattern. The safetensors metadata "ssmtune.lora_terms" records the
// slices, so ssmtune reads its own files back term by term, bit for bit.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "model/model_config.h"
#include "peft/lora.h"

namespace ssmtune {

// Writes the two files into `dir` (which must exist), each atomically. `base_model` goes into
// base_model_name_or_path; `metadata` is added to the safetensors metadata.
void write_lora_adapter(const std::filesystem::path& dir, const LoraModel& lora,
                        const std::string& base_model,
                        const std::map<std::string, std::string>& metadata = {});

// Reads an adapter directory written by ssmtune or by PEFT for a model of config `cfg`, as
// `dtype` (F32/F64). Every tensor's module and shape is checked against the model; errors name
// the file and the tensor or field. LoRA biases, fan_in_fan_out and DoRA on the embedding are
// refused (not LoRA as ssmtune runs it). DoRA terms read back need set_base_weights() before
// they run as a hook (merge_into takes the weights it merges into).
std::unique_ptr<LoraModel> read_lora_adapter(const std::filesystem::path& dir,
                                             const ModelConfig& cfg, DType dtype, Backend& be);

// True if `dir` holds an adapter_config.json or one of the other methods' files
// (ssmtune_state / ssmtune_params / ssmtune_<method>.safetensors): how adapters are told from
// model directories.
bool is_adapter_dir(const std::filesystem::path& dir);

}  // namespace ssmtune
