#include "model/sequence_steps.h"

#include "core/error.h"

namespace ssmtune {

namespace {
// (B, L, C) as the (B, L*C) matrix of its steps.
Tensor as_steps(const Tensor& t) { return t.reshape({t.dim(0), t.dim(1) * t.dim(2)}); }
}  // namespace

void put_steps(Backend& be, const Tensor& src, std::int64_t t0, Tensor& dst) {
  check(src.ndim() == 3 && dst.ndim() == 3 && src.dim(0) == dst.dim(0) && src.dim(2) == dst.dim(2),
        "put_steps: " + shape_str(src.shape()) + " into " + shape_str(dst.shape()));
  Tensor wide = as_steps(dst);
  be.merge_columns(as_steps(src), t0 * dst.dim(2), wide);
}

void take_steps(Backend& be, const Tensor& src, std::int64_t t0, Tensor& dst) {
  check(src.ndim() == 3 && dst.ndim() == 3 && src.dim(0) == dst.dim(0) && src.dim(2) == dst.dim(2),
        "take_steps: " + shape_str(dst.shape()) + " from " + shape_str(src.shape()));
  Tensor narrow = as_steps(dst);
  be.split_columns(as_steps(src), t0 * src.dim(2), narrow);
}

void put_steps_broadcast(Backend& be, const Tensor& v, std::int64_t t0, Tensor& dst) {
  const std::int64_t B = dst.dim(0), C = dst.dim(2), T = v.numel() / C;
  Tensor rows = be.empty({B, T, C}, dst.dtype());
  for (std::int64_t b = 0; b < B; ++b) {
    Tensor row = rows.rows(b, b + 1).reshape(v.shape());
    be.copy(v, row);
  }
  put_steps(be, rows, t0, dst);
}

void sum_steps(Backend& be, const Tensor& src, std::int64_t t0, Tensor& dv) {
  const std::int64_t B = src.dim(0), C = src.dim(2), T = dv.numel() / C;
  Tensor part = be.empty({B, T, C}, src.dtype());
  take_steps(be, src, t0, part);
  Tensor flat = dv.reshape({T * C});
  be.bias_backward(part.reshape({B, T * C}), flat);  // column sums: the sum over sequences
}

Tensor prepend_steps(Backend& be, const Tensor& v, const Tensor& x) {
  const std::int64_t B = x.dim(0), L = x.dim(1), C = x.dim(2), T = v.dim(0);
  Tensor out = be.empty({B, T + L, C}, x.dtype());
  put_steps_broadcast(be, v, 0, out);
  put_steps(be, x, T, out);
  return out;
}

}  // namespace ssmtune
