// The header of a safetensors file, parsed and validated (docs/models.md "safetensors"): everything
// a reader needs to find each tensor's bytes, checked so that no later access can go out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ssmtune {

// The reference reader's MAX_HEADER_SIZE (safetensors tensor.rs).
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// One tensor as the header describes it.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets into the data area, [begin, end)
  std::uint64_t end = 0;
  std::uint64_t n_bytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;        // in data order (by offset, then name)
  std::map<std::string, std::string> metadata;  // "__metadata__", e.g. {"format": "pt"}
  std::uint64_t data_offset = 0;                // 8 + header length: where the data area starts
};

// Validates a whole file's bytes: length prefix, JSON header (no duplicate names), each entry
// (dtype known, shape x dtype size == offset span, offsets inside the data area) and that the
// entries tile the data area exactly, with no gap, overlap or trailing byte. Throws Error
// starting with `source` (the file path) and naming the tensor and field at fault.
SafetensorsHeader parse_safetensors_header(const unsigned char* file_bytes, std::size_t file_size,
                                           const std::string& source);

}  // namespace ssmtune
