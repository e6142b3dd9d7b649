#include <cstdint>
#include <cstring>
#include <unordered_map>

#include "core/error.h"
#include "io/json_file.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"

namespace ssmtune {

struct SafetensorsFile::State {
  std::shared_ptr<MappedFile> map;
  SafetensorsHeader header;
  std::unordered_map<std::string, std::size_t> index;  // name -> position in header.entries
};

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto state = std::make_shared<State>();
  state->map = MappedFile::open(path);
  state->header = parse_safetensors_header(state->map->data(), state->map->size(), path.string());
  for (std::size_t i = 0; i < state->header.entries.size(); ++i)
    state->index.emplace(state->header.entries[i].name, i);
  SafetensorsFile file;
  file.state_ = std::move(state);
  return file;
}

const std::filesystem::path& SafetensorsFile::path() const { return state_->map->path(); }

const std::vector<SafetensorsEntry>& SafetensorsFile::entries() const {
  return state_->header.entries;
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return state_->header.metadata;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return state_->index.count(name) != 0;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = state_->index.find(name);
  if (it == state_->index.end()) throw Error(path().string() + ": no tensor " + quote_str(name));
  return state_->header.entries[it->second];
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  if (e.n_bytes() == 0) return Tensor::empty(e.shape, e.dtype);  // no byte of the file to view
  // In bounds: parse_safetensors_header checked data_offset + end <= file size.
  unsigned char* bytes = state_->map->data() + state_->header.data_offset + e.begin;
  if (reinterpret_cast<std::uintptr_t>(bytes) % dtype_size(e.dtype) == 0)
    return Tensor::view_of(state_->map, bytes, e.shape, e.dtype);
  Tensor copy = Tensor::empty(e.shape, e.dtype);
  std::memcpy(copy.raw(), bytes, e.n_bytes());
  return copy;
}

}  // namespace ssmtune
