// Small pieces the PEFT methods share: filling a host tensor from a generator, and the inverted
// dropout mask of torch.nn.Dropout.
#pragma once

#include "core/rng.h"
#include "core/tensor.h"

namespace ssmtune {

// x (F32 or F64, host) = draw() for every element, in order.
template <class Draw>
void fill_with(Tensor& x, Draw&& draw) {
  const bool f64 = x.dtype() == DType::F64;
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const double v = draw();
    if (f64)
      x.data<double>()[i] = v;
    else
      x.data<float>()[i] = float(v);
  }
}

// torch.nn.Dropout(p) in training: each element kept with probability 1 - p and scaled by
// 1 / (1 - p), else 0. Returns that multiplier for every element of `shape`.
inline Tensor dropout_keep_scale(const Shape& shape, DType dtype, double p, Rng& rng) {
  Tensor mask = Tensor::empty(shape, dtype);
  const double keep = 1.0 / (1.0 - p);
  fill_with(mask, [&] { return rng.uniform() < p ? 0.0 : keep; });
  return mask;
}

}  // namespace ssmtune
