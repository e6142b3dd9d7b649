// bf16 on the device, by its bits (a std::uint16_t: the upper half of a float32), for frozen
// base weights held in bf16 (docs/models.md "Weight storage"). Twin: core/dtype.h bf16_to_f32.
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// Exact: the 16 bits become the float's upper half, the lower half zero.
__device__ __forceinline__ float bf16_bits_to_float(std::uint16_t bits) {
  const std::uint32_t wide = std::uint32_t(bits) << 16;
  float f;
  memcpy(&f, &wide, 4);
  return f;
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
