#include "io/finite_tensors.h"

#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace ssmtune {

std::int64_t first_non_finite(const Tensor& t) {
  const auto find = [&](auto to_double) -> std::int64_t {
    for (std::int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(to_double(i))) return i;
    return -1;
  };
  const auto* half = static_cast<const std::uint16_t*>(t.raw());
  switch (t.dtype()) {
    case DType::F32: return find([&](std::int64_t i) { return double(t.data<float>()[i]); });
    case DType::F64: return find([&](std::int64_t i) { return t.data<double>()[i]; });
    case DType::BF16: return find([&](std::int64_t i) { return double(bf16_to_f32(half[i])); });
    case DType::F16: return find([&](std::int64_t i) { return double(f16_to_f32(half[i])); });
    default: return -1;
  }
}

void check_finite_tensors(const SafetensorsFile& st) {
  for (const SafetensorsEntry& e : st.entries()) {
    if (e.dtype != DType::F32 && e.dtype != DType::F64 && e.dtype != DType::BF16 &&
        e.dtype != DType::F16)
      continue;
    const std::int64_t bad = first_non_finite(st.tensor(e.name));
    if (bad >= 0)
      throw Error(st.path().string() + ": tensor " + quote_str(e.name) +
                  " holds a non-finite value (NaN or Inf) at element " + std::to_string(bad));
  }
}

}  // namespace ssmtune
