// What the tokenizer targets do with a tokenizer that loaded: encode the fuzzed text and decode
// the ids back, as a dataset and `ssmtune generate` would, plus ids at the vocabulary's edges.
#pragma once
#include <string_view>

#include "data/tokenizer.h"

namespace ssmtune::fuzz {

inline void exercise_tokenizer(const Tokenizer& tok, std::string_view text) {
  const auto ids = tok.encode(text);
  (void)tok.decode(ids);
  (void)tok.decode(ids, /*skip_special=*/true);
  (void)tok.decode({0, tok.vocab_size() - 1, tok.pad_id()});
  if (const auto eos = tok.eos_id()) (void)tok.decode({*eos}, /*skip_special=*/true);
}

}  // namespace ssmtune::fuzz
