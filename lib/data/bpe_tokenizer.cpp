#include "data/bpe_tokenizer.h"

#include <queue>

#include "core/error.h"
#include "data/bpe_byte_level.h"
#include "data/unicode.h"
#include "data/unicode_nfc.h"
#include "io/json_file.h"

namespace ssmtune {

namespace {

// Pieces up to this size are cached, up to this many; the cache is emptied when full. Real
// text repeats its words, so this keeps the hit rate high at a bounded memory cost.
constexpr std::size_t kMaxCachedPieceBytes = 64;
constexpr std::size_t kMaxCacheEntries = std::size_t(1) << 16;

std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
  return (std::uint64_t(std::uint32_t(left)) << 32) | std::uint32_t(right);
}

// A candidate merge of the symbol at `pos` with the next one (tokenizers' word.rs Merge):
// the lowest rank first, the leftmost among equal ranks.
struct Merge {
  std::int32_t rank;
  std::int32_t pos;
  std::int32_t new_id;
  bool operator<(const Merge& o) const {  // "lower priority than" for std::priority_queue
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

struct Symbol {
  std::int32_t id;
  std::int32_t prev;
  std::int32_t next;
  bool alive;
};

}  // namespace

BpeTokenizer::BpeTokenizer(const std::filesystem::path& tokenizer_json)
    : model_(load_bpe_model(tokenizer_json)), source_(tokenizer_json.string()) {
  id_to_token_.resize(std::size_t(model_.vocab_size));
  for (const auto& [token, id] : model_.vocab) id_to_token_[std::size_t(id)] = token;
  std::vector<const BpeAddedToken*> raw_tokens, normalized_tokens;
  std::vector<std::string> raw_patterns, normalized_patterns;
  for (const BpeAddedToken& t : model_.added_tokens) {
    id_to_token_[std::size_t(t.id)] = t.content;
    added_ids_.emplace(t.content, t.id);
    if (t.special) special_.insert(t.content);
    if (t.normalized) {
      normalized_tokens.push_back(&t);
      normalized_patterns.push_back(model_.nfc ? nfc(t.content) : t.content);
    } else {
      raw_tokens.push_back(&t);
      raw_patterns.push_back(t.content);
    }
  }
  raw_matcher_ = AddedTokenMatcher(raw_tokens, raw_patterns);
  normalized_matcher_ = AddedTokenMatcher(normalized_tokens, normalized_patterns);
  for (int b = 0; b < 256; ++b) {
    const auto it = model_.vocab.find(byte_level::byte_char(std::uint8_t(b)));
    byte_ids_[b] = it == model_.vocab.end() ? -1 : it->second;
  }
}

std::vector<std::int64_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<std::int64_t> ids;
  std::vector<AddedTokenMatcher::Segment> raw_segments, segments;
  raw_matcher_.split(text, raw_segments);
  for (const auto& raw : raw_segments) {
    if (raw.token) {
      ids.push_back(raw.token->id);
      continue;
    }
    const std::string_view raw_text = text.substr(raw.begin, raw.end - raw.begin);
    const std::string normalized = model_.nfc ? nfc(raw_text) : std::string(raw_text);
    segments.clear();
    normalized_matcher_.split(normalized, segments);
    for (const auto& seg : segments) {
      if (seg.token)
        ids.push_back(seg.token->id);
      else
        encode_plain(std::string_view(normalized).substr(seg.begin, seg.end - seg.begin), ids);
    }
  }
  return ids;
}

void BpeTokenizer::encode_plain(std::string_view segment, std::vector<std::int64_t>& ids) const {
  if (segment.empty()) return;  // tokenizers drops empty splits before pre-tokenizing
  std::string prefixed;
  if (model_.add_prefix_space && segment[0] != ' ') {
    prefixed = " ";
    prefixed += segment;
    segment = prefixed;
  }
  if (!model_.use_regex) return encode_piece(segment, ids);
  std::vector<std::string_view> pieces;
  byte_level::split_gpt2(segment, pieces);
  for (std::string_view piece : pieces) encode_piece(piece, ids);
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<std::int64_t>& ids) const {
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::int32_t> merged = merge_piece(piece);
  ids.insert(ids.end(), merged.begin(), merged.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::move(merged));
  }
}

