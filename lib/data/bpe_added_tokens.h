// Added tokens of a tokenizer.json (special tokens, NeoX's runs of spaces) and how the
// tokenizers library finds them in text before anything else (AddedVocabulary::find_matches
// in tokenizers/src/tokenizer/added_vocabulary.rs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ssmtune {

// One entry of tokenizer.json's "added_tokens" (tokenizers' AddedToken).
struct BpeAddedToken {
  std::string content;
  std::int64_t id = 0;
  bool single_word = false;  // only matches where no word character touches it
  bool lstrip = false;       // also takes the white space before it
  bool rstrip = false;       // also takes the white space after it
  bool normalized = true;    // matched in normalized text (else in the raw text)
  bool special = false;      // dropped by decode(skip_special)
};

// Leftmost-longest search for a set of added tokens, as tokenizers' Aho-Corasick automaton
// (MatchKind::LeftmostLongest) plus its single_word / lstrip / rstrip adjustments.
class AddedTokenMatcher {
 public:
  // A stretch of text: plain text when token is null, else the token (with any white space
  // its lstrip/rstrip took).
  struct Segment {
    std::size_t begin = 0, end = 0;
    const BpeAddedToken* token = nullptr;
  };

  AddedTokenMatcher() = default;
  // tokens[i] is found where `patterns[i]` occurs (its content, NFC'd for normalized tokens).
  // Where two patterns are equal the earlier token wins. The tokens must outlive this.
  AddedTokenMatcher(const std::vector<const BpeAddedToken*>& tokens,
                    const std::vector<std::string>& patterns);

  // Splits `text` into segments, covering it in order (tokenizers' find_matches, including
  // its quirk that an rstrip token's white space may overlap the next match). Empty text
  // gives no segment.
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  // A trie over pattern bytes: child of (node, byte) and the token ending at a node.
  std::unordered_map<std::uint64_t, std::int32_t> children_;
  std::vector<const BpeAddedToken*> terminal_;  // per node; null when no pattern ends there
  bool first_byte_[256] = {};
};

}  // namespace ssmtune
