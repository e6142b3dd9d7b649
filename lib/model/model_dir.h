// Writing a Hugging Face model directory (config.json, weight files, tokenizer files) so that it
// appears complete or not at all: everything goes into a fresh sibling DIR.tmp-XXXXXX that is
// renamed into place, so on any failure `dir` is left as it was and no temporary remains.
// write_mamba_model_dir (mamba_init.h) and write_model_dir_as_base (model_dir_as_base.h) write
// their weights through it.
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace ssmtune {

// config.json's "torch_dtype" for a float dtype ("float32", "bfloat16", ...), nullptr for others.
const char* torch_dtype_name(DType t);

// The checks write_model_dir makes on `dir` before writing anything, for a caller that wants to
// fail before a long computation: throws UsageError for an existing non-empty `dir` without
// `overwrite` (or one that is no model directory), Error for a missing parent.
void check_model_dir_target(const std::string& dir, bool overwrite);

struct ModelDirContents {
  nlohmann::json config;                  // written as config.json
  std::vector<std::string> weight_files;  // the file names write_weights creates
  // Writes the weight files into the staging directory it is given.
  std::function<void(const std::filesystem::path& staging)> write_weights;
  std::vector<std::filesystem::path> extra_files;  // copied by file name (tokenizer files, ...)
};

// Writes `contents` as the model directory `dir`. `dir`'s parent must exist. An existing empty
// `dir` is replaced. An existing non-empty one is an error unless `overwrite`; even then only a
// model directory (one holding a config.json) is replaced, so a mistyped --out cannot delete an
// unrelated tree. Two files of one name (an extra file called config.json, ...) are an error.
void write_model_dir(const std::string& dir, const ModelDirContents& contents, bool overwrite);

// Removes what a write_model_dir of `dir` killed part way leaves beside it (<dir>.tmp-XXXXXX,
// <dir>.old-XXXXXX). Only for a caller that knows no other process is writing `dir`: ssmtune
// train, holding its run directory's lock, for a full fine-tune's model/.
void remove_model_dir_leftovers(const std::string& dir);

}  // namespace ssmtune
