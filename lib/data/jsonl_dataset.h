// JSONL datasets: one JSON object a line becomes one tokenised training example with HF-style
// labels (docs/datasets.md). Formats, masking, EOS, truncation and packing follow the "data"
// section of the experiment config (data_config.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/data_config.h"
#include "data/tokenizer.h"

namespace ssmtune {

// The label of a position that carries no loss (HF's ignore_index).
inline constexpr std::int64_t kIgnoreLabel = -100;
// A JSONL line longer than this is refused before it is held whole: no dataset line needs it,
// and a file without newlines must not become one huge allocation.
inline constexpr std::size_t kMaxJsonlLineBytes = std::size_t(16) << 20;

struct Example {
  // Same length. labels are aligned with input_ids (HF convention: the model shifts them, so
  // labels[t] is the target predicted at position t - 1 and labels[0] never counts);
  // kIgnoreLabel marks positions without loss.
  std::vector<std::int64_t> input_ids, labels;
  std::int64_t class_index = -1;   // classification: index into Dataset::class_names
  std::int64_t prompt_length = 0;  // tokens before the completion / label word
  std::int64_t line = 0;           // 1-based source line (packed blocks: the first line in it)
};

struct Dataset {
  std::string path;
  DataFormat format = DataFormat::Auto;  // the resolved format, never Auto
  std::vector<Example> examples;
  std::vector<std::string> class_names;       // classification only
  std::vector<std::int64_t> class_token_ids;  // encode(" " + class_names[c])[0]
  std::int64_t n_truncated = 0;               // examples cut to max_length (too_long = truncate)
};

// Reads `path` (JSONL, streamed line by line) into examples. For classification, the class
// names are `class_names` when given (an eval set reuses the train set's), else cfg.labels,
// else the sorted unique labels of this file. cfg.format Auto is decided from the keys of the
// first non-blank line; every line must then have that format's fields (extra keys are
// ignored). Every problem is an Error naming `path:line` and the field; config mistakes
// (packing a prompt/completion file, add_eos without an EOS token, max_length < 2) are
// UsageErrors.
Dataset load_jsonl_dataset(const std::string& path, const DataConfig& cfg,
                           const Tokenizer& tokenizer,
                           const std::vector<std::string>& class_names = {});

// "text", "prompt_completion", "tokens", "classification" ("auto" for Auto): the config spelling.
std::string_view data_format_name(DataFormat format);

// Positions whose label counts after the HF shift: labels[t] != kIgnoreLabel for t >= 1.
std::int64_t count_loss_tokens(const std::vector<std::int64_t>& labels);

}  // namespace ssmtune