// tokenizers' BPE::merge_word + Word::merge_all on the byte-level characters of `piece`.
std::vector<std::int32_t> BpeTokenizer::merge_piece(std::string_view piece) const {
  if (model_.ignore_merges) {  // a piece that is itself a token is not merged up from bytes
    std::string mapped;
    byte_level::append_byte_chars(piece, mapped);
    const auto it = model_.vocab.find(mapped);
    if (it != model_.vocab.end()) return {it->second};
  }
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  auto add = [&](std::int32_t id) {
    const auto n = std::int32_t(symbols.size());
    symbols.push_back({id, n - 1, -1, true});
    if (n > 0) symbols[std::size_t(n) - 1].next = n;
  };
  // Characters outside the vocab: byte-fallback tokens, else the unk token (consecutive ones
  // fused when fuse_unk), else dropped. Like tokenizers, a pending unk is only flushed by the
  // next known character, not by byte-fallback tokens.
  std::int32_t pending_unk = -1;  // -1: none
  for (char c : piece) {
    const std::uint8_t b = static_cast<std::uint8_t>(c);
    if (byte_ids_[b] >= 0) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(byte_ids_[b]);
      continue;
    }
    const std::string& ch = byte_level::byte_char(b);
    if (model_.byte_fallback) {
      std::vector<std::int32_t> fallback;
      for (char cb : ch) {
        static const char* kHex = "0123456789ABCDEF";
        const auto u = static_cast<unsigned char>(cb);
        const auto it = model_.vocab.find(std::string("<0x") + kHex[u >> 4] + kHex[u & 15] + ">");
        if (it == model_.vocab.end()) break;
        fallback.push_back(it->second);
      }
      if (fallback.size() == ch.size()) {
        for (std::int32_t id : fallback) add(id);
        continue;
      }
    }
    if (!model_.unk_token) continue;
    if (!model_.unk_id)
      throw Error(source_ + ": field \"model.unk_token\": " + quote_str(*model_.unk_token) +
                  " is not in model.vocab, and the text has a character outside it");
    if (pending_unk >= 0 && !model_.fuse_unk) add(pending_unk);
    pending_unk = *model_.unk_id;
  }
  if (pending_unk >= 0) add(pending_unk);

  std::priority_queue<Merge> queue;
  auto push_pair = [&](std::int32_t pos) {
    const Symbol& s = symbols[std::size_t(pos)];
    if (s.next < 0) return;
    const auto it = model_.merges.find(pair_key(s.id, symbols[std::size_t(s.next)].id));
    if (it != model_.merges.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (std::int32_t i = 0; i + 1 < std::int32_t(symbols.size()); ++i) push_pair(i);
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& s = symbols[std::size_t(top.pos)];
    if (!s.alive || s.next < 0) continue;
    Symbol& right = symbols[std::size_t(s.next)];
    // Skip entries made stale by an earlier merge.
    const auto it = model_.merges.find(pair_key(s.id, right.id));
    if (it == model_.merges.end() || it->second.second != top.new_id) continue;
    s.id = top.new_id;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) symbols[std::size_t(s.next)].prev = top.pos;
    if (s.prev >= 0) push_pair(s.prev);
    push_pair(top.pos);
  }
  std::vector<std::int32_t> out;
  for (const Symbol& s : symbols)
    if (s.alive) out.push_back(s.id);
  return out;
}

std::string BpeTokenizer::decode_bytes(const std::vector<std::int64_t>& ids,
                                       bool skip_special) const {
  std::string out;
  for (std::int64_t id : ids) {
    if (id < 0 || id >= model_.vocab_size)
      throw Error(source_ + ": cannot decode token id " + std::to_string(id) +
                  ": expected an id from 0 to " + std::to_string(model_.vocab_size - 1));
    const std::string& token = id_to_token_[std::size_t(id)];
    if (skip_special && special_.count(token)) continue;
    byte_level::append_token_bytes(token, out);
  }
  return out;
}

std::string BpeTokenizer::decode(const std::vector<std::int64_t>& ids, bool skip_special) const {
  return unicode::utf8_lossy(decode_bytes(ids, skip_special));
}

std::optional<std::int64_t> BpeTokenizer::token_to_id(std::string_view token) const {
  const std::string key(token);
  if (const auto it = added_ids_.find(key); it != added_ids_.end()) return it->second;
  if (const auto it = model_.vocab.find(key); it != model_.vocab.end()) return it->second;
  return std::nullopt;
}

void BpeTokenizer::set_special_ids(std::optional<std::int64_t> eos_id,
                                   std::optional<std::int64_t> pad_id) {
  for (const auto& id : {eos_id, pad_id})
    check(!id || (*id >= 0 && *id < model_.vocab_size),
          source_ + ": special token id " + std::to_string(id.value_or(0)) + " out of range");
  if (eos_id) eos_id_ = eos_id;
  if (pad_id) pad_id_ = pad_id;
}

}  // namespace ssmtune
