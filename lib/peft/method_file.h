// One PEFT method's tensors in an adapter directory: <dir>/ssmtune_<method>.safetensors holds
// its trainable tensors under their names and its settings as JSON in the metadata
// "ssmtune.method_config", so a reader rebuilds the method from the file alone.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "peft/trainable.h"

namespace ssmtune {

// The methods that keep their tensors in such a file.
inline constexpr const char* kMethodFileMethods[] = {"parallel_adapter", "additional_scan",
                                                     "virtual_tokens"};

// "ssmtune_<method>.safetensors"
std::string method_file_name(const std::string& method);

void write_method_file(const std::filesystem::path& dir, const std::string& method,
                       const std::vector<TrainableParam>& params, const nlohmann::json& config,
                       const std::map<std::string, std::string>& metadata = {});

// The settings stored in dir's file for `method`, or nullopt when there is no such file.
// Errors name the file: not a safetensors file, no or malformed settings.
std::optional<nlohmann::json> read_method_config(const std::filesystem::path& dir,
                                                 const std::string& method);

// Copies every tensor of the file into `params` (the method rebuilt from its settings): each
// name must be present with the parameter's shape, and the file may hold nothing else. Values
// are converted to each parameter's dtype.
void read_method_tensors(const std::filesystem::path& dir, const std::string& method,
                         std::vector<TrainableParam>& params, Backend& be);

// The same for a method object with append_trainables(): its tensors under their names.
template <class Method>
void save_method(const std::filesystem::path& dir, const std::string& method, Method& m,
                 const nlohmann::json& config, const std::map<std::string, std::string>& metadata) {
  std::vector<TrainableParam> params;
  m.append_trainables(params);
  write_method_file(dir, method, params, config, metadata);
}
template <class Method>
void load_method(const std::filesystem::path& dir, const std::string& method, Method& m,
                 Backend& be) {
  std::vector<TrainableParam> params;
  m.append_trainables(params);
  read_method_tensors(dir, method, params, be);
}
// load_method for a run that trains the method: its file must be there.
template <class Method>
void load_trained_method(const std::filesystem::path& dir, const std::string& method, Method& m,
                         Backend& be) {
  if (!read_method_config(dir, method))
    throw Error((dir / method_file_name(method)).string() + ": missing (this run trains it)");
  load_method(dir, method, m, be);
}

}  // namespace ssmtune
