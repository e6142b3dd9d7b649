// Hugging Face tokenizer.json byte-level BPE (GPT-2 / GPT-NeoX style; what Mamba checkpoints ship),
// giving the ids the Python `tokenizers` library gives (docs/models.md "Byte-level BPE encoding"):
//   1. added tokens are cut out of the raw text (non-normalized ones), then each remaining
//      segment is NFC-normalized and cut at the normalized added tokens;
//   2. the ByteLevel pre-tokenizer splits each plain segment with GPT-2's pattern and maps
//      its bytes to printable characters;
//   3. BPE merges each piece by merge rank (lowest first, leftmost among equals).
// Supported: model BPE (merges as "a b" or ["a", "b"], unk_token, fuse_unk, byte_fallback,
// ignore_merges), normalizer NFC or none, pre-tokenizer and decoder ByteLevel. Anything else
// is refused when loading. The post-processor, truncation and padding are ignored: encode()
// is `encode(text, add_special_tokens=False)` and transformers turns the others off too.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "data/bpe_added_tokens.h"
#include "data/tokenizer.h"

namespace ssmtune {

// What a tokenizer.json says, checked (bpe_tokenizer_load.cpp).
struct BpeModel {
  std::unordered_map<std::string, std::int32_t> vocab;  // model.vocab: ids 0..n-1, each once
  // (left id << 32 | right id) -> (rank, id of the merged token); the last listing of a pair
  // wins, as in tokenizers' merge map.
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges;
  std::optional<std::string> unk_token;
  std::optional<std::int32_t> unk_id;  // unset when unk_token is not in the vocab
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  bool nfc = false;  // normalizer NFC (else none)
  bool add_prefix_space = false;
  bool use_regex = true;
  // In tokenizers' order: special tokens first, then the others, each in file order.
  std::vector<BpeAddedToken> added_tokens;
  std::int64_t vocab_size = 0;  // model.vocab plus added tokens outside it
};

// Reads and checks a tokenizer.json. Throws Error naming the file and the field on a
// malformed, inconsistent or unsupported file.
BpeModel load_bpe_model(const std::filesystem::path& tokenizer_json);

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const std::filesystem::path& tokenizer_json);

  std::vector<std::int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<std::int64_t>& ids,
                     bool skip_special = false) const override;
  std::int64_t vocab_size() const override { return model_.vocab_size; }
  std::optional<std::int64_t> eos_id() const override { return eos_id_; }
  std::int64_t pad_id() const override { return pad_id_ ? *pad_id_ : eos_id_ ? *eos_id_ : 0; }
  const std::string& source() const override { return source_; }
  std::vector<std::string> files() const override { return files_; }

  // The bytes `ids` stand for, before decode() replaces ill-formed UTF-8 with U+FFFD: the
  // exact input bytes for ids that encode() made. Throws Error on an out-of-range id.
  std::string decode_bytes(const std::vector<std::int64_t>& ids, bool skip_special = false) const;
  // tokenizers' token_to_id: added tokens first, then the model vocab.
  std::optional<std::int64_t> token_to_id(std::string_view token) const;
  // EOS / pad ids named by tokenizer_config.json or special_tokens_map.json (load_tokenizer);
  // nullopt keeps the current one.
  void set_special_ids(std::optional<std::int64_t> eos_id, std::optional<std::int64_t> pad_id);
  void set_files(std::vector<std::string> files) { files_ = std::move(files); }

 private:
  // Appends the ids of a segment without added tokens (normalized already).
  void encode_plain(std::string_view segment, std::vector<std::int64_t>& ids) const;
  // Appends the BPE ids of one pre-token piece (raw bytes), through the cache.
  void encode_piece(std::string_view piece, std::vector<std::int64_t>& ids) const;
  std::vector<std::int32_t> merge_piece(std::string_view piece) const;

  BpeModel model_;
  std::string source_;
  std::vector<std::string> files_;
  std::vector<std::string> id_to_token_;                     // model vocab and added tokens by id
  std::unordered_map<std::string, std::int64_t> added_ids_;  // added token content -> id
  std::unordered_set<std::string> special_;                  // contents of special added tokens
  std::int32_t byte_ids_[256];  // vocab id of each byte's character, or -1
  AddedTokenMatcher raw_matcher_, normalized_matcher_;
  std::optional<std::int64_t> eos_id_, pad_id_;

  // Piece -> ids, shared by all calls (encode is const and may run on several threads).
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache_;
};

}  // namespace ssmtune
