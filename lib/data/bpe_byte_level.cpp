#include "data/bpe_byte_level.h"

#include <array>

#include "data/unicode.h"

namespace ssmtune::byte_level {

namespace {

// The 256 characters are all below U+0144 (U+0100 + 68).
constexpr char32_t kCharLimit = 0x144;

struct Tables {
  std::array<std::string, 256> byte_chars;
  std::array<int, kCharLimit> char_bytes{};  // -1: not a byte-level character
};

const Tables& tables() {
  static const Tables t = [] {
    Tables t;
    t.char_bytes.fill(-1);
    char32_t next_extra = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? char32_t(b) : next_extra++;
      unicode::append_utf8(t.byte_chars[b], cp);
      t.char_bytes[cp] = b;
    }
    return t;
  }();
  return t;
}

// The byte a character stands for, or -1 (invalid bytes included).
int char_byte(char32_t cp) { return cp < kCharLimit ? tables().char_bytes[cp] : -1; }

enum class CharClass { kOther, kLetter, kNumber, kSpace };

CharClass classify(char32_t cp) {
  if (cp < 0x80) {  // fast path for ASCII
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (unicode::is_letter(cp)) return CharClass::kLetter;
  if (unicode::is_number(cp)) return CharClass::kNumber;
  if (unicode::is_white_space(cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

// End of the run of characters of class `cls` starting at `pos`.
std::size_t run_end(std::string_view text, std::size_t pos, CharClass cls) {
  while (pos < text.size()) {
    const auto ch = unicode::decode_utf8(text, pos);
    if (classify(ch.code_point) != cls) break;
    pos += ch.length;
  }
  return pos;
}

// End of the pattern's match at `pos`: the alternatives tried in order, as Oniguruma does.
std::size_t match_end(std::string_view text, std::size_t pos) {
  const auto first = unicode::decode_utf8(text, pos);
  if (first.code_point == '\'' && pos + 1 < text.size()) {
    const std::string_view rest = text.substr(pos + 1);
    for (std::string_view suffix : {"s", "t", "re", "ve", "m", "ll", "d"})
      if (rest.starts_with(suffix)) return pos + 1 + suffix.size();
  }
  if (first.code_point == ' ' && pos + 1 < text.size()) {  // " ?" then a letter/number/other run
    const auto second = unicode::decode_utf8(text, pos + 1);
    const CharClass cls = classify(second.code_point);
    if (cls != CharClass::kSpace) return run_end(text, pos + 1, cls);
  }
  const CharClass cls = classify(first.code_point);
  if (cls != CharClass::kSpace) return run_end(text, pos, cls);
  // \s+(?!\S): the whole run if it ends the text or, when it has two or more characters,
  // all but its last one (left to join the word after it); else \s+ takes the lone one.
  std::size_t last_start = pos, end = pos;
  while (end < text.size()) {
    const auto ch = unicode::decode_utf8(text, end);
    if (classify(ch.code_point) != CharClass::kSpace) break;
    last_start = end;
    end += ch.length;
  }
  if (end == text.size()) return end;
  return last_start > pos ? last_start : end;
}

}  // namespace

const std::string& byte_char(std::uint8_t b) { return tables().byte_chars[b]; }

void append_byte_chars(std::string_view bytes, std::string& out) {
  const auto& chars = tables().byte_chars;
  for (char c : bytes) out += chars[static_cast<unsigned char>(c)];
}

void append_token_bytes(std::string_view token, std::string& out) {
  const std::size_t start = out.size();
  for (std::size_t pos = 0; pos < token.size();) {
    const auto ch = unicode::decode_utf8(token, pos);
    const int b = char_byte(ch.code_point);
    if (b < 0) {  // not a byte-level token: its own bytes
      out.resize(start);
      out.append(token);
      return;
    }
    out += static_cast<char>(b);
    pos += ch.length;
  }
}

void split_gpt2(std::string_view text, std::vector<std::string_view>& pieces) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = match_end(text, pos);
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
}

}  // namespace ssmtune::byte_level
