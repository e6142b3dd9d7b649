// The CPU backend: checks shapes and element types, then calls the float/double CPU
// reference functions (scan_cpu.h, ops_cpu.h, gemm_cpu.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>

#include "backend/backend.h"
#include "backend/cpu/gemm_cpu.h"
#include "backend/cpu/ops_cpu.h"
#include "backend/cpu/optim_cpu.h"
#include "backend/cpu/scan_cpu.h"

namespace ssmtune {

namespace {

void require(bool cond, const char* op, const std::string& what) {
  if (!cond) throw Error(std::string("cpu backend: ") + op + ": " + what);
}

void require_shape(const Tensor& t, const Shape& shape, const char* op, const char* name) {
  require(t.defined(), op, std::string(name) + " is missing");
  require(t.shape() == shape, op,
          std::string(name) + " has shape " + shape_str(t.shape()) + ", expected " +
              shape_str(shape));
}

// Calls f(T{}) with T the float type of `dt` (F32 or F64).
template <class F> void dispatch(DType dt, const char* op, F&& f) {
  if (dt == DType::F32)
    f(float{});
  else if (dt == DType::F64)
    f(double{});
  else
    throw Error(std::string("cpu backend: ") + op + ": element type " +
                std::string(dtype_name(dt)) + " not supported (F32 or F64)");
}

template <class T> T* ptr(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::CPU; }

  Tensor empty(const Shape& shape, DType dtype) override { return Tensor::empty(shape, dtype); }
  Tensor zeros(const Shape& shape, DType dtype) override { return Tensor::zeros(shape, dtype); }
  void copy(const Tensor& src, Tensor& dst) override {
    require(src.shape() == dst.shape() && src.dtype() == dst.dtype(), "copy",
            "shape/dtype mismatch " + shape_str(src.shape()) + " vs " + shape_str(dst.shape()));
    if (src.nbytes()) std::memmove(dst.raw(), src.raw(), src.nbytes());
  }

  void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& A, const Tensor& B,
            double beta, Tensor& C) override {
    require(A.ndim() == 2 && B.ndim() == 2 && C.ndim() == 2, "gemm", "operands must be 2-D");
    const std::int64_t M = trans_a ? A.dim(1) : A.dim(0), K = trans_a ? A.dim(0) : A.dim(1);
    const std::int64_t Kb = trans_b ? B.dim(1) : B.dim(0), N = trans_b ? B.dim(0) : B.dim(1);
    require(K == Kb && C.dim(0) == M && C.dim(1) == N, "gemm",
            "shapes " + shape_str(A.shape()) + (trans_a ? "^T" : "") + " x " +
                shape_str(B.shape()) + (trans_b ? "^T" : "") + " -> " + shape_str(C.shape()));
    require(A.dtype() == C.dtype() && B.dtype() == C.dtype(), "gemm", "mixed element types");
    OpTimer timer(profile_, "gemm", 2.0 * double(M) * double(N) * double(K));
    dispatch(C.dtype(), "gemm", [&](auto zero) {
      using T = decltype(zero);
      cpu::gemm<T>(trans_a, trans_b, M, N, K, T(alpha), A.data<T>(), A.dim(1), B.data<T>(),
                   B.dim(1), T(beta), C.data<T>(), N);
    });
  }

