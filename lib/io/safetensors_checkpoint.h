// The weights of a Hugging Face model directory: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json` ({"metadata": {...}, "weight_map": {tensor: shard file}}),
// seen as one set of named tensors.
#pragma once

#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/safetensors.h"

namespace ssmtune {

class SafetensorsCheckpoint {
 public:
  // Prefers model.safetensors when both exist (as transformers does). For a sharded checkpoint
  // checks: shard names are plain file names in model_dir (no '/', not "." or ".."); every
  // shard exists and passes the single-file checks; every tensor of the map is in the shard
  // the map names; every tensor of a shard is in the map, for that shard (an error, not a
  // warning: a stray tensor means the index and the shards disagree, e.g. a stale shard).
  // `total_size` in the index metadata is informational and not checked.
  // Throws Error naming the directory or file when neither file exists.
  static SafetensorsCheckpoint open(const std::filesystem::path& model_dir);

  const std::filesystem::path& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  const std::vector<SafetensorsFile>& files() const { return files_; }  // shards sorted by name
  std::vector<std::string> names() const;                               // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const;  // throws if absent
  const SafetensorsEntry& entry(const std::string& name) const { return file_of(name).entry(name); }
  Tensor tensor(const std::string& name) const { return file_of(name).tensor(name); }

 private:
  std::filesystem::path dir_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, std::size_t> where_;  // tensor name -> index in files_
};

}  // namespace ssmtune
