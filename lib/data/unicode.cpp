#include "data/unicode.h"

#include <algorithm>
#include <array>
#include <span>

#include "data/unicode_tables.h"

namespace ssmtune::unicode {

namespace {

using unicode_tables::CodePointRange;

// The well-formed sequence at text[pos] (returns its length > 0 and sets code_point), or the
// negated length of its maximal ill-formed prefix (Unicode 15 section 3.9, "maximal subpart").
int well_formed_length(std::string_view text, std::size_t pos, char32_t& code_point) {
  const unsigned b0 = static_cast<unsigned char>(text[pos]);
  if (b0 < 0x80) {
    code_point = b0;
    return 1;
  }
  int n = 0;
  char32_t cp = 0;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs
    if (b0 == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    return -1;
  }
  for (int i = 1; i < n; ++i) {
    if (pos + i >= text.size()) return -i;
    const unsigned b = static_cast<unsigned char>(text[pos + i]);
    if (b < lo || b > hi) return -i;
    lo = 0x80, hi = 0xBF;
    cp = (cp << 6) | (b & 0x3F);
  }
  code_point = cp;
  return n;
}

std::uint8_t range_value(std::span<const CodePointRange> ranges, char32_t cp) {
  // The last range starting at or before cp.
  auto it = std::upper_bound(ranges.begin(), ranges.end(), cp,
                             [](char32_t c, const CodePointRange& r) { return c < r.first; });
  if (it == ranges.begin()) return 0;
  --it;
  return cp <= it->last ? it->value : 0;
}

// Flags of the Basic Multilingual Plane, looked up once per character of every text.
const std::array<std::uint8_t, 0x10000>& bmp_flags() {
  static const auto table = [] {
    std::array<std::uint8_t, 0x10000> t{};
    for (const CodePointRange& r : unicode_tables::kClassRanges) {
      if (r.first >= 0x10000) break;
      for (char32_t c = r.first; c <= r.last && c < 0x10000; ++c) t[c] = r.value;
    }
    return t;
  }();
  return table;
}

}  // namespace

Utf8Char decode_utf8(std::string_view text, std::size_t pos) {
  char32_t cp = 0;
  const int n = well_formed_length(text, pos, cp);
  if (n > 0) return {cp, std::size_t(n)};
  return {kInvalidByte | static_cast<unsigned char>(text[pos]), 1};
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp & kInvalidByte) {
    out += static_cast<char>(cp & 0xFF);
  } else if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    char32_t cp = 0;
    const int n = well_formed_length(bytes, pos, cp);
    if (n > 0) {
      out.append(bytes.substr(pos, std::size_t(n)));
      pos += std::size_t(n);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      pos += std::size_t(-n);
    }
  }
  return out;
}

std::uint8_t char_flags(char32_t cp) {
  if (cp < 0x10000) return bmp_flags()[cp];
  if (cp & kInvalidByte) return 0;
  return range_value(unicode_tables::kClassRanges, cp);
}

bool is_letter(char32_t cp) { return char_flags(cp) & unicode_tables::kLetter; }
bool is_number(char32_t cp) { return char_flags(cp) & unicode_tables::kNumber; }
bool is_white_space(char32_t cp) { return char_flags(cp) & unicode_tables::kWhiteSpace; }
bool is_word_char(char32_t cp) { return char_flags(cp) & unicode_tables::kWord; }

std::uint8_t combining_class(char32_t cp) {
  if (cp < 0x300 || (cp & kInvalidByte)) return 0;
  return range_value(unicode_tables::kCombiningClassRanges, cp);
}

}  // namespace ssmtune::unicode
