// y = x W^T + b, the nn.Linear of every projection, forward and backward through the backend.
// The PEFT linear hook (LoRA, DoRA) will attach here.
#pragma once

#include "backend/backend.h"

namespace ssmtune {

// x: (rows, in)  W: (out, in)  bias: (out) or undefined  y: (rows, out) overwritten
void linear_forward(Backend& be, const Tensor& x, const Tensor& W, const Tensor& bias, Tensor& y);

// dy: (rows, out). dW (out, in) and dbias (out) are accumulated when defined (undefined = frozen,
// skipped). dx (rows, in): written when beta_dx = 0, added to when beta_dx = 1; skipped when
// undefined.
void linear_backward(Backend& be, const Tensor& dy, const Tensor& x, const Tensor& W, Tensor& dx,
                     double beta_dx, Tensor& dW, Tensor& dbias);

}  // namespace ssmtune
