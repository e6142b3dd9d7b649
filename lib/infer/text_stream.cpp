#include "infer/text_stream.h"

#include <algorithm>
#include <utility>

#include "core/error.h"

namespace ssmtune {

namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

// Bytes at the end of `text` that are an incomplete UTF-8 sequence (0 if none).
std::size_t incomplete_tail(std::string_view text) {
  for (std::size_t back = 1; back <= 3 && back <= text.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: the lead is further back
    const std::size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;  // no lead byte within 3 bytes: invalid, not incomplete; nothing to wait for
}

// Longest l < |s| such that `text` ends with the first l bytes of some stop string s.
std::size_t stop_prefix_tail(std::string_view text, const std::vector<std::string>& stop) {
  std::size_t longest = 0;
  for (const std::string& s : stop)
    for (std::size_t l = std::min(s.size() - 1, text.size()); l > longest; --l)
      if (text.substr(text.size() - l) == std::string_view(s).substr(0, l)) {
        longest = l;
        break;
      }
  return longest;
}

}  // namespace

std::size_t utf8_stable_length(std::string_view text) {
  std::size_t end = text.size();
  for (bool changed = true; changed;) {
    const std::size_t before = end;
    while (end >= kReplacementChar.size() && text.substr(0, end).ends_with(kReplacementChar))
      end -= kReplacementChar.size();
    end -= incomplete_tail(text.substr(0, end));
    changed = end != before;
  }
  return end;
}

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop,
                       std::function<void(const std::string& piece)> on_text)
    : tokenizer_(tokenizer), stop_(std::move(stop)), on_text_(std::move(on_text)) {
  for (const std::string& s : stop_) check(!s.empty(), "TextStream: empty stop string");
}

bool TextStream::push(std::int64_t id) {
  check(!stopped_, "TextStream: push after a stop string");
  ids_.push_back(id);
  // The whole continuation each time: byte-level BPE pieces are not text on their own. Special
  // tokens are kept so that a stop string can name one.
  text_ = tokenizer_.decode(ids_, /*skip_special=*/false);

  std::size_t stop_at = std::string::npos;
  for (const std::string& s : stop_) stop_at = std::min(stop_at, text_.find(s));
  if (stop_at != std::string::npos) {
    text_.resize(stop_at);
    emit_up_to(stop_at);
    stopped_ = true;
    return true;
  }
  const std::size_t stable = utf8_stable_length(text_);
  emit_up_to(std::min(stable, text_.size() - stop_prefix_tail(text_, stop_)));
  return false;
}

void TextStream::finish() { emit_up_to(text_.size()); }

void TextStream::emit_up_to(std::size_t end) {
  // Text once passed on stays passed on: a decoder whose earlier text changes after more tokens
  // (none known) would make the stream and text() differ, never repeat a piece.
  if (end <= emitted_) return;
  if (on_text_) on_text_(text_.substr(emitted_, end - emitted_));
  emitted_ = end;
}

}  // namespace ssmtune
