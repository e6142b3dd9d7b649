// The CPU backend: checks shapes and element types, then calls the float/double CPU
// reference functions (scan_cpu.h, ssd_cpu.h, ops_cpu.h, gemm_cpu.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "backend/backend.h"
#include "backend/op_checks.h"
#include "backend/cpu/gemm_cpu.h"
#include "backend/cpu/ops_cpu.h"
#include "backend/cpu/optim_cpu.h"
#include "backend/cpu/scan_cpu.h"
#include "backend/cpu/ssd_cpu.h"
#include "kernels/counter_rng.h"

namespace ssmtune {

namespace {

const OpChecks checks("cpu");

void require(bool cond, const char* op, const std::string& what) { checks.require(cond, op, what); }
void require_shape(const Tensor& t, const Shape& shape, const char* op, const char* name) {
  checks.shape(t, shape, op, name);
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
  void convert(const Tensor& src, Tensor& dst) override {
    OpTimer timer(profile_, "elementwise");
    require(src.shape() == dst.shape(), "convert",
            "shapes differ: " + shape_str(src.shape()) + " vs " + shape_str(dst.shape()));
    require(src.dtype() == DType::BF16, "convert",
            "src must be BF16, got " + std::string(dtype_name(src.dtype())));
    dispatch(dst.dtype(), "convert", [&](auto zero) {
      using T = decltype(zero);
      const auto* s = static_cast<const std::uint16_t*>(src.raw());
      T* d = dst.data<T>();
      const std::int64_t n = src.numel();
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMin)
      for (std::int64_t i = 0; i < n; ++i) d[i] = T(bf16_to_f32(s[i]));
    });
  }

