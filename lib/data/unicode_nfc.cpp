#include "data/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "data/unicode.h"
#include "data/unicode_tables.h"

namespace ssmtune {

namespace {

namespace tables = unicode_tables;

// Hangul syllables decompose and compose by arithmetic (Unicode 15 section 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

bool nfc_unsafe(char32_t cp) { return unicode::char_flags(cp) & tables::kNfcUnsafe; }

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto& d = tables::kDecompositions;
  auto it =
      std::lower_bound(d.begin(), d.end(), cp,
                       [](const tables::Decomposition& e, char32_t c) { return e.code_point < c; });
  if (it != d.end() && it->code_point == cp) {
    const auto parts = tables::kDecompositionPool.subspan(it->offset, it->length);
    out.insert(out.end(), parts.begin(), parts.end());
  } else {
    out.push_back(cp);
  }
}

// Canonical ordering: each run of non-starters sorted (stably) by combining class.
void canonical_order(std::vector<char32_t>& cps) {
  std::size_t i = 0;
  while (i < cps.size()) {
    if (unicode::combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < cps.size() && unicode::combining_class(cps[end]) != 0) ++end;
    std::stable_sort(cps.begin() + std::ptrdiff_t(i), cps.begin() + std::ptrdiff_t(end),
                     [](char32_t a, char32_t b) {
                       return unicode::combining_class(a) < unicode::combining_class(b);
                     });
    i = end;
  }
}

// The primary composite of first + second, or 0.
char32_t compose_pair(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount)
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 &&
      second > kTBase && second < kTBase + kTCount)
    return first + (second - kTBase);
  const auto& c = tables::kCompositions;
  auto it = std::lower_bound(c.begin(), c.end(), std::pair(first, second),
                             [](const tables::Composition& e, std::pair<char32_t, char32_t> k) {
                               return std::pair(e.first, e.second) < k;
                             });
  return it != c.end() && it->first == first && it->second == second ? it->composite : 0;
}

// Canonical composition of a decomposed, canonically ordered sequence (UAX #15 sample code):
// a character joins the last starter unless a character between them blocks it (combining
// class 0 or not lower than its own).
void compose(std::vector<char32_t>& cps) {
  if (cps.empty()) return;
  std::size_t starter = 0;
  bool have_starter = unicode::combining_class(cps[0]) == 0;
  int last_class = have_starter ? 0 : 256;
  std::size_t out = 1;
  for (std::size_t i = 1; i < cps.size(); ++i) {
    const char32_t ch = cps[i];
    const int ch_class = unicode::combining_class(ch);
    if (have_starter && (last_class < ch_class || last_class == 0)) {
      if (const char32_t composite = compose_pair(cps[starter], ch)) {
        cps[starter] = composite;
        continue;
      }
    }
    if (ch_class == 0) {
      starter = out;
      have_starter = true;
    }
    last_class = ch_class;
    cps[out++] = ch;
  }
  cps.resize(out);
}

void append_nfc_chunk(std::string_view chunk, std::string& out) {
  std::vector<char32_t> cps;
  for (std::size_t pos = 0; pos < chunk.size();) {
    const auto ch = unicode::decode_utf8(chunk, pos);
    decompose(ch.code_point, cps);
    pos += ch.length;
  }
  canonical_order(cps);
  compose(cps);
  for (char32_t cp : cps) unicode::append_utf8(out, cp);
}

}  // namespace

std::string nfc(std::string_view text) {
  // A character that NFC leaves alone and that nothing before it can combine with splits the
  // text into independent chunks; only chunks holding an "unsafe" character need the work.
  std::string out;
  std::size_t copied = 0;     // text[0, copied) is in `out`
  std::size_t last_safe = 0;  // start of the last safe character (chunk start)
  std::size_t pos = 0;
  while (pos < text.size()) {
    const auto ch = unicode::decode_utf8(text, pos);
    if (!nfc_unsafe(ch.code_point)) {
      last_safe = pos;
      pos += ch.length;
      continue;
    }
    std::size_t end = pos + ch.length;
    while (end < text.size()) {
      const auto next = unicode::decode_utf8(text, end);
      if (!nfc_unsafe(next.code_point)) break;
      end += next.length;
    }
    const std::size_t start = std::max(last_safe, copied);
    if (out.empty()) out.reserve(text.size() + 16);
    out.append(text.substr(copied, start - copied));
    append_nfc_chunk(text.substr(start, end - start), out);
    copied = end;
    pos = end;
  }
  if (copied == 0) return std::string(text);
  out.append(text.substr(copied));
  return out;
}

}  // namespace ssmtune
