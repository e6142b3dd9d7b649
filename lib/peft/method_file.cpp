#include "peft/method_file.h"

#include <set>

#include "core/error.h"
#include "io/finite_tensors.h"
#include "io/json_file.h"

namespace ssmtune {

namespace {
constexpr const char* kConfigKey = "ssmtune.method_config";
}

std::string method_file_name(const std::string& method) {
  return "ssmtune_" + method + ".safetensors";
}

void write_method_file(const std::filesystem::path& dir, const std::string& method,
                       const std::vector<TrainableParam>& params, const nlohmann::json& config,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<NamedTensor> tensors;
  for (const TrainableParam& p : params) tensors.push_back({p.name, p.value});
  std::map<std::string, std::string> meta = metadata;
  meta[kConfigKey] = config.dump();
  meta["ssmtune.method"] = method;
  write_safetensors(dir / method_file_name(method), tensors, meta);
}

std::optional<nlohmann::json> read_method_config(const std::filesystem::path& dir,
                                                 const std::string& method) {
  const std::filesystem::path path = dir / method_file_name(method);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  const SafetensorsFile st = SafetensorsFile::open(path);
  const auto it = st.metadata().find(kConfigKey);
  if (it == st.metadata().end())
    throw Error(path.string() + ": metadata \"" + kConfigKey + "\" is missing");
  nlohmann::json config = parse_json_text(it->second, path.string() + ": metadata " + kConfigKey);
  if (!config.is_object())
    throw Error(path.string() + ": metadata " + kConfigKey + ": expected a JSON object");
  return config;
}

void read_method_tensors(const std::filesystem::path& dir, const std::string& method,
                         std::vector<TrainableParam>& params, Backend& be) {
  const std::filesystem::path path = dir / method_file_name(method);
  const std::string file = path.string();
  const SafetensorsFile st = SafetensorsFile::open(path);
  check_finite_tensors(st);
  std::set<std::string> expected;
  for (TrainableParam& p : params) {
    expected.insert(p.name);
    if (!st.contains(p.name)) throw Error(file + ": missing tensor " + p.name);
    const SafetensorsEntry& e = st.entry(p.name);
    if (e.dtype != DType::F32 && e.dtype != DType::F64 && e.dtype != DType::BF16 &&
        e.dtype != DType::F16)
      throw Error(file + ": tensor " + p.name + ": expected a float tensor, got " +
                  std::string(dtype_name(e.dtype)));
    if (e.shape != p.value.shape())
      throw Error(file + ": tensor " + p.name + ": expected shape " + shape_str(p.value.shape()) +
                  ", got " + shape_str(e.shape));
    const Tensor converted = st.tensor(p.name).to(p.value.dtype());
    be.copy(converted, p.value);
  }
  for (const SafetensorsEntry& e : st.entries())
    if (!expected.count(e.name)) throw Error(file + ": unexpected tensor " + quote_str(e.name));
}

}  // namespace ssmtune
