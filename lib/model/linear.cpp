#include "model/linear.h"

namespace ssmtune {

Tensor row_slice(const Tensor& t, std::int64_t begin, std::int64_t end) {
  return t.defined() ? t.rows(begin, end) : Tensor();
}

void linear_forward(Backend& be, const Tensor& x, const Tensor& W, const Tensor& bias, Tensor& y) {
  be.gemm(false, true, 1.0, x, W, 0.0, y);
  if (bias.defined()) be.add_bias(y, bias);
}

void linear_backward(Backend& be, const Tensor& dy, const Tensor& x, const Tensor& W, Tensor& dx,
                     double beta_dx, Tensor& dW, Tensor& dbias) {
  if (dx.defined()) be.gemm(false, false, 1.0, dy, W, beta_dx, dx);  // dx = dy W
  if (dW.defined()) be.gemm(true, false, 1.0, dy, x, 1.0, dW);       // dW += dy^T x
  if (dbias.defined()) be.bias_backward(dy, dbias);
}

}  // namespace ssmtune
