#include "data/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <exception>

#include "core/error.h"
#include "io/mapped_file.h"

namespace ssmtune {

namespace {

// Real models are a few MB (a 256k-piece vocab is ~20 MB); a larger file is not one.
constexpr std::size_t kMaxModelBytes = std::size_t(256) << 20;

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_file)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()), source_(model_file.string()) {
  const auto file = MappedFile::open(model_file);  // refuses missing and non-regular files
  if (file->size() > kMaxModelBytes)
    throw Error(source_ + ": file is " + std::to_string(file->size()) + " bytes, more than the " +
                std::to_string(kMaxModelBytes) + "-byte limit for a SentencePiece model");
  const std::string_view bytes(reinterpret_cast<const char*>(file->data()), file->size());
  // The library reports most bad models in its status, but its trie builder (Darts) throws
  // its own exception for some (a piece starting with a NUL byte reads as an empty key).
  sentencepiece::util::Status status;
  try {
    status = sp_->LoadFromSerializedProto(bytes);
  } catch (const std::exception& e) {
    throw Error(source_ + ": not a valid SentencePiece model: " + e.what());
  }
  if (!status.ok())
    throw Error(source_ + ": not a valid SentencePiece model: " + status.ToString());
  if (sp_->GetPieceSize() <= 0) throw Error(source_ + ": SentencePiece model has no pieces");
  if (sp_->eos_id() >= 0) eos_id_ = sp_->eos_id();
  if (sp_->pad_id() >= 0) pad_id_ = sp_->pad_id();
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<std::int64_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) throw Error(source_ + ": SentencePiece cannot encode: " + status.ToString());
  return {ids.begin(), ids.end()};
}

std::string SentencePieceTokenizer::decode(const std::vector<std::int64_t>& ids,
                                           bool skip_special) const {
  std::vector<int> kept;
  kept.reserve(ids.size());
  for (std::int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw Error(source_ + ": cannot decode token id " + std::to_string(id) +
                  ": expected an id from 0 to " + std::to_string(vocab_size() - 1));
    if (skip_special && (sp_->IsControl(int(id)) || sp_->IsUnknown(int(id)))) continue;
    kept.push_back(int(id));
  }
  std::string text;
  const auto status = sp_->Decode(kept, &text);
  if (!status.ok()) throw Error(source_ + ": SentencePiece cannot decode: " + status.ToString());
  return text;
}

std::int64_t SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::optional<std::int64_t> SentencePieceTokenizer::piece_to_id(std::string_view piece) const {
  const int id = sp_->PieceToId(piece);
  // PieceToId answers the unknown id for a piece it lacks.
  if (id < 0 || id >= sp_->GetPieceSize() || sp_->IdToPiece(id) != piece) return std::nullopt;
  return id;
}

void SentencePieceTokenizer::set_special_ids(std::optional<std::int64_t> eos_id,
                                             std::optional<std::int64_t> pad_id) {
  for (const auto& id : {eos_id, pad_id})
    check(!id || (*id >= 0 && *id < vocab_size()),
          source_ + ": special token id " + std::to_string(id.value_or(0)) + " out of range");
  if (eos_id) eos_id_ = eos_id;
  if (pad_id) pad_id_ = pad_id;
}

}  // namespace ssmtune
