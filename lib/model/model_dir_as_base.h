// A model directory written in the checkpoint layout of another one: what merge-adapter writes,
// so that a merged model keeps its base model's dtypes and sharding (docs/formats.md "Merged
// model directories").
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

struct WrittenModelDir {
  std::size_t files = 0;    // weight files (1, or the shards)
  std::size_t tensors = 0;  // tensors written
  std::size_t changed = 0;  // of them, those that differ from the base's bytes
};

// Writes `w` (the merged weights, F32 or F64) under config `c` as the model directory `dir`, in
// the checkpoint layout of the model directory `base_dir` (model.safetensors, or the shards of
// model.safetensors.index.json):
//  - the same weight files, each tensor in the file and the dtype the base stores it in, each
//    file's __metadata__ kept. A value is rounded once, to nearest even, from w's dtype to the
//    stored dtype; a tensor whose rounded bytes equal the base's is copied from the base file.
//  - A tensor the base lacks (a bias parameter tuning created, the lm_head that LoRA on a tied
//    embedding unties) goes into the file of its module's weight, in that weight's dtype
//    (lm_head: the embedding's). mamba_ssm's "backbone.embedding.weight" is written under the
//    Hugging Face name. A tied lm_head the base stores is written as the embedding.
//  - A sharded base gets a new index: weight_map names every tensor's shard,
//    metadata.total_size is the sum of the tensors' bytes, other metadata keys are kept.
//  - config.json is model_config_to_json(c) with torch_dtype the dtype of most parameters;
//    each of `extra_files` is copied by file name.
// Staged and renamed into place by write_model_dir (model_dir.h), with its checks on `dir`.
// Beyond `w`, holds one weight file's rounded tensors at a time.
WrittenModelDir write_model_dir_as_base(const std::string& dir, const std::string& base_dir,
                                        const ModelConfig& c, const ModelWeights& w, bool overwrite,
                                        const std::vector<std::filesystem::path>& extra_files);

}  // namespace ssmtune
