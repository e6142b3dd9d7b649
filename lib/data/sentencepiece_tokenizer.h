// SentencePiece .model files (Llama-style checkpoints, Mamba-Codestral's tokenizer.model), via
// libsentencepiece: encode is SentencePieceProcessor::Encode (EncodeAsIds), decode is Decode
// (DecodeIds), EOS and pad are the model's own ids unless tokenizer_config.json says otherwise.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace ssmtune {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Throws Error naming the file when it is missing, too large or not a SentencePiece model.
  explicit SentencePieceTokenizer(const std::filesystem::path& model_file);
  ~SentencePieceTokenizer() override;

  std::vector<std::int64_t> encode(std::string_view text) const override;
  // Control pieces (<s>, </s>, pad) always decode to nothing, as in DecodeIds; skip_special
  // also drops the unknown piece (which DecodeIds shows as " \xE2\x81\x87 ").
  std::string decode(const std::vector<std::int64_t>& ids,
                     bool skip_special = false) const override;
  std::int64_t vocab_size() const override;
  std::optional<std::int64_t> eos_id() const override { return eos_id_; }
  std::int64_t pad_id() const override { return pad_id_ ? *pad_id_ : eos_id_ ? *eos_id_ : 0; }
  const std::string& source() const override { return source_; }
  std::vector<std::string> files() const override { return files_; }

  // The id of a piece, if the model has it.
  std::optional<std::int64_t> piece_to_id(std::string_view piece) const;
  // EOS / pad ids named by tokenizer_config.json or special_tokens_map.json (load_tokenizer);
  // nullopt keeps the current one.
  void set_special_ids(std::optional<std::int64_t> eos_id, std::optional<std::int64_t> pad_id);
  void set_files(std::vector<std::string> files) { files_ = std::move(files); }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string source_;
  std::vector<std::string> files_;
  std::optional<std::int64_t> eos_id_, pad_id_;
};

}  // namespace ssmtune
