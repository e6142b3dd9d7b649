#include "data/bpe_added_tokens.h"

#include <algorithm>

#include "data/unicode.h"

namespace ssmtune {

namespace {

std::uint64_t edge(std::int32_t node, unsigned char byte) {
  return (std::uint64_t(node) << 8) | byte;
}

// The last character of text[0, end): the well-formed sequence that ends exactly there, else
// the last byte on its own (ill-formed UTF-8).
unicode::Utf8Char char_before(std::string_view text, std::size_t end) {
  for (std::size_t k = 1; k <= 4 && k <= end; ++k) {
    const auto ch = unicode::decode_utf8(text, end - k);
    if (!(ch.code_point & unicode::kInvalidByte) && ch.length == k) return ch;
  }
  return {unicode::kInvalidByte | static_cast<unsigned char>(text[end - 1]), 1};
}

// Rust regex \w$ on text[0, end) and ^\w on text[begin, size).
bool ends_with_word(std::string_view text, std::size_t end) {
  return end > 0 && unicode::is_word_char(char_before(text, end).code_point);
}
bool starts_with_word(std::string_view text, std::size_t begin) {
  return begin < text.size() && unicode::is_word_char(unicode::decode_utf8(text, begin).code_point);
}

// Start of the white space that ends text[0, end) (regex \s*$).
std::size_t white_space_start(std::string_view text, std::size_t end) {
  while (end > 0) {
    const auto ch = char_before(text, end);
    if (!unicode::is_white_space(ch.code_point)) break;
    end -= ch.length;
  }
  return end;
}

// End of the white space that starts text[begin, size) (regex ^\s*).
std::size_t white_space_end(std::string_view text, std::size_t begin) {
  while (begin < text.size()) {
    const auto ch = unicode::decode_utf8(text, begin);
    if (!unicode::is_white_space(ch.code_point)) break;
    begin += ch.length;
  }
  return begin;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<const BpeAddedToken*>& tokens,
                                     const std::vector<std::string>& patterns) {
  terminal_.push_back(nullptr);  // the root
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const std::string& pattern = patterns[i];
    if (pattern.empty()) continue;
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
    std::int32_t node = 0;
    for (char c : pattern) {
      auto [it, inserted] = children_.try_emplace(edge(node, static_cast<unsigned char>(c)),
                                                  std::int32_t(terminal_.size()));
      if (inserted) terminal_.push_back(nullptr);
      node = it->second;
    }
    if (!terminal_[node]) terminal_[node] = tokens[i];
  }
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  std::size_t start_offset = 0;  // end of the previous match
  std::size_t pos = 0;
  while (pos < text.size()) {
    // The longest pattern starting at pos.
    const BpeAddedToken* token = nullptr;
    std::size_t match_len = 0;
    if (first_byte_[static_cast<unsigned char>(text[pos])]) {
      std::int32_t node = 0;
      for (std::size_t i = pos; i < text.size(); ++i) {
        auto it = children_.find(edge(node, static_cast<unsigned char>(text[i])));
        if (it == children_.end()) break;
        node = it->second;
        if (terminal_[node]) token = terminal_[node], match_len = i + 1 - pos;
      }
    }
    if (!token) {
      ++pos;
      continue;
    }
    // The automaton goes on after the raw match even when the token is discarded below or
    // its rstrip reaches further.
    std::size_t start = pos, stop = pos + match_len;
    pos = stop;
    if (token->single_word && (ends_with_word(text, start) || starts_with_word(text, stop)))
      continue;
    if (token->lstrip) start = std::max(white_space_start(text, start), start_offset);
    if (token->rstrip) stop = white_space_end(text, stop);
    if (start_offset < start) out.push_back({start_offset, start, nullptr});
    out.push_back({start, stop, token});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), nullptr});
}

}  // namespace ssmtune
