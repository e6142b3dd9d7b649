#include "io/safetensors_header.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <string_view>
#include <tuple>

#include "core/error.h"
#include "io/json_file.h"

namespace ssmtune {

namespace {

using nlohmann::json;

// dtypes the safetensors format defines that ssmtune has no DType for: named apart from typos.
constexpr std::array<std::string_view, 14> kForeignDTypes = {
    "I8",      "I16",     "U16",         "U32",         "U64", "C64",     "F8_E5M2",
    "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4",  "F6_E2M3", "F6_E3M2"};

std::string range_str(std::uint64_t begin, std::uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

std::uint64_t read_u64_le(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A JSON value that must be a non-negative integer (shape dims, offsets).
std::uint64_t get_unsigned(const json& v, const std::string& where) {
  if (!v.is_number_unsigned())
    throw Error(where + ": expected a non-negative integer, got " + describe_json_value(v));
  return v.get<std::uint64_t>();
}

DType parse_dtype(const json& v, const std::string& where) {
  if (!v.is_string()) throw Error(where + ": expected a string, got " + describe_json_value(v));
  const auto& name = v.get_ref<const std::string&>();
  if (auto t = dtype_from_name(name)) return *t;
  if (std::find(kForeignDTypes.begin(), kForeignDTypes.end(), name) != kForeignDTypes.end())
    throw Error(
        where + " " + quote_str(name) +
        " is not supported by ssmtune (supported: F32, F64, F16, BF16, I64, I32, U8, BOOL)");
  throw Error(where + ": unknown dtype " + quote_str(name));
}

SafetensorsEntry parse_entry(const std::string& name, const json& info, std::uint64_t data_size,
                             const std::string& source) {
  const std::string where = source + ": tensor " + quote_str(name);
  if (!info.is_object())
    throw Error(where + ": expected an object with dtype, shape and data_offsets, got " +
                describe_json_value(info));
  for (const auto& [key, value] : info.items()) {
    (void)value;
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw Error(where + ": unexpected field " + quote_str(key) +
                  " (expected only dtype, shape and data_offsets)");
  }
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!info.contains(key)) throw Error(where + ": missing field \"" + key + "\"");

  SafetensorsEntry e;
  e.name = name;
  e.dtype = parse_dtype(info.at("dtype"), where + ": dtype");

  const json& shape = info.at("shape");
  if (!shape.is_array())
    throw Error(where + ": shape: expected an array of non-negative integers, got " +
                describe_json_value(shape));
  // numel and bytes with checked multiplication: the values are untrusted. Like the reference
  // reader (and shape_numel), any partial product past int64 is an error, even before a 0 dim.
  std::uint64_t numel = 1;
  bool overflow = false;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    const std::uint64_t dim = get_unsigned(shape[i], where + ": shape[" + std::to_string(i) + "]");
    overflow = dim > std::uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel) ||
               numel > std::uint64_t(INT64_MAX);
    if (overflow) break;
    e.shape.push_back(std::int64_t(dim));
  }
  std::uint64_t n_bytes = 0;
  if (overflow || __builtin_mul_overflow(numel, dtype_size(e.dtype), &n_bytes))
    throw Error(where + ": shape " + shape.dump().substr(0, 120) + " x " +
                std::string(dtype_name(e.dtype)) + " has more bytes than fit in 64 bits");

  const json& offsets = info.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2)
    throw Error(where + ": data_offsets: expected [begin, end], got " +
                (offsets.is_array() ? "an array of " + std::to_string(offsets.size()) + " elements"
                                    : describe_json_value(offsets)));
  e.begin = get_unsigned(offsets[0], where + ": data_offsets[0]");
  e.end = get_unsigned(offsets[1], where + ": data_offsets[1]");
  if (e.begin > e.end)
    throw Error(where + ": data_offsets " + range_str(e.begin, e.end) + ": begin is after end");
  if (n_bytes != e.n_bytes())
    throw Error(where + ": shape " + shape_str(e.shape) + " x " + std::string(dtype_name(e.dtype)) +
                " = " + std::to_string(n_bytes) + " bytes, but data_offsets " +
                range_str(e.begin, e.end) + " span " + std::to_string(e.n_bytes()) + " bytes");
  if (e.end > data_size)
    throw Error(where + ": data_offsets " + range_str(e.begin, e.end) +
                " run past the end of the data area (" + std::to_string(data_size) + " bytes)");
  return e;
}

