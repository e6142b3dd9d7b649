// NaN and Inf in tensors that are read or written. A non-finite weight poisons every step and
// every output, and a file holding one is a model or adapter that nothing can use: base weights,
// adapters and optimizer state are checked when read, and every safetensors file ssmtune writes
// is checked before it is committed (docs/formats.md "What ssmtune reads").
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ssmtune {

class SafetensorsFile;

// t: any dtype, on the host. The flat index of the first NaN or Inf of a float tensor (F32,
// F64, F16, BF16), or -1 when there is none or t is not a float tensor.
std::int64_t first_non_finite(const Tensor& t);

// Throws Error naming the file, the tensor and the element of the first non-finite value in
// any float tensor of `st`:
//   <file>: tensor "<name>" holds a non-finite value (NaN or Inf) at element 3
void check_finite_tensors(const SafetensorsFile& st);

}  // namespace ssmtune