  void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& A, const Tensor& B,
            double beta, Tensor& C) override {
    // Plain variables, not structured bindings: clang 14 (the fuzz build) cannot capture
    // those in the lambdas below.
    const auto dims = checks.gemm(trans_a, trans_b, A, B, C);
    const std::int64_t M = dims.M, N = dims.N, K = dims.K;
    OpTimer timer(profile_, "gemm", 2.0 * double(M) * double(N) * double(K));
    if (B.dtype() == DType::BF16) {  // a frozen weight held in bf16 (checks: A and C are F32)
      cpu::gemm_bf16_b(trans_a, trans_b, M, N, K, float(alpha), A.data<float>(), A.dim(1),
                       static_cast<const std::uint16_t*>(B.raw()), B.dim(1), float(beta),
                       C.data<float>(), N);
      return;
    }
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
#pragma omp parallel for schedule(static) if (rows * n >= cpu::kParallelMin)
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
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMin)
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
    const auto dims = checks.rmsnorm_forward(x, w, y, rstd);
    const std::int64_t rows = dims.rows, D = dims.D, G = dims.G;
    dispatch(x.dtype(), "rmsnorm_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::rmsnorm_forward<T>(rows, D, x.data<T>(), w.data<T>(), eps, y.data<T>(), rstd.data<T>(),
                              G);
    });
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override {
    OpTimer timer(profile_, "rmsnorm");
    const auto dims = checks.rmsnorm_backward(dy, x, w, rstd, dx, dw);
    const std::int64_t rows = dims.rows, D = dims.D, G = dims.G;
    dispatch(x.dtype(), "rmsnorm_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::rmsnorm_backward<T>(rows, D, dy.data<T>(), x.data<T>(), w.data<T>(), rstd.data<T>(),
                               dx.data<T>(), dw.data<T>(), G);
    });
  }

  void conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& c) override {
    OpTimer timer(profile_, "conv1d");
    const auto dims = checks.conv1d_forward(x, w, bias, c);
    const std::int64_t B = dims.B, L = dims.L, E = dims.E, K = dims.K;
    dispatch(x.dtype(), "conv1d_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::conv1d_forward<T>(B, L, E, K, x.data<T>(), w.data<T>(), ptr<T>(bias), c.data<T>());
    });
  }
  void conv1d_backward(const Tensor& dc, const Tensor& x, const Tensor& w, Tensor& dx,
                       Tensor& dw, Tensor& dbias) override {
    OpTimer timer(profile_, "conv1d");
    const auto dims = checks.conv1d_backward(dc, x, w, dx, dw, dbias);
    const std::int64_t B = dims.B, L = dims.L, E = dims.E, K = dims.K;
    dispatch(x.dtype(), "conv1d_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::conv1d_backward<T>(B, L, E, K, dc.data<T>(), x.data<T>(), w.data<T>(), dx.data<T>(),
                              ptr<T>(dw), ptr<T>(dbias));
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
  void clamp_forward(const Tensor& x, double lo, double hi, Tensor& y) override {
    OpTimer timer(profile_, "elementwise");
    unary("clamp_forward", x, y, [&](std::int64_t n, const auto* xp, auto* yp) {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(xp)>>;
      for (std::int64_t i = 0; i < n; ++i) yp[i] = std::min(std::max(xp[i], T(lo)), T(hi));
    });
  }
  void clamp_backward(const Tensor& dy, const Tensor& x, double lo, double hi,
                      Tensor& dx) override {
    OpTimer timer(profile_, "elementwise");
    binary("clamp_backward", dy, x, dx,
           [&](std::int64_t n, const auto* dyp, const auto* xp, auto* dxp) {
             using T = std::remove_cv_t<std::remove_pointer_t<decltype(xp)>>;
             for (std::int64_t i = 0; i < n; ++i)
               dxp[i] = xp[i] >= T(lo) && xp[i] <= T(hi) ? dyp[i] : T(0);
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
    OpTimer timer(profile_, "scan_forward");
    const cpu::ScanDims d = checks.scan(in);
    checks.scan_outputs(d, in, y, h_saved, h_last);
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
    OpTimer timer(profile_, "scan_backward");
    const cpu::ScanDims d = checks.scan(in);
    const char* op = "selective_scan_backward";
    checks.scan_grads(d, in, h_saved, dy, g);
    dispatch(in.u.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      cpu::selective_scan_backward<T>(d, in.u.data<T>(), in.delta.data<T>(), in.A.data<T>(),
                                      in.Bm.data<T>(), in.Cm.data<T>(), ptr<T>(in.D),
                                      h_saved.data<T>(), dy.data<T>(), g.du.data<T>(),
                                      g.ddelta.data<T>(), g.dA.data<T>(), g.dBm.data<T>(),
                                      g.dCm.data<T>(), ptr<T>(g.dD), ptr<T>(g.dh0));
    });
  }

  // The chunked SSD algorithm (ssd_cpu.cpp); ssd_reference_* is the tests' oracle.
  void ssd_forward(const SsdInputs& in, Tensor& y, Tensor& h_saved, Tensor& h_last) override {
    OpTimer timer(profile_, "ssd_forward");
    const cpu::SsdDims d = checks.ssd(in);
    checks.ssd_outputs(d, in, y, h_saved, h_last);
    dispatch(in.x.dtype(), "ssd_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::ssd_forward<T>(d, in.x.data<T>(), in.dt.data<T>(), in.A.data<T>(), in.Bm.data<T>(),
                          in.Cm.data<T>(), ptr<T>(in.D), ptr<T>(in.h0), y.data<T>(),
                          h_saved.data<T>(), ptr<T>(h_last));
    });
  }
  void ssd_backward(const SsdInputs& in, const Tensor& h_saved, const Tensor& dy,
                    SsdGrads& g) override {
    OpTimer timer(profile_, "ssd_backward");
    const cpu::SsdDims d = checks.ssd(in);
    checks.ssd_grads(d, in, h_saved, dy, g);
    dispatch(in.x.dtype(), "ssd_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::ssd_backward<T>(d, in.x.data<T>(), in.dt.data<T>(), in.A.data<T>(), in.Bm.data<T>(),
                           in.Cm.data<T>(), ptr<T>(in.D), h_saved.data<T>(), dy.data<T>(),
                           g.dx.data<T>(), g.ddt.data<T>(), g.dA.data<T>(), g.dBm.data<T>(),
                           g.dCm.data<T>(), ptr<T>(g.dD), ptr<T>(g.dh0));
    });
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                         double scale, Tensor& out, Tensor& lse) override {
    OpTimer timer(profile_, "attention");
    const cpu::AttentionDims d = checks.attention("attention_forward", q, k, v, key_mask);
    checks.attention_outputs(d, q, out, lse);
    dispatch(q.dtype(), "attention_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::attention_forward<T>(d, q.data<T>(), k.data<T>(), v.data<T>(),
                                ptr<std::int64_t>(key_mask), scale, out.data<T>(), lse.data<T>());
    });
  }
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& key_mask, double scale, const Tensor& out,
                          const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                          Tensor& dv) override {
    OpTimer timer(profile_, "attention");
    const cpu::AttentionDims d = checks.attention("attention_backward", q, k, v, key_mask);
    checks.attention_grads(d, q, k, out, lse, dout, dq, dk, dv);
    dispatch(q.dtype(), "attention_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::attention_backward<T>(d, q.data<T>(), k.data<T>(), v.data<T>(),
                                 ptr<std::int64_t>(key_mask), scale, out.data<T>(), lse.data<T>(),
                                 dout.data<T>(), dq.data<T>(), dk.data<T>(), dv.data<T>());
    });
  }

  void moe_router_forward(const Tensor& logits, std::int64_t top_k, Tensor& probs, Tensor& weights,
                          Tensor& experts) override {
    OpTimer timer(profile_, "moe");
    const cpu::MoeRouterDims d = checks.moe_router_forward(logits, top_k, probs, weights, experts);
    dispatch(logits.dtype(), "moe_router_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::moe_router_forward<T>(d, logits.data<T>(), probs.data<T>(), weights.data<T>(),
                                 experts.data<std::int64_t>());
    });
  }
  void moe_router_backward(const Tensor& dweights, const Tensor& probs, const Tensor& experts,
                           const Tensor& dprobs_extra, Tensor& dlogits) override {
    OpTimer timer(profile_, "moe");
    const cpu::MoeRouterDims d =
        checks.moe_router_backward(dweights, probs, experts, dprobs_extra, dlogits);
    dispatch(probs.dtype(), "moe_router_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::moe_router_backward<T>(d, dweights.data<T>(), probs.data<T>(),
                                  experts.data<std::int64_t>(), ptr<T>(dprobs_extra),
                                  dlogits.data<T>());
    });
  }
  void moe_dispatch(const Tensor& x, const Tensor& slot, Tensor& xs) override {
    OpTimer timer(profile_, "moe");
    const char* op = "moe_dispatch";
    const cpu::MoeSlotDims d = moe_slot(op, slot, x, "x", xs, "xs");
    dispatch(x.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      cpu::moe_dispatch<T>(d, x.data<T>(), slot.data<std::int64_t>(), xs.data<T>());
    });
  }
  void moe_dispatch_backward(const Tensor& dxs, const Tensor& slot, Tensor& dx) override {
    OpTimer timer(profile_, "moe");
    const char* op = "moe_dispatch_backward";
    const cpu::MoeSlotDims d = moe_slot(op, slot, dx, "dx", dxs, "dxs");
    dispatch(dx.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      cpu::moe_dispatch_backward<T>(d, dxs.data<T>(), slot.data<std::int64_t>(), dx.data<T>());
    });
  }
  void moe_combine(const Tensor& ys, const Tensor& slot, const Tensor& weights,
                   Tensor& out) override {
    OpTimer timer(profile_, "moe");
    const char* op = "moe_combine";
    const cpu::MoeSlotDims d = moe_slot(op, slot, out, "out", ys, "ys");
    checks.moe_per_choice(op, d, weights, "weights", ys);
    dispatch(ys.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      cpu::moe_combine<T>(d, ys.data<T>(), slot.data<std::int64_t>(), weights.data<T>(),
                          out.data<T>());
    });
  }
  void moe_combine_backward(const Tensor& dout, const Tensor& ys, const Tensor& slot,
                            const Tensor& weights, Tensor& dys, Tensor& dweights) override {
    OpTimer timer(profile_, "moe");
    const char* op = "moe_combine_backward";
    const cpu::MoeSlotDims d = moe_slot(op, slot, dout, "dout", ys, "ys");
    require_shape(dys, ys.shape(), op, "dys");
    require(dys.dtype() == ys.dtype(), op, "dys must have ys' element type");
    checks.moe_per_choice(op, d, weights, "weights", ys);
    checks.moe_per_choice(op, d, dweights, "dweights", ys);
    dispatch(ys.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      cpu::moe_combine_backward<T>(d, dout.data<T>(), ys.data<T>(), slot.data<std::int64_t>(),
                                   weights.data<T>(), dys.data<T>(), dweights.data<T>());
    });
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) override {
    OpTimer timer(profile_, "embedding");
    const std::int64_t n = ids.numel(), D = table.dim(1);
    OpChecks::ids(ids, table.dim(0));
    require_shape(out, {n, D}, "embedding_forward", "out");
    if (table.dtype() == DType::BF16) {  // frozen weights held in bf16: widened as copied
      dispatch(out.dtype(), "embedding_forward", [&](auto zero) {
        using T = decltype(zero);
        cpu::embedding_forward_bf16<T>(n, D, ids.data<std::int64_t>(),
                                       static_cast<const std::uint16_t*>(table.raw()),
                                       out.data<T>());
      });
      return;
    }
    dispatch(table.dtype(), "embedding_forward", [&](auto zero) {
      using T = decltype(zero);
      cpu::embedding_forward<T>(n, D, ids.data<std::int64_t>(), table.data<T>(), out.data<T>());
    });
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override {
    OpTimer timer(profile_, "embedding");
    const std::int64_t n = ids.numel(), D = dtable.dim(1);
    OpChecks::ids(ids, dtable.dim(0));
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
    OpChecks::targets(targets, V);
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
    OpChecks::targets(targets, V);
    dispatch(logits.dtype(), "cross_entropy_backward", [&](auto zero) {
      using T = decltype(zero);
      cpu::cross_entropy_backward<T>(rows, V, logits.data<T>(), targets.data<std::int64_t>(),
                                     scale, dlogits.data<T>());
    });
  }

  // DoRA's row ops: plain loops over rows, the row sums in double in column order.
  void row_norms(const Tensor& a, Tensor& norm) override {
    OpTimer timer(profile_, "elementwise");
    const auto dims = checks.rows_of("row_norms", a, {}, {&norm});
    const std::int64_t rows = dims.rows, cols = dims.cols;
    dispatch(a.dtype(), "row_norms", [&](auto zero) {
      using T = decltype(zero);
      const T* pa = a.data<T>();
      T* pn = norm.data<T>();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < rows; ++i) {
        double sq = 0;
        for (std::int64_t j = 0; j < cols; ++j) sq += double(pa[i * cols + j]) * pa[i * cols + j];
        pn[i] = T(std::sqrt(sq));
      }
    });
  }
  void scale_rows(const Tensor& f, const Tensor& a, const Tensor& sub, Tensor& out) override {
    OpTimer timer(profile_, "elementwise");
    const auto dims = checks.rows_of("scale_rows", a, {&sub, &out}, {&f});
    const std::int64_t rows = dims.rows, cols = dims.cols;
    dispatch(a.dtype(), "scale_rows", [&](auto zero) {
      using T = decltype(zero);
      const T *pf = f.data<T>(), *pa = a.data<T>(), *ps = ptr<T>(sub);
      T* po = out.data<T>();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < rows; ++i)
        for (std::int64_t j = 0; j < cols; ++j)
          po[i * cols + j] = pf[i] * pa[i * cols + j] - (ps ? ps[i * cols + j] : T(0));
    });
  }
  void row_dots_div_add(const Tensor& a, const Tensor& b, const Tensor& d, Tensor& out) override {
    OpTimer timer(profile_, "elementwise");
    const auto dims = checks.rows_of("row_dots_div_add", a, {&b}, {&d, &out});
    const std::int64_t rows = dims.rows, cols = dims.cols;
    dispatch(a.dtype(), "row_dots_div_add", [&](auto zero) {
      using T = decltype(zero);
      const T *pa = a.data<T>(), *pb = b.data<T>(), *pd = d.data<T>();
      T* po = out.data<T>();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < rows; ++i) {
        double dot = 0;
        for (std::int64_t j = 0; j < cols; ++j)
          dot += double(pa[i * cols + j]) * double(pb[i * cols + j]);
        po[i] += T(dot / double(pd[i]));
      }
    });
  }
  void div(const Tensor& a, const Tensor& b, Tensor& out) override {
    OpTimer timer(profile_, "elementwise");
    binary("div", a, b, out, [](std::int64_t n, const auto* ap, const auto* bp, auto* op) {
      for (std::int64_t i = 0; i < n; ++i) op[i] = ap[i] / bp[i];
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

  void dropout_mask(std::uint64_t key, double p, Tensor& keep_scale) override {
    OpTimer timer(profile_, "elementwise");
    checks.require(p >= 0 && p < 1, "dropout_mask", "p in [0, 1)");
    const std::uint64_t threshold = dropout_threshold(p);
    dispatch(keep_scale.dtype(), "dropout_mask", [&](auto zero) {
      using T = decltype(zero);
      T* out = keep_scale.data<T>();
      const T keep = T(1.0 / (1.0 - p));
      const std::int64_t n = keep_scale.numel();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i)
        out[i] = dropout_keeps(key, std::uint64_t(i), threshold) ? keep : T(0);
    });
  }

  void index_add(const Tensor& values, const Tensor& index, Tensor& dst) override {
    OpTimer timer(profile_, "elementwise");
    checks.index("index_add", values, index, dst);
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
    checks.index("index_gather", out, index, src);
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
    checks.adamw(param, grad, m, v, s);
    dispatch(param.dtype(), op, [&](auto zero) {
      using T = decltype(zero);
      cpu::adamw_update<T>(param.numel(), param.data<T>(), grad.data<T>(), m.data<T>(),
                           v.data<T>(), s.lr, s.beta1, s.beta2, s.eps, s.weight_decay, s.step);
    });
  }

 private:
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

  // The shared slot checks, values included: the copies index rows by slot.
  static cpu::MoeSlotDims moe_slot(const char* op, const Tensor& slot, const Tensor& tokens,
                                   const char* tokens_name, const Tensor& grouped,
                                   const char* grouped_name) {
    const cpu::MoeSlotDims d =
        checks.moe_slot(op, slot, tokens, tokens_name, grouped, grouped_name);
    checks.moe_slot_values(op, slot);
    return d;
  }

  // wide: (rows, S), narrow: (rows, n); copies narrow <-> wide[:, col0 : col0+n]
  static void copy_columns(const char* op, const Tensor& wide, std::int64_t col0,
                           const Tensor& narrow, bool into_wide) {
    checks.columns(op, wide, col0, narrow);
    const std::int64_t rows = wide.dim(0), S = wide.dim(1), n = narrow.dim(1);
    const std::size_t es = dtype_size(wide.dtype());
    char* w = static_cast<char*>(wide.raw());
    char* nr = static_cast<char*>(narrow.raw());
#pragma omp parallel for schedule(static) if (rows * n >= cpu::kParallelMin)
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
