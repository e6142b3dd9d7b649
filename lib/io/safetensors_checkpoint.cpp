#include "io/safetensors_checkpoint.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "io/json_file.h"

namespace ssmtune {

namespace {

namespace fs = std::filesystem;

constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";

// A shard must be a file beside the index: anything else could read outside the model
// directory (a hostile "../../etc/..." or "/dev/zero").
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string("/\\\0", 3)) == std::string::npos;
}

// weight_map: tensor name -> shard file name, validated.
std::map<std::string, std::string> read_weight_map(const fs::path& index_path) {
  const std::string where = index_path.string();
  const nlohmann::json index = read_json_file(index_path);
  if (!index.is_object())
    throw Error(where + ": expected a JSON object, got " + describe_json_value(index));
  if (index.contains("metadata") && !index["metadata"].is_object())
    throw Error(where + ": field \"metadata\": expected an object, got " +
                describe_json_value(index["metadata"]));
  if (!index.contains("weight_map")) throw Error(where + ": missing field \"weight_map\"");
  const nlohmann::json& map = index["weight_map"];
  if (!map.is_object())
    throw Error(where + ": field \"weight_map\": expected an object {tensor: shard file}, got " +
                describe_json_value(map));
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : map.items()) {
    const std::string field = where + ": weight_map[" + quote_str(name) + "]";
    if (!shard.is_string())
      throw Error(field + ": expected a shard file name, got " + describe_json_value(shard));
    const auto& shard_name = shard.get_ref<const std::string&>();
    if (!is_plain_file_name(shard_name))
      throw Error(field + ": shard " + quote_str(shard_name) +
                  " must be a plain file name in the same directory (no '/', not \".\" or \"..\")");
    weight_map[name] = shard_name;
  }
  return weight_map;
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const fs::path& model_dir) {
  SafetensorsCheckpoint ckpt;
  ckpt.dir_ = model_dir;
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) throw Error(model_dir.string() + ": not a directory");

  const fs::path single = model_dir / kSingleName;
  const fs::path index_path = model_dir / kIndexName;
  if (fs::exists(single, ec)) {
    ckpt.files_.push_back(SafetensorsFile::open(single));
    for (const auto& e : ckpt.files_[0].entries()) ckpt.where_[e.name] = 0;
    return ckpt;
  }
  if (!fs::exists(index_path, ec)) {
    std::string hint;
    if (fs::exists(model_dir / "pytorch_model.bin", ec))
      hint =
          " (pytorch_model.bin is a pickle, which ssmtune does not read: convert it to "
          "safetensors)";
    throw Error(model_dir.string() + ": no " + kSingleName + " or " + kIndexName + hint);
  }

  ckpt.sharded_ = true;
  const std::map<std::string, std::string> weight_map = read_weight_map(index_path);
  std::map<std::string, std::size_t> shard_index;  // shard name -> index in files_, sorted
  for (const auto& [name, shard] : weight_map) shard_index.emplace(shard, 0);
  for (auto& [shard, i] : shard_index) {
    const fs::path shard_path = model_dir / shard;
    if (!fs::exists(shard_path, ec)) {
      const std::string& missing = shard;  // clang < 16 cannot capture a structured binding
      const auto user = std::find_if(weight_map.begin(), weight_map.end(),
                                     [&](const auto& kv) { return kv.second == missing; });
      throw Error(index_path.string() + ": shard " + quote_str(shard) + " (holding tensor " +
                  quote_str(user->first) + ") does not exist: " + shard_path.string());
    }
    i = ckpt.files_.size();
    ckpt.files_.push_back(SafetensorsFile::open(shard_path));
  }
  for (const auto& [name, shard] : weight_map) {
    const std::size_t i = shard_index.at(shard);
    if (!ckpt.files_[i].contains(name))
      throw Error(index_path.string() + ": tensor " + quote_str(name) + " is mapped to shard " +
                  quote_str(shard) + ", which has no such tensor");
    ckpt.where_[name] = i;
  }
  for (std::size_t i = 0; i < ckpt.files_.size(); ++i) {
    for (const auto& e : ckpt.files_[i].entries()) {
      const auto it = weight_map.find(e.name);
      if (it == weight_map.end())
        throw Error(ckpt.files_[i].path().string() + ": tensor " + quote_str(e.name) +
                    " is not listed in " + kIndexName);
      if (shard_index.at(it->second) != i)
        throw Error(ckpt.files_[i].path().string() + ": tensor " + quote_str(e.name) +
                    " is also in " + "this shard, but " + kIndexName + " maps it to " +
                    quote_str(it->second));
    }
  }
  return ckpt;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, i] : where_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw Error(dir_.string() + ": no tensor " + quote_str(name));
  return files_[it->second];
}

}  // namespace ssmtune
