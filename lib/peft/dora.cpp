#include "peft/dora.h"

#include <cmath>

#include "core/error.h"

namespace ssmtune {

namespace {

// f[i] a[i, j] - sub[i, j] (sub undefined: 0).   f: (rows)  a, sub, result: (rows, cols)
Tensor scaled_rows(Backend& be, const Tensor& f, const Tensor& a, const Tensor& sub = Tensor()) {
  Tensor out = be.empty(a.shape(), a.dtype());
  be.scale_rows(f, a, sub, out);
  return out;
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
  d.norm = be.empty({W.dim(0)}, W.dtype());
  be.row_norms(d.M, d.norm);
  return d;
}

Tensor dora_factor(Backend& be, const Tensor& magnitude, const Tensor& norm) {
  Tensor f = be.empty(norm.shape(), norm.dtype());
  be.div(magnitude, norm, f);
  return f;
}

void dora_forward(Backend& be, LoraTerm& t, const Tensor& W, const Tensor& x_in,
                  std::vector<LinearPart>& out) {
  const DoraDirection d = dora_direction(be, t, W);
  t.norm = d.norm;
  // D = f M - W: with B = 0 and m = ||W||_row (the init) f is exactly 1 and D exactly 0.
  const Tensor D = scaled_rows(be, dora_factor(be, t.magnitude, t.norm), d.M, W);
  for (LinearPart& p : out) be.gemm(false, true, 1.0, x_in, part_rows(D, p), 1.0, p.y);
}

void dora_backward(Backend& be, LoraTerm& t, const Tensor& W, const Tensor& x_in,
                   const std::vector<LinearPart>& dout, Tensor& dU, Tensor& dxd) {
  check(t.norm.defined() && t.U.defined(), "DoRA backward without its forward");
  const DoraDirection d = dora_direction(be, t, W);  // forward's M: A and B have not changed
  const Tensor f = dora_factor(be, t.magnitude, t.norm);
  const Tensor D = scaled_rows(be, f, d.M, W);
  const Tensor fB = scaled_rows(be, f, t.B);
  const std::int64_t in = W.dim(1), r = t.rank;
  for (const LinearPart& p : dout) {
    const std::int64_t n = p.y.dim(1);
    const Tensor fp = part_rows(f, p);
    be.gemm(false, false, 1.0, p.y, part_rows(D, p), 1.0, dxd);      // dxd += dY D
    be.gemm(false, false, t.scale, p.y, part_rows(fB, p), 1.0, dU);  // dU += s dY (f B)
    Tensor sG = be.empty({n, r}, W.dtype());
    be.gemm(true, false, t.scale, p.y, t.U, 0.0, sG);  // s dY^T U
    Tensor dBp = part_rows(t.dB, p);
    be.add(scaled_rows(be, fp, sG), dBp);  // dB += f (s dY^T U)
    Tensor Gx = be.empty({n, in}, W.dtype());
    be.gemm(true, false, 1.0, p.y, x_in, 0.0, Gx);  // dY^T xd
    Tensor dm = part_rows(t.dmagnitude, p);
    be.row_dots_div_add(Gx, part_rows(d.M, p), part_rows(t.norm, p), dm);  // dm += rowsum / n
  }
}

void dora_merge(Backend& be, const LoraTerm& t, Tensor& W) {
  const DoraDirection d = dora_direction(be, t, W);
  be.copy(scaled_rows(be, dora_factor(be, t.magnitude, d.norm), d.M), W);
}

}  // namespace ssmtune
