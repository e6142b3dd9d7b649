// Element types of tensors and the 16-bit float conversions used when loading
// checkpoints (compute on the CPU is float32; float64 serves gradient checks).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace ssmtune {

enum class DType : std::uint8_t { F32, F64, F16, BF16, I64, I32, U8, BOOL };

std::size_t dtype_size(DType t);
// safetensors spelling: "F32", "BF16", ...
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);

// bfloat16 <-> float32: bf16 is the top half of an IEEE float32; rounding to nearest even.
inline float bf16_to_f32(std::uint16_t h) {
  std::uint32_t bits = std::uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
std::uint16_t f32_to_bf16(float f);

// IEEE binary16 <-> float32, subnormals, infinities and NaN included.
float f16_to_f32(std::uint16_t h);
std::uint16_t f32_to_f16(float f);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::U8; }

}  // namespace ssmtune