std::map<std::string, std::string> parse_metadata(const json& v, const std::string& source) {
  const std::string where = source + ": \"__metadata__\"";
  std::map<std::string, std::string> metadata;
  if (v.is_null()) return metadata;  // the reference reader accepts null as "no metadata"
  if (!v.is_object())
    throw Error(where + ": expected an object of strings, got " + describe_json_value(v));
  for (const auto& [key, value] : v.items()) {
    if (!value.is_string())
      throw Error(where + ": key " + quote_str(key) + ": expected a string, got " +
                  describe_json_value(value));
    metadata[key] = value.get<std::string>();
  }
  return metadata;
}

// The anti-polyglot rule: sorted by offset, every byte of the data area belongs to exactly
// one tensor (safetensors README; Metadata::validate in tensor.rs).
void check_tiling(std::vector<SafetensorsEntry>& entries, std::uint64_t data_size,
                  const std::string& source) {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  std::uint64_t covered = 0;  // end of the data tiled so far
  const SafetensorsEntry* prev = nullptr;
  for (const auto& e : entries) {
    if (e.begin < covered)
      throw Error(source + ": tensor " + quote_str(e.name) + " (bytes " +
                  range_str(e.begin, e.end) + ") overlaps tensor " + quote_str(prev->name) +
                  " (bytes " + range_str(prev->begin, prev->end) + ")");
    if (e.begin > covered)
      throw Error(source + ": bytes " + range_str(covered, e.begin) +
                  " of the data area belong to no tensor (gap before tensor " + quote_str(e.name) +
                  ")");
    covered = e.end;
    prev = &e;
  }
  if (covered != data_size)
    throw Error(source + ": the data area is " + std::to_string(data_size) +
                " bytes but the tensors cover only the first " + std::to_string(covered) +
                " (trailing bytes)");
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const unsigned char* file_bytes, std::size_t file_size,
                                           const std::string& source) {
  if (file_size < 8)
    throw Error(source + ": file is " + std::to_string(file_size) +
                " bytes, too short for the 8-byte header length of a safetensors file");
  const std::uint64_t header_len = read_u64_le(file_bytes);
  if (header_len > kMaxSafetensorsHeaderBytes)
    throw Error(source + ": header length " + std::to_string(header_len) + " is more than the " +
                std::to_string(kMaxSafetensorsHeaderBytes) +
                "-byte limit (not a safetensors file, or corrupt)");
  if (header_len > file_size - 8)
    throw Error(source + ": header length " + std::to_string(header_len) +
                " runs past the end of the file (" + std::to_string(file_size) + " bytes)");

  const std::string_view text(reinterpret_cast<const char*>(file_bytes) + 8, header_len);
  if (text.empty() || text[0] != '{')
    throw Error(source + ": header must be a JSON object starting with '{', found " +
                (text.empty() ? std::string("an empty header") : quote_str(text.substr(0, 16))));
  // The format pads the header with spaces (0x20). nlohmann's parser takes a NUL byte for the
  // end of its input, so a NUL-padded header, or JSON followed by a NUL and anything at all,
  // would parse; the reference reader refuses both (serde_json: trailing characters).
  if (const std::size_t nul = text.find('\0'); nul != std::string_view::npos)
    throw Error(source + ": header: byte " + std::to_string(8 + nul) +
                " of the file is a NUL (0x00); expected JSON padded with spaces (0x20)");
  // Depth 4 is more than a valid header needs (object -> entry -> shape), and bounds the work.
  const json j = parse_json_text(text, source + ": header", 4);
  if (!j.is_object())
    throw Error(source + ": header: expected a JSON object, got " + describe_json_value(j));

  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  const std::uint64_t data_size = file_size - header.data_offset;
  for (const auto& [name, info] : j.items()) {
    if (name == "__metadata__")
      header.metadata = parse_metadata(info, source);
    else
      header.entries.push_back(parse_entry(name, info, data_size, source));
  }
  check_tiling(header.entries, data_size, source);
  return header;
}

}  // namespace ssmtune
