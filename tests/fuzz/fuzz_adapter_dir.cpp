// Fuzz target: an adapter directory (LoRA/DoRA in PEFT's layout and every other method's
// file), through load_model_with_adapter on a fixture base model, as `ssmtune eval`,
// `generate` and `merge-adapter` load `--adapter DIR`.
// Input: "<base model>[ bf16]" sep adapter_config.json sep adapter_model.safetensors sep ...
// (fuzz_setups.h kAdapterFiles; empty parts are absent files).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "backend/backend.h"
#include "core/error.h"
#include "fuzz_files.h"
#include "fuzz_setups.h"
#include "peft/merge.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ssmtune;
  static fuzz::ScratchDir dir;
  static const std::unique_ptr<Backend> be = make_cpu_backend();
  const auto parts = fuzz::split_files(data, size, fuzz::kAdapterFiles.size() + 1);
  std::string model(parts[0]);
  const bool bf16 = model.ends_with(" bf16");
  if (bf16) model.resize(model.size() - 5);
  if (std::find(fuzz::kBaseModels.begin(), fuzz::kBaseModels.end(), model) ==
      fuzz::kBaseModels.end())
    return 0;
  dir.write(fuzz::kAdapterFiles, {parts.begin() + 1, parts.end()});
  try {
    (void)load_model_with_adapter((fuzz::fixtures_dir() / model).string(), dir.path().string(), *be,
                                  bf16 ? DType::BF16 : DType::F32);
  } catch (const Error&) {  // the expected refusal of a bad adapter
  }
  return 0;
}
