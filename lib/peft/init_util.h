// Small pieces the PEFT methods share: filling a host tensor from a generator, and per-layer
// tensors at the Mamba layers.
#pragma once

#include <vector>

#include "backend/backend.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "model/model_config.h"

namespace ssmtune {

// One value and one gradient tensor per layer of the model, indexed by the model's layer: zeros
// of `shape` at `layers` (mamba_layers or ssm_layers), undefined at the others (e.g. Jamba's
// attention layers, where the SSM methods do not act).
inline void zeros_per_layer(const ModelConfig& cfg, const std::vector<std::int64_t>& layers,
                            Backend& be, const Shape& shape, DType dtype,
                            std::vector<Tensor>& value, std::vector<Tensor>& grad) {
  value.assign(std::size_t(cfg.n_layer), Tensor());
  grad.assign(std::size_t(cfg.n_layer), Tensor());
  for (const std::int64_t i : layers) {
    value[std::size_t(i)] = be.zeros(shape, dtype);
    grad[std::size_t(i)] = be.zeros(shape, dtype);
  }
}

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

}  // namespace ssmtune