  void add_bias(Tensor& y, const Tensor& bias) override {
    OpTimer timer(profile_, "elementwise");
    const std::int64_t n = bias.numel(), rows = n ? y.numel() / n : 0;
    require(y.ndim() >= 1 && y.dim(-1) == n, "add_bias", "bias length != last dim of y");
    dispatch(y.dtype(), "add_bias", [&](auto zero) {
      using T = decltype(zero);
      T* yp = y.data<T>();
      const T* bp = bias.data<T>();
#pragma omp parallel for schedule(static)
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t j = 0; j < n; ++j) yp[r * n + j] += bp[j];
    });
  }

  void bias_backward(const Tensor& dy, Tensor& dbias) override {
    OpTimer timer(profile_, "elementwise");
    const std::int64_t n = dbias.numel();
    require(dy.ndim() >= 1 && dy.dim(-1) == n, "bias_backward", "dbias length != last dim");
    dispatch(dy.dtype(), "bias_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::column_sum<T>(n ? dy.numel() / n : 0, n, dy.data<T>(), dbias.data<T>());
    });
  }

  void add(const Tensor& x, Tensor& y) override {
    OpTimer timer(profile_, "elementwise");
    require(x.shape() == y.shape(), "add", "shapes differ");
    dispatch(y.dtype(), "add", [&](auto zero) {
      using T = decltype(zero);
      const T* xp = x.data<T>();
      T* yp = y.data<T>();
      const std::int64_t n = y.numel();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) yp[i] += xp[i];
    });
  }

  void split_columns(const Tensor& src, std::int64_t col0, Tensor& dst) override {
    copy_columns("split_columns", src, col0, dst, /*into_src=*/false);
  }
  void merge_columns(const Tensor& src, std::int64_t col0, Tensor& dst) override {
    copy_columns("merge_columns", dst, col0, src, /*into_src=*/true);
  }

  void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y,
                       Tensor& rstd) override {
    OpTimer timer(profile_, "rmsnorm");
    const std::int64_t D = w.numel(), rows = x.numel() / std::max<std::int64_t>(D, 1);
    require(x.dim(-1) == D && y.shape() == x.shape() && rstd.numel() == rows, "rmsnorm_forward",
            "x " + shape_str(x.shape()) + ", w " + shape_str(w.shape()));
    dispatch(x.dtype(), "rmsnorm_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::rmsnorm_forward<T>(rows, D, x.data<T>(), w.data<T>(), eps, y.data<T>(), rstd.data<T>());
    });
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override {
    OpTimer timer(profile_, "rmsnorm");
    const std::int64_t D = w.numel(), rows = x.numel() / std::max<std::int64_t>(D, 1);
    require(dy.shape() == x.shape() && dx.shape() == x.shape() && dw.numel() == D &&
                rstd.numel() == rows,
            "rmsnorm_backward", "shapes");
    dispatch(x.dtype(), "rmsnorm_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::rmsnorm_backward<T>(rows, D, dy.data<T>(), x.data<T>(), w.data<T>(), rstd.data<T>(),
                               dx.data<T>(), dw.data<T>());
    });
  }

  void conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& c) override {
    OpTimer timer(profile_, "conv1d");
    require(x.ndim() == 3 && w.ndim() == 2, "conv1d_forward", "x (B, L, E), w (E, K)");
    const std::int64_t B = x.dim(0), L = x.dim(1), E = x.dim(2), K = w.dim(1);
    require_shape(w, {E, K}, "conv1d_forward", "w");
    require_shape(c, x.shape(), "conv1d_forward", "c");
    if (bias.defined()) require_shape(bias, {E}, "conv1d_forward", "bias");
    dispatch(x.dtype(), "conv1d_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::conv1d_forward<T>(B, L, E, K, x.data<T>(), w.data<T>(), ptr<T>(bias), c.data<T>());
    });
  }
  void conv1d_backward(const Tensor& dc, const Tensor& x, const Tensor& w, Tensor& dx,
                       Tensor& dw, Tensor& dbias) override {
    OpTimer timer(profile_, "conv1d");
    require(x.ndim() == 3 && w.ndim() == 2, "conv1d_backward", "x (B, L, E), w (E, K)");
    const std::int64_t B = x.dim(0), L = x.dim(1), E = x.dim(2), K = w.dim(1);
    require_shape(dc, x.shape(), "conv1d_backward", "dc");
    require_shape(dx, x.shape(), "conv1d_backward", "dx");
    require_shape(dw, w.shape(), "conv1d_backward", "dw");
    if (dbias.defined()) require_shape(dbias, {E}, "conv1d_backward", "dbias");
    dispatch(x.dtype(), "conv1d_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::conv1d_backward<T>(B, L, E, K, dc.data<T>(), x.data<T>(), w.data<T>(), dx.data<T>(),
                              dw.data<T>(), ptr<T>(dbias));
    });
  }

  void silu_forward(const Tensor& x, Tensor& y) override {
    OpTimer timer(profile_, "elementwise");
    unary("silu_forward", x, y, [](auto n, auto xp, auto yp) { cpu::silu_forward(n, xp, yp); });
  }
  void silu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) override {
    OpTimer timer(profile_, "elementwise");
    binary("silu_backward", dy, x, dx,
           [](auto n, auto a, auto b, auto o) { cpu::silu_backward(n, a, b, o); });
  }
  void relu_forward(const Tensor& x, Tensor& y) override {
    OpTimer timer(profile_, "elementwise");
    unary("relu_forward", x, y, [](std::int64_t n, const auto* xp, auto* yp) {
      for (std::int64_t i = 0; i < n; ++i) yp[i] = xp[i] > 0 ? xp[i] : 0;
    });
  }
  void relu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) override {
    OpTimer timer(profile_, "elementwise");
    binary("relu_backward", dy, x, dx,
           [](std::int64_t n, const auto* dyp, const auto* xp, auto* dxp) {
             for (std::int64_t i = 0; i < n; ++i) dxp[i] = xp[i] > 0 ? dyp[i] : 0;
           });
  }
  void softplus_forward(const Tensor& x, Tensor& y) override {
    OpTimer timer(profile_, "elementwise");
    unary("softplus_forward", x, y,
          [](auto n, auto xp, auto yp) { cpu::softplus_forward(n, xp, yp); });
  }
  void softplus_backward(const Tensor& dy, const Tensor& x, Tensor& dx) override {
    OpTimer timer(profile_, "elementwise");
    binary("softplus_backward", dy, x, dx,
           [](auto n, auto a, auto b, auto o) { cpu::softplus_backward(n, a, b, o); });
  }
  void gate_forward(const Tensor& y, const Tensor& z, Tensor& out) override {
    OpTimer timer(profile_, "elementwise");
    binary("gate_forward", y, z, out,
           [](auto n, auto a, auto b, auto o) { cpu::gate_forward(n, a, b, o); });
  }
  void gate_backward(const Tensor& dout, const Tensor& y, const Tensor& z, Tensor& dy,
                     Tensor& dz) override {
    OpTimer timer(profile_, "elementwise");
    for (const Tensor* t : std::initializer_list<const Tensor*>{&y, &z, &dy, &dz})
      require(t->shape() == dout.shape(), "gate_backward", "shapes differ");
    dispatch(dout.dtype(), "gate_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::gate_backward<T>(dout.numel(), dout.data<T>(), y.data<T>(), z.data<T>(), dy.data<T>(),
                            dz.data<T>());
    });
  }
  void ssm_A_forward(const Tensor& A_log, Tensor& A) override {
    unary("ssm_A_forward", A_log, A, [](auto n, auto xp, auto yp) {
      for (std::int64_t i = 0; i < n; ++i) yp[i] = -std::exp(xp[i]);
    });
  }
  void ssm_A_backward(const Tensor& dA, const Tensor& A, Tensor& dA_log) override {
    binary("ssm_A_backward", dA, A, dA_log, [](auto n, auto g, auto a, auto o) {
      for (std::int64_t i = 0; i < n; ++i) o[i] += g[i] * a[i];
    });
  }

  void selective_scan_forward(const ScanInputs& in, Tensor& y, Tensor& h_saved,
                              Tensor& h_last) override {
    OpTimer timer(profile_, "scan");
    const cpu::ScanDims d = scan_dims(in);
    require_shape(y, in.u.shape(), "selective_scan_forward", "y");
    require_shape(h_saved, {d.batch, d.n_chunks(), d.d_inner, d.d_state},
                  "selective_scan_forward", "h_saved");
    if (h_last.defined())
      require_shape(h_last, {d.batch, d.d_inner, d.d_state}, "selective_scan_forward", "h_last");
    dispatch(in.u.dtype(), "selective_scan_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::selective_scan_forward<T>(d, in.u.data<T>(), in.delta.data<T>(), in.A.data<T>(),
                                     in.Bm.data<T>(), in.Cm.data<T>(), ptr<T>(in.D),
                                     ptr<T>(in.h0), y.data<T>(), h_saved.data<T>(),
                                     ptr<T>(h_last));
    });
  }
  void selective_scan_backward(const ScanInputs& in, const Tensor& h_saved, const Tensor& dy,
                               ScanGrads& g) override {
    OpTimer timer(profile_, "scan");
    const cpu::ScanDims d = scan_dims(in);
    const char* op = "selective_scan_backward";
    require_shape(h_saved, {d.batch, d.n_chunks(), d.d_inner, d.d_state}, op, "h_saved");
    require_shape(dy, in.u.shape(), op, "dy");
    require_shape(g.du, in.u.shape(), op, "du");
    require_shape(g.ddelta, in.u.shape(), op, "ddelta");
    require_shape(g.dA, in.A.shape(), op, "dA");
    require_shape(g.dBm, in.Bm.shape(), op, "dBm");
    require_shape(g.dCm, in.Cm.shape(), op, "dCm");
    if (g.dD.defined()) require_shape(g.dD, {d.d_inner}, op, "dD");
    if (g.dh0.defined()) require_shape(g.dh0, {d.batch, d.d_inner, d.d_state}, op, "dh0");
    dispatch(in.u.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      cpu::selective_scan_backward<T>(d, in.u.data<T>(), in.delta.data<T>(), in.A.data<T>(),
                                      in.Bm.data<T>(), in.Cm.data<T>(), ptr<T>(in.D),
                                      h_saved.data<T>(), dy.data<T>(), g.du.data<T>(),
                                      g.ddelta.data<T>(), g.dA.data<T>(), g.dBm.data<T>(),
                                      g.dCm.data<T>(), ptr<T>(g.dD), ptr<T>(g.dh0));
    });
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) override {
    OpTimer timer(profile_, "embedding");
    const std::int64_t n = ids.numel(), D = table.dim(1);
    check_ids(ids, table.dim(0));
    require_shape(out, {n, D}, "embedding_forward", "out");
    dispatch(table.dtype(), "embedding_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::embedding_forward<T>(n, D, ids.data<std::int64_t>(), table.data<T>(), out.data<T>());
    });
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override {
    OpTimer timer(profile_, "embedding");
    const std::int64_t n = ids.numel(), D = dtable.dim(1);
    check_ids(ids, dtable.dim(0));
    require_shape(dout, {n, D}, "embedding_backward", "dout");
    dispatch(dtable.dtype(), "embedding_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::embedding_backward<T>(n, D, ids.data<std::int64_t>(), dout.data<T>(),
                                 dtable.data<T>());
    });
  }

  double cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                               std::int64_t* n_counted) override {
    OpTimer timer(profile_, "cross_entropy");
    const std::int64_t rows = targets.numel(), V = logits.dim(-1);
    require(logits.numel() == rows * V, "cross_entropy_forward", "logits rows != targets");
    check_targets(targets, V);
    double loss = 0;
    dispatch(logits.dtype(), "cross_entropy_forward", [&](auto zero) {
      using T = decltype(zero);
      loss = cpu::cross_entropy_forward<T>(rows, V, logits.data<T>(),
                                           targets.data<std::int64_t>(), n_counted);
    });
    return loss;
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, double scale,
                              Tensor& dlogits) override {
    OpTimer timer(profile_, "cross_entropy");
    const std::int64_t rows = targets.numel(), V = logits.dim(-1);
    require(logits.numel() == rows * V && dlogits.shape() == logits.shape(),
            "cross_entropy_backward", "shapes");
    check_targets(targets, V);
    dispatch(logits.dtype(), "cross_entropy_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::cross_entropy_backward<T>(rows, V, logits.data<T>(), targets.data<std::int64_t>(),
                                     scale, dlogits.data<T>());
    });
  }

  double sum_squares(const Tensor& x) override {
    OpTimer timer(profile_, "optimizer");
    double out = 0;
    dispatch(x.dtype(), "sum_squares", [&](auto zero) {
      using T = decltype(zero);
      out = cpu::sum_squares<T>(x.numel(), x.data<T>());
    });
    return out;
  }

  void scale(Tensor& x, double alpha) override {
    OpTimer timer(profile_, "elementwise");
    dispatch(x.dtype(), "scale", [&](auto zero) {
      using T = decltype(zero);
      T* p = x.data<T>();
      const T a = T(alpha);
      const std::int64_t n = x.numel();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) p[i] *= a;
    });
  }

  void mul(const Tensor& a, const Tensor& b, Tensor& out) override {
    OpTimer timer(profile_, "elementwise");
    binary("mul", a, b, out, [](std::int64_t n, const auto* ap, const auto* bp, auto* op) {
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) op[i] = ap[i] * bp[i];
    });
  }

  void index_add(const Tensor& values, const Tensor& index, Tensor& dst) override {
    OpTimer timer(profile_, "elementwise");
    check_index("index_add", values, index, dst);
    dispatch(dst.dtype(), "index_add", [&](auto zero) {
      using T = decltype(zero);
      const T* v = values.data<T>();
      const std::int64_t* idx = index.data<std::int64_t>();
      T* d = dst.data<T>();
      for (std::int64_t i = 0; i < index.numel(); ++i) d[idx[i]] += v[i];
    });
  }

  void index_gather(const Tensor& src, const Tensor& index, Tensor& out) override {
    OpTimer timer(profile_, "elementwise");
    check_index("index_gather", out, index, src);
    dispatch(src.dtype(), "index_gather", [&](auto zero) {
      using T = decltype(zero);
      const T* s = src.data<T>();
      const std::int64_t* idx = index.data<std::int64_t>();
      T* o = out.data<T>();
      for (std::int64_t i = 0; i < index.numel(); ++i) o[i] = s[idx[i]];
    });
  }

  void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                    const AdamWStep& s) override {
    OpTimer timer(profile_, "optimizer");
    const char* op = "adamw_update";
    require_shape(grad, param.shape(), op, "grad");
    require_shape(m, param.shape(), op, "m");
    require_shape(v, param.shape(), op, "v");
    require(s.step >= 1, op, "step must be >= 1");
    dispatch(param.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      cpu::adamw_update<T>(param.numel(), param.data<T>(), grad.data<T>(), m.data<T>(),
                           v.data<T>(), s.lr, s.beta1, s.beta2, s.eps, s.weight_decay, s.step);
    });
  }

 private:
  static cpu::ScanDims scan_dims(const ScanInputs& in) {
    const char* op = "selective_scan";
    require(in.u.ndim() == 3 && in.A.ndim() == 2, op, "u (B, L, E), A (E, N)");
    require(in.chunk > 0, op, "chunk must be positive");
    cpu::ScanDims d{in.u.dim(0), in.u.dim(1), in.u.dim(2), in.A.dim(1), in.chunk};
    require_shape(in.delta, in.u.shape(), op, "delta");
    require_shape(in.A, {d.d_inner, d.d_state}, op, "A");
    require_shape(in.Bm, {d.batch, d.seqlen, d.d_state}, op, "Bm");
    require_shape(in.Cm, {d.batch, d.seqlen, d.d_state}, op, "Cm");
    if (in.D.defined()) require_shape(in.D, {d.d_inner}, op, "D");
    if (in.h0.defined()) require_shape(in.h0, {d.batch, d.d_inner, d.d_state}, op, "h0");
    return d;
  }

  // values: (k) of full's dtype, index: (k) I64 within [0, full.numel())
  static void check_index(const char* op, const Tensor& values, const Tensor& index,
                          const Tensor& full) {
    require(index.dtype() == DType::I64 && index.ndim() == 1, op, "index must be (k) I64");
    require_shape(values, {index.numel()}, op, "values");
    require(values.dtype() == full.dtype(), op, "values and tensor dtypes differ");
    const std::int64_t* idx = index.data<std::int64_t>();
    for (std::int64_t i = 0; i < index.numel(); ++i)
      require(idx[i] >= 0 && idx[i] < full.numel(), op,
              "index " + std::to_string(idx[i]) + " outside [0, " + std::to_string(full.numel()) +
                  ")");
  }

  static void check_ids(const Tensor& ids, std::int64_t V) {
    const std::int64_t* p = ids.data<std::int64_t>();
    for (std::int64_t i = 0; i < ids.numel(); ++i)
      if (p[i] < 0 || p[i] >= V)
        throw Error("token id " + std::to_string(p[i]) + " at position " + std::to_string(i) +
                    " is outside the vocabulary [0, " + std::to_string(V) + ")");
  }
  static void check_targets(const Tensor& targets, std::int64_t V) {
    const std::int64_t* p = targets.data<std::int64_t>();
    for (std::int64_t i = 0; i < targets.numel(); ++i)
      if (p[i] != -100 && (p[i] < 0 || p[i] >= V))
        throw Error("label " + std::to_string(p[i]) + " at position " + std::to_string(i) +
                    " is outside the vocabulary [0, " + std::to_string(V) + ") and is not -100");
  }

  template <class F> static void unary(const char* op, const Tensor& x, Tensor& y, F&& f) {
    require(x.shape() == y.shape(), op, "shapes differ");
    dispatch(x.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      f(x.numel(), x.data<T>(), y.data<T>());
    });
  }
  template <class F>
  static void binary(const char* op, const Tensor& a, const Tensor& b, Tensor& out, F&& f) {
    require(a.shape() == b.shape() && a.shape() == out.shape(), op, "shapes differ");
    dispatch(a.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      f(a.numel(), a.data<T>(), b.data<T>(), out.data<T>());
    });
  }

  // wide: (rows, S), narrow: (rows, n); copies narrow <-> wide[:, col0 : col0+n]
  static void copy_columns(const char* op, const Tensor& wide, std::int64_t col0,
                           const Tensor& narrow, bool into_wide) {
    require(wide.ndim() == 2 && narrow.ndim() == 2 && wide.dim(0) == narrow.dim(0) &&
                col0 >= 0 && col0 + narrow.dim(1) <= wide.dim(1) &&
                wide.dtype() == narrow.dtype(),
            op, shape_str(narrow.shape()) + " at column " + std::to_string(col0) + " of " +
                    shape_str(wide.shape()));
    const std::int64_t rows = wide.dim(0), S = wide.dim(1), n = narrow.dim(1);
    const std::size_t es = dtype_size(wide.dtype());
    char* w = static_cast<char*>(wide.raw());
    char* nr = static_cast<char*>(narrow.raw());
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      char* wp = w + (r * S + col0) * es;
      char* np = nr + r * n * es;
      if (into_wide)
        std::memcpy(wp, np, n * es);
      else
        std::memcpy(np, wp, n * es);
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace ssmtune
