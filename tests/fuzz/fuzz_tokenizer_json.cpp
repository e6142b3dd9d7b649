// Fuzz target: a Hugging Face tokenizer.json with tokenizer_config.json and
// special_tokens_map.json, through load_tokenizer as every command loads a model's tokenizer,
// then the fuzzed text encoded and decoded with it.
// Input: tokenizer.json [sep tokenizer_config.json [sep special_tokens_map.json [sep text]]].
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "fuzz_files.h"
#include "tokenizer_check.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ssmtune::fuzz::ScratchDir dir;
  const auto parts = ssmtune::fuzz::split_files(data, size, 4);
  dir.write({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}, parts);
  try {
    const auto tok = ssmtune::load_tokenizer(dir.path().string());
    ssmtune::fuzz::exercise_tokenizer(*tok, parts.size() > 3 ? parts[3] : "Hello world");
  } catch (const ssmtune::Error&) {  // the expected refusal of a bad file
  }
  return 0;
}
