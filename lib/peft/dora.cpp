#include "peft/dora.h"

#include <cmath>

#include "core/error.h"

namespace ssmtune {

namespace {

// The weight-sized row operations DoRA needs and the backend has no op for. They touch
// (out, in) and (out, r) tensors, never (tokens, ...) ones, so plain host loops cost little
// beside the products with the tokens. T: float or double, the term's dtype.

// sum_j a[i, j] b[i, j] per row i, in double.   a, b: (rows, cols)
template <class T>
std::vector<double> row_dots(const Tensor& a, const Tensor& b) {
  const std::int64_t rows = a.dim(0), cols = a.numel() / rows;
  const T *pa = a.data<T>(), *pb = b.data<T>();
  std::vector<double> out(rows, 0.0);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      out[i] += double(pa[i * cols + j]) * double(pb[i * cols + j]);
  return out;
}

// f[i] a[i, j] - sub[i, j] (sub undefined: 0).   f: (rows)  a, sub, result: (rows, cols)
template <class T>
Tensor scaled_rows_as(const Tensor& f, const Tensor& a, const Tensor& sub) {
  const std::int64_t rows = a.dim(0), cols = a.numel() / rows;
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  const T *pf = f.data<T>(), *pa = a.data<T>();
  const T* ps = sub.defined() ? sub.data<T>() : nullptr;
  T* po = out.data<T>();
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      po[i * cols + j] = pf[i] * pa[i * cols + j] - (ps ? ps[i * cols + j] : T(0));
  return out;
}

// Runs fn(T{}) with T the C++ type of dtype (F32 or F64, the dtypes LoRA terms have).
template <class Fn>
decltype(auto) on_dtype(DType dtype, Fn&& fn) {
  check(dtype == DType::F32 || dtype == DType::F64, "DoRA computes in F32 or F64");
  return dtype == DType::F64 ? fn(double{}) : fn(float{});
}

Tensor scaled_rows(const Tensor& f, const Tensor& a, const Tensor& sub = Tensor()) {
  return on_dtype(a.dtype(), [&](auto t) { return scaled_rows_as<decltype(t)>(f, a, sub); });
}

// Parts cover W's rows: DoRA terms are whole modules (plan_lora_terms refuses slices).
Tensor part_rows(const Tensor& t, const LinearPart& p) {
  return t.rows(p.row0, p.row0 + p.y.dim(1));
}

}  // namespace

DoraDirection dora_direction(Backend& be, const LoraTerm& t, const Tensor& W) {
  check(t.row0 == 0 && t.rows == W.dim(0), "DoRA term " + t.name + " does not cover its module");
  DoraDirection d;
  d.M = be.empty(W.shape(), W.dtype());
  be.copy(W, d.M);
  be.gemm(false, false, t.scale, t.B, t.A, 1.0, d.M);  // M = W + s B A
  d.norm = Tensor::empty({W.dim(0)}, W.dtype());
  on_dtype(W.dtype(), [&](auto type) {
    using T = decltype(type);
    const std::vector<double> sq = row_dots<T>(d.M, d.M);
    for (std::size_t i = 0; i < sq.size(); ++i) d.norm.data<T>()[i] = T(std::sqrt(sq[i]));
  });
  return d;
}

Tensor dora_factor(const Tensor& magnitude, const Tensor& norm) {
  Tensor f = Tensor::empty(norm.shape(), norm.dtype());
  on_dtype(norm.dtype(), [&](auto type) {
    using T = decltype(type);
    for (std::int64_t i = 0; i < f.numel(); ++i)
      f.data<T>()[i] = magnitude.data<T>()[i] / norm.data<T>()[i];
  });
  return f;
}

void dora_forward(Backend& be, LoraTerm& t, const Tensor& W, const Tensor& x_in,
                  std::vector<LinearPart>& out) {
  const DoraDirection d = dora_direction(be, t, W);
  t.norm = d.norm;
  // D = f M - W: with B = 0 and m = ||W||_row (the init) f is exactly 1 and D exactly 0.
  const Tensor D = scaled_rows(dora_factor(t.magnitude, t.norm), d.M, W);
  for (LinearPart& p : out) be.gemm(false, true, 1.0, x_in, part_rows(D, p), 1.0, p.y);
}

void dora_backward(Backend& be, LoraTerm& t, const Tensor& W, const Tensor& x_in,
                   const std::vector<LinearPart>& dout, Tensor& dU, Tensor& dxd) {
  check(t.norm.defined() && t.U.defined(), "DoRA backward without its forward");
  const DoraDirection d = dora_direction(be, t, W);  // forward's M: A and B have not changed
  const Tensor f = dora_factor(t.magnitude, t.norm);
  const Tensor D = scaled_rows(f, d.M, W);
  const Tensor fB = scaled_rows(f, t.B);
  const std::int64_t in = W.dim(1), r = t.rank;
  for (const LinearPart& p : dout) {
    const std::int64_t n = p.y.dim(1);
    const Tensor fp = part_rows(f, p);
    be.gemm(false, false, 1.0, p.y, part_rows(D, p), 1.0, dxd);      // dxd += dY D
    be.gemm(false, false, t.scale, p.y, part_rows(fB, p), 1.0, dU);  // dU += s dY (f B)
    Tensor sG = be.empty({n, r}, W.dtype());
    be.gemm(true, false, t.scale, p.y, t.U, 0.0, sG);  // s dY^T U
    Tensor dBp = part_rows(t.dB, p);
    be.add(scaled_rows(fp, sG), dBp);  // dB += f (s dY^T U)
    Tensor Gx = be.empty({n, in}, W.dtype());
    be.gemm(true, false, 1.0, p.y, x_in, 0.0, Gx);  // dY^T xd
    on_dtype(W.dtype(), [&](auto type) {
      using T = decltype(type);
      const std::vector<double> dots = row_dots<T>(Gx, part_rows(d.M, p));
      T* dm = part_rows(t.dmagnitude, p).data<T>();
      const T* norm = part_rows(t.norm, p).data<T>();
      for (std::int64_t i = 0; i < n; ++i) dm[i] += T(dots[i] / double(norm[i]));
    });
  }
}

void dora_merge(Backend& be, const LoraTerm& t, Tensor& W) {
  const DoraDirection d = dora_direction(be, t, W);
  be.copy(scaled_rows(dora_factor(t.magnitude, d.norm), d.M), W);
}

}  // namespace ssmtune
