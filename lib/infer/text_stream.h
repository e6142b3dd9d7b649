// Generated tokens -> text, incrementally: decodes the whole continuation after every token
// (so a character whose UTF-8 bytes span several tokens comes out whole), finds stop strings
// and passes on only text that is final: never an incomplete UTF-8 sequence or a U+FFFD that
// the next token may complete, never a tail that could be the start of a stop string.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace ssmtune {

// Length of the longest prefix of `text` that later bytes cannot change: drops a trailing
// incomplete UTF-8 sequence and trailing U+FFFD replacement characters (what a decoder that
// replaces invalid bytes makes of a partial character).
std::size_t utf8_stable_length(std::string_view text);

class TextStream {
 public:
  // Stop strings must be non-empty. on_text (may be empty) receives the final text in pieces.
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop,
             std::function<void(const std::string& piece)> on_text);

  // Appends a generated token. Returns true when the text now contains a stop string: text()
  // is then cut before its earliest occurrence, everything before it has been passed on, and
  // nothing more may be pushed.
  bool push(std::int64_t id);
  // End of generation without a stop string: passes on the text held back so far.
  void finish();

  // The continuation decoded so far (cut before the stop string once one was found).
  const std::string& text() const { return text_; }
  const std::vector<std::int64_t>& ids() const { return ids_; }

 private:
  void emit_up_to(std::size_t end);

  const Tokenizer& tokenizer_;
  std::vector<std::string> stop_;
  std::function<void(const std::string&)> on_text_;
  std::vector<std::int64_t> ids_;
  std::string text_;
  std::size_t emitted_ = 0;  // bytes of text_ passed to on_text_
  bool stopped_ = false;
};

}  // namespace ssmtune
