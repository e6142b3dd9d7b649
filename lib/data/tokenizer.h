// Tokenizer: text <-> token ids. Two implementations, chosen by what a model directory holds:
// Hugging Face tokenizer.json byte-level BPE (bpe_tokenizer.h; what Mamba checkpoints ship,
// docs/models.md "Tokenizers") and SentencePiece .model files (sentencepiece_tokenizer.h, via
// libsentencepiece).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ssmtune {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // The ids the reference library gives for `text` (HF `tokenizer.encode(text,
  // add_special_tokens=False)`; SentencePiece `EncodeAsIds`). Added tokens are matched.
  virtual std::vector<std::int64_t> encode(std::string_view text) const = 0;
  // Concatenated text of `ids`; special added tokens are dropped when skip_special is set.
  // Ids outside [0, vocab_size()) are an Error.
  virtual std::string decode(const std::vector<std::int64_t>& ids,
                             bool skip_special = false) const = 0;
  // Number of ids the tokenizer can produce (max id + 1, added tokens included).
  virtual std::int64_t vocab_size() const = 0;
  // End-of-sequence id (appended after each training example), if the tokenizer has one.
  virtual std::optional<std::int64_t> eos_id() const = 0;
  // Id used to pad batches (pad token, else EOS, else 0): padded positions carry no loss.
  virtual std::int64_t pad_id() const = 0;
  // Where it was loaded from (for messages) and the files a merged model directory must copy.
  virtual const std::string& source() const = 0;
  virtual std::vector<std::string> files() const = 0;
};

// The tokenizer files `dir` holds, in a fixed order: tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, tokenizer.model (those present). What a model directory made from this
// one (merge-adapter, init --tokenizer, a fine-tuned model) must carry along.
std::vector<std::filesystem::path> tokenizer_files_in(const std::filesystem::path& dir);

// Loads the tokenizer of a model directory: tokenizer.json if present, else tokenizer.model
// (SentencePiece). tokenizer_config.json / special_tokens_map.json, when present, name the
// EOS/pad tokens (the map wins, as in transformers). Without them a tokenizer.json's EOS is
// "<|endoftext|>" if it has that token (GPTNeoXTokenizerFast's default, which Mamba uses) and a
// tokenizer.model's EOS/pad are the model's own. Throws Error naming the directory when
// neither file exists, and naming the file and field when one is malformed.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

}  // namespace ssmtune
