// safetensors files (Hugging Face's tensor container, docs/models.md "safetensors"): a validated,
// memory-mapped reader and an atomic writer. Layout: 8-byte little-endian header length N, N bytes
// of JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the data
// area.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors_header.h"

namespace ssmtune {

class MappedFile;

class SafetensorsFile {
 public:
  // Maps `path` and validates the whole header before anything is read (see
  // parse_safetensors_header). Throws Error naming the path, the tensor and the field at fault.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const;
  const std::vector<SafetensorsEntry>& entries() const;  // in data order
  const std::map<std::string, std::string>& metadata() const;
  bool contains(const std::string& name) const;
  // Throws Error naming the file when there is no such tensor.
  const SafetensorsEntry& entry(const std::string& name) const;

  // The tensor's data, zero-copy when its offset is aligned for its dtype (the view keeps the
  // mapping alive; writes to it stay private, the file never changes), else a copy.
  Tensor tensor(const std::string& name) const;

 private:
  SafetensorsFile() = default;  // only open() makes one, so state_ is never null
  struct State;
  std::shared_ptr<const State> state_;  // shared: copies of a SafetensorsFile are cheap
};

struct NamedTensor {
  std::string name;
  Tensor tensor;  // CPU, any dtype
};

// Writes `tensors` in the Hugging Face layout, atomically (AtomicFile: temporary, fsync,
// rename; on failure no partial file is left). Data order follows the reference writer: by
// dtype size descending, then name, so every tensor is aligned for its dtype when the data
// area starts 8-aligned (the header is space-padded to a multiple of 8). When `metadata` has
// no "format" key, {"format": "pt"} is added: transformers refuses files whose metadata
// lacks it. Throws Error on duplicate or reserved names or undefined tensors (device tensors
// are read back to the host).
void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace ssmtune
