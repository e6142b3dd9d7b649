// Fuzz target: a JSONL dataset in each format (text, prompt/completion, tokens,
// classification, auto), through load_jsonl_dataset with the fixture byte-level BPE tokenizer.
// Input: one byte choosing the "data" settings, then the file's bytes.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "data/jsonl_dataset.h"
#include "fuzz_files.h"

namespace {

// The settings byte: format (bits 0-2), packing, add_eos, too_long = truncate, max_length.
ssmtune::DataConfig data_config(std::uint8_t b) {
  using ssmtune::DataFormat;
  constexpr DataFormat kFormats[] = {DataFormat::Auto, DataFormat::Text,
                                     DataFormat::PromptCompletion, DataFormat::Tokens,
                                     DataFormat::Classification};
  constexpr std::int64_t kMaxLengths[] = {2, 16, 256};
  ssmtune::DataConfig cfg;
  cfg.format = kFormats[(b & 7) % 5];
  cfg.packing = b & 8;
  cfg.add_eos = b & 16;
  cfg.too_long = b & 32 ? ssmtune::TooLong::Truncate : ssmtune::TooLong::Error;
  cfg.max_length = kMaxLengths[(b >> 6) % 3];
  return cfg;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ssmtune::fuzz::ScratchDir dir;
  static const auto tokenizer =
      ssmtune::load_tokenizer((ssmtune::fuzz::fixtures_dir() / "tokenizers/bpe").string());
  if (size == 0) return 0;
  dir.write({"train.jsonl"}, {{reinterpret_cast<const char*>(data) + 1, size - 1}});
  try {
    (void)ssmtune::load_jsonl_dataset((dir.path() / "train.jsonl").string(), data_config(data[0]),
                                      *tokenizer);
  } catch (const ssmtune::Error&) {  // the expected refusal (UsageError is one)
  }
  return 0;
}
