// What the "data" section of an experiment config says (docs/config.md): which JSONL files,
// how their lines become examples, and how examples become batches. Kept in lib/data so the
// dataset code depends on nothing above it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtune {

// How a JSONL line becomes an example (lib/data/jsonl_dataset.h).
enum class DataFormat {
  Auto,              // decided per file from the first line's keys
  Text,              // {"text": ...}: language modelling, loss on every token
  PromptCompletion,  // {"prompt": ..., "completion": ...}: loss on the completion only
  Tokens,            // {"input_ids": [...], "labels": [...]?}: pre-tokenised
  Classification,    // {"prompt"|"text": ..., "label": ...}: prompt + label word, accuracy
};
enum class TooLong { Error, Truncate };

struct DataConfig {
  std::string train;              // JSONL path (required for train; relative to the config file)
  std::string eval;               // JSONL path or "" (no eval set)
  DataFormat format = DataFormat::Auto;
  std::int64_t max_length = 256;  // tokens per example (prompt + completion + EOS), >= 2
  TooLong too_long = TooLong::Error;
  bool packing = false;           // concatenate examples into max_length blocks (text/tokens)
  bool shuffle = true;            // a new permutation each epoch, drawn from the seed
  bool add_eos = true;            // append the tokenizer's EOS to each example
  std::vector<std::string> labels;  // classification label words; empty = sorted labels of train
};

}  // namespace ssmtune
