// Fuzz target: a SentencePiece tokenizer.model with tokenizer_config.json, through
// load_tokenizer (a directory without tokenizer.json), then the fuzzed text encoded and decoded.
// Input: tokenizer.model [sep tokenizer_config.json [sep text]] (fuzz_files.h).
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "fuzz_files.h"
#include "tokenizer_check.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ssmtune::fuzz::ScratchDir dir;
  const auto parts = ssmtune::fuzz::split_files(data, size, 3);
  dir.write({"tokenizer.model", "tokenizer_config.json"}, parts);
  try {
    const auto tok = ssmtune::load_tokenizer(dir.path().string());
    ssmtune::fuzz::exercise_tokenizer(*tok, parts.size() > 2 ? parts[2] : "Hello world");
  } catch (const ssmtune::Error&) {  // the expected refusal of a bad file
  }
  return 0;
}
