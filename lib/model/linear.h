// y = x W^T + b, the nn.Linear of every projection, forward and backward through the backend.
// The PEFT linear hook (LoRA, DoRA) will attach here.
#pragma once

#include "backend/backend.h"

namespace ssmtune {

// Rows [begin, end) of a weight, bias or gradient, or undefined when `t` is (an absent bias, a
// frozen gradient): how a fused projection (in_proj's x and z halves) is used one part at a time.
Tensor row_slice(const Tensor& t, std::int64_t begin, std::int64_t end);

// x: (rows, in)  W: (out, in)  bias: (out) or undefined  y: (rows, out) overwritten
void linear_forward(Backend& be, const Tensor& x, const Tensor& W, const Tensor& bias, Tensor& y);

// dy: (rows, out). dW (out, in) and dbias (out) are accumulated when defined (undefined = frozen,
// skipped). dx (rows, in): written when beta_dx = 0, added to when beta_dx = 1; skipped when
// undefined.
void linear_backward(Backend& be, const Tensor& dy, const Tensor& x, const Tensor& W, Tensor& dx,
                     double beta_dx, Tensor& dW, Tensor& dbias);

}  // namespace ssmtune
