#include "backend/op_checks.h"

#include <algorithm>
#include <vector>

namespace ssmtune {

void OpChecks::require(bool cond, const char* op, const std::string& what) const {
  if (!cond) throw Error(std::string(backend_) + " backend: " + op + ": " + what);
}

void OpChecks::shape(const Tensor& t, const Shape& shape, const char* op, const char* name) const {
  require(t.defined(), op, std::string(name) + " is missing");
  require(
      t.shape() == shape, op,
      std::string(name) + " has shape " + shape_str(t.shape()) + ", expected " + shape_str(shape));
}

OpChecks::GemmDims OpChecks::gemm(bool trans_a, bool trans_b, const Tensor& A, const Tensor& B,
                                  const Tensor& C) const {
  require(A.ndim() == 2 && B.ndim() == 2 && C.ndim() == 2, "gemm", "operands must be 2-D");
  const std::int64_t M = trans_a ? A.dim(1) : A.dim(0), K = trans_a ? A.dim(0) : A.dim(1);
  const std::int64_t Kb = trans_b ? B.dim(1) : B.dim(0), N = trans_b ? B.dim(0) : B.dim(1);
  require(K == Kb && C.dim(0) == M && C.dim(1) == N, "gemm",
          "shapes " + shape_str(A.shape()) + (trans_a ? "^T" : "") + " x " + shape_str(B.shape()) +
              (trans_b ? "^T" : "") + " -> " + shape_str(C.shape()));
  // B may be a frozen weight held in bf16 beside fp32 activations (backend.h).
  const bool bf16_weight = B.dtype() == DType::BF16 && C.dtype() == DType::F32;
  require(A.dtype() == C.dtype() && (B.dtype() == C.dtype() || bf16_weight), "gemm",
          "mixed element types: A " + std::string(dtype_name(A.dtype())) + ", B " +
              std::string(dtype_name(B.dtype())) + ", C " + std::string(dtype_name(C.dtype())));
  return {M, N, K};
}

OpChecks::NormDims OpChecks::rmsnorm_forward(const Tensor& x, const Tensor& w, const Tensor& y,
                                             const Tensor& rstd) const {
  const std::int64_t D = w.numel(), rows = x.numel() / std::max<std::int64_t>(D, 1);
  const std::int64_t G = rstd.numel() / std::max<std::int64_t>(rows, 1);
  require(x.ndim() >= 1 && x.dim(-1) == D && y.shape() == x.shape() && G >= 1 && D % G == 0 &&
              rstd.numel() == rows * G,
          "rmsnorm_forward",
          "x " + shape_str(x.shape()) + ", w " + shape_str(w.shape()) + ", rstd " +
              shape_str(rstd.shape()));
  return {rows, D, G};
}

OpChecks::NormDims OpChecks::rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                              const Tensor& rstd, const Tensor& dx,
                                              const Tensor& dw) const {
  const std::int64_t D = w.numel(), rows = x.numel() / std::max<std::int64_t>(D, 1);
  const std::int64_t G = rstd.numel() / std::max<std::int64_t>(rows, 1);
  require(dy.shape() == x.shape() && dx.shape() == x.shape() && dw.numel() == D && G >= 1 &&
              D % G == 0 && rstd.numel() == rows * G,
          "rmsnorm_backward", "shapes");
  return {rows, D, G};
}

OpChecks::ConvDims OpChecks::conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                            const Tensor& c) const {
  const char* op = "conv1d_forward";
  require(x.ndim() == 3 && w.ndim() == 2, op, "x (B, L, E), w (E, K)");
  const ConvDims d{x.dim(0), x.dim(1), x.dim(2), w.dim(1)};
  shape(w, {d.E, d.K}, op, "w");
  shape(c, x.shape(), op, "c");
  if (bias.defined()) shape(bias, {d.E}, op, "bias");
  return d;
}

OpChecks::ConvDims OpChecks::conv1d_backward(const Tensor& dc, const Tensor& x, const Tensor& w,
                                             const Tensor& dx, const Tensor& dw,
                                             const Tensor& dbias) const {
  const char* op = "conv1d_backward";
  require(x.ndim() == 3 && w.ndim() == 2, op, "x (B, L, E), w (E, K)");
  const ConvDims d{x.dim(0), x.dim(1), x.dim(2), w.dim(1)};
  shape(dc, x.shape(), op, "dc");
  shape(dx, x.shape(), op, "dx");
  if (dw.defined()) shape(dw, w.shape(), op, "dw");
  if (dbias.defined()) shape(dbias, {d.E}, op, "dbias");
  return d;
}

OpChecks::RowDims OpChecks::rows_of(const char* op, const Tensor& a,
                                     std::initializer_list<const Tensor*> same,
                                     std::initializer_list<const Tensor*> per_row) const {
  require(a.defined() && a.ndim() >= 1 && a.dim(0) > 0, op, "a must have rows");
  const std::int64_t rows = a.dim(0);
  for (const Tensor* t : same)
    if (t->defined()) shape(*t, a.shape(), op, "operand");
  for (const Tensor* t : per_row) shape(*t, {rows}, op, "per-row operand");
  return {rows, a.numel() / rows};
}

void OpChecks::columns(const char* op, const Tensor& wide, std::int64_t col0,
                       const Tensor& narrow) const {
  require(wide.ndim() == 2 && narrow.ndim() == 2 && wide.dim(0) == narrow.dim(0) && col0 >= 0 &&
              col0 + narrow.dim(1) <= wide.dim(1) && wide.dtype() == narrow.dtype(),
          op,
          shape_str(narrow.shape()) + " at column " + std::to_string(col0) + " of " +
              shape_str(wide.shape()));
}

cpu::ScanDims OpChecks::scan(const Backend::ScanInputs& in) const {
  const char* op = "selective_scan";
  require(in.u.ndim() == 3 && in.A.ndim() == 2, op, "u (B, L, E), A (E, N)");
  require(in.chunk > 0, op, "chunk must be positive");
  cpu::ScanDims d{in.u.dim(0), in.u.dim(1), in.u.dim(2), in.A.dim(1), in.chunk,
                  in.delta_softplus};
  shape(in.delta, in.u.shape(), op, "delta");
  shape(in.A, {d.d_inner, d.d_state}, op, "A");
  shape(in.Bm, {d.batch, d.seqlen, d.d_state}, op, "Bm");
  shape(in.Cm, {d.batch, d.seqlen, d.d_state}, op, "Cm");
  if (in.D.defined()) shape(in.D, {d.d_inner}, op, "D");
  if (in.h0.defined()) shape(in.h0, {d.batch, d.d_inner, d.d_state}, op, "h0");
  return d;
}

void OpChecks::scan_outputs(const cpu::ScanDims& d, const Backend::ScanInputs& in, const Tensor& y,
                            const Tensor& h_saved, const Tensor& h_last) const {
  const char* op = "selective_scan_forward";
  shape(y, in.u.shape(), op, "y");
  shape(h_saved, {d.batch, d.n_chunks(), d.d_inner, d.d_state}, op, "h_saved");
  if (h_last.defined()) shape(h_last, {d.batch, d.d_inner, d.d_state}, op, "h_last");
}

void OpChecks::scan_grads(const cpu::ScanDims& d, const Backend::ScanInputs& in,
                          const Tensor& h_saved, const Tensor& dy,
                          const Backend::ScanGrads& g) const {
  const char* op = "selective_scan_backward";
  shape(h_saved, {d.batch, d.n_chunks(), d.d_inner, d.d_state}, op, "h_saved");
  shape(dy, in.u.shape(), op, "dy");
  shape(g.du, in.u.shape(), op, "du");
  shape(g.ddelta, in.u.shape(), op, "ddelta");
  shape(g.dA, in.A.shape(), op, "dA");
  shape(g.dBm, in.Bm.shape(), op, "dBm");
  shape(g.dCm, in.Cm.shape(), op, "dCm");
  if (g.dD.defined()) shape(g.dD, {d.d_inner}, op, "dD");
  if (g.dh0.defined()) shape(g.dh0, {d.batch, d.d_inner, d.d_state}, op, "dh0");
}

cpu::SsdDims OpChecks::ssd(const Backend::SsdInputs& in) const {
  const char* op = "ssd";
  require(in.x.defined() && in.x.ndim() == 4 && in.Bm.defined() && in.Bm.ndim() == 4, op,
          "x (B, L, H, P), Bm (B, L, G, N)");
  require(in.chunk > 0, op, "chunk must be positive, got " + std::to_string(in.chunk));
  const cpu::SsdDims d{in.x.dim(0), in.x.dim(1), in.x.dim(2), in.x.dim(3),
                       in.Bm.dim(2), in.Bm.dim(3), in.chunk};
  require(d.n_groups > 0 && d.n_heads % d.n_groups == 0, op,
          "heads (" + std::to_string(d.n_heads) + ") must be a multiple of groups (" +
              std::to_string(d.n_groups) + ")");
  shape(in.dt, {d.batch, d.seqlen, d.n_heads}, op, "dt");
  shape(in.A, {d.n_heads}, op, "A");
  shape(in.Bm, {d.batch, d.seqlen, d.n_groups, d.d_state}, op, "Bm");
  shape(in.Cm, in.Bm.shape(), op, "Cm");
  if (in.D.defined()) shape(in.D, {d.n_heads}, op, "D");
  if (in.h0.defined()) shape(in.h0, {d.batch, d.n_heads, d.head_dim, d.d_state}, op, "h0");
  for (const Tensor* t : {&in.dt, &in.A, &in.Bm, &in.Cm, &in.D, &in.h0})
    require(!t->defined() || t->dtype() == in.x.dtype(), op,
            "inputs must share x's element type " + std::string(dtype_name(in.x.dtype())));
  return d;
}

void OpChecks::ssd_outputs(const cpu::SsdDims& d, const Backend::SsdInputs& in, const Tensor& y,
                           const Tensor& h_saved, const Tensor& h_last) const {
  const char* op = "ssd_forward";
  const Shape state{d.batch, d.n_heads, d.head_dim, d.d_state};
  shape(y, in.x.shape(), op, "y");
  shape(h_saved, {d.batch, d.n_chunks(), d.n_heads, d.head_dim, d.d_state}, op, "h_saved");
  if (h_last.defined()) shape(h_last, state, op, "h_last");
  for (const Tensor* t : {&y, &h_saved, &h_last})
    require(!t->defined() || t->dtype() == in.x.dtype(), op, "outputs must have x's element type");
}

void OpChecks::ssd_grads(const cpu::SsdDims& d, const Backend::SsdInputs& in,
                         const Tensor& h_saved, const Tensor& dy,
                         const Backend::SsdGrads& g) const {
  const char* op = "ssd_backward";
  shape(h_saved, {d.batch, d.n_chunks(), d.n_heads, d.head_dim, d.d_state}, op, "h_saved");
  shape(dy, in.x.shape(), op, "dy");
  shape(g.dx, in.x.shape(), op, "dx");
  shape(g.ddt, in.dt.shape(), op, "ddt");
  shape(g.dA, in.A.shape(), op, "dA");
  shape(g.dBm, in.Bm.shape(), op, "dBm");
  shape(g.dCm, in.Cm.shape(), op, "dCm");
  if (g.dD.defined()) {
    require(in.D.defined(), op, "dD given but D is undefined");
    shape(g.dD, {d.n_heads}, op, "dD");
  }
  if (g.dh0.defined()) shape(g.dh0, {d.batch, d.n_heads, d.head_dim, d.d_state}, op, "dh0");
  for (const Tensor* t : {&h_saved, &dy, &g.dx, &g.ddt, &g.dA, &g.dBm, &g.dCm, &g.dD, &g.dh0})
    require(!t->defined() || t->dtype() == in.x.dtype(), op,
            "h_saved, dy and the gradients must have x's element type");
}

cpu::AttentionDims OpChecks::attention(const char* op, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const Tensor& key_mask) const {
  require(q.defined() && k.defined() && q.ndim() == 4 && k.ndim() == 4, op,
          "q (B, Lq, H, hd), k (B, Lk, KV, hd)");
  const cpu::AttentionDims d{q.dim(0), q.dim(1), k.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  require(d.KV > 0 && d.H % d.KV == 0, op,
          std::to_string(d.H) + " query heads are not a multiple of " + std::to_string(d.KV) +
              " key/value heads");
  require(d.hd > 0, op, "head dim must be positive");
  // The queries are the last Lq positions of the keys' Lk (ops_cpu.h), so there are no more of
  // them than keys.
  require(d.Lq <= d.Lk, op,
          "q has " + std::to_string(d.Lq) + " steps, more than the " + std::to_string(d.Lk) +
              " of k (the queries are the last Lq <= Lk positions)");
  shape(k, {d.B, d.Lk, d.KV, d.hd}, op, "k");
  shape(v, k.shape(), op, "v");
  require(k.dtype() == q.dtype() && v.dtype() == q.dtype(), op, "q, k, v element types differ");
  if (key_mask.defined()) {
    shape(key_mask, {d.B, d.Lk}, op, "key_mask");
    require(key_mask.dtype() == DType::I64, op, "key_mask must be I64");
  }
  return d;
}

void OpChecks::attention_outputs(const cpu::AttentionDims& d, const Tensor& q, const Tensor& out,
                                 const Tensor& lse) const {
  const char* op = "attention_forward";
  shape(out, q.shape(), op, "out");
  shape(lse, {d.B, d.H, d.Lq}, op, "lse");
  require(out.dtype() == q.dtype() && lse.dtype() == q.dtype(), op,
          "out and lse must have q's element type");
}

void OpChecks::attention_grads(const cpu::AttentionDims& d, const Tensor& q, const Tensor& k,
                               const Tensor& out, const Tensor& lse, const Tensor& dout,
                               const Tensor& dq, const Tensor& dk, const Tensor& dv) const {
  const char* op = "attention_backward";
  shape(out, q.shape(), op, "out");
  shape(lse, {d.B, d.H, d.Lq}, op, "lse");
  shape(dout, q.shape(), op, "dout");
  shape(dq, q.shape(), op, "dq");
  shape(dk, k.shape(), op, "dk");
  shape(dv, k.shape(), op, "dv");
  for (const Tensor* t : {&out, &lse, &dout, &dq, &dk, &dv})
    require(t->dtype() == q.dtype(), op, "every tensor must have q's element type");
}

cpu::MoeRouterDims OpChecks::moe_router_forward(const Tensor& logits, std::int64_t top_k,
                                                const Tensor& probs, const Tensor& weights,
                                                const Tensor& experts) const {
  const char* op = "moe_router_forward";
  require(logits.defined() && logits.ndim() == 2, op, "logits must be (rows, X)");
  const cpu::MoeRouterDims d{logits.dim(0), logits.dim(1), top_k};
  moe_top_k(op, d);
  shape(probs, logits.shape(), op, "probs");
  shape(weights, {d.rows, d.k}, op, "weights");
  shape(experts, {d.rows, d.k}, op, "experts");
  require(experts.dtype() == DType::I64, op, "experts must be I64");
  for (const Tensor* t : {&probs, &weights})
    require(t->dtype() == logits.dtype(), op, "probs and weights must have logits' element type");
  return d;
}

cpu::MoeRouterDims OpChecks::moe_router_backward(const Tensor& dweights, const Tensor& probs,
                                                 const Tensor& experts, const Tensor& dprobs_extra,
                                                 const Tensor& dlogits) const {
  const char* op = "moe_router_backward";
  require(probs.defined() && probs.ndim() == 2, op, "probs must be (rows, X)");
  require(dweights.defined() && dweights.ndim() == 2, op, "dweights must be (rows, k)");
  const cpu::MoeRouterDims d{probs.dim(0), probs.dim(1), dweights.dim(1)};
  moe_top_k(op, d);
  shape(dweights, {d.rows, d.k}, op, "dweights");
  shape(experts, {d.rows, d.k}, op, "experts");
  require(experts.dtype() == DType::I64, op, "experts must be I64");
  if (dprobs_extra.defined()) shape(dprobs_extra, probs.shape(), op, "dprobs_extra");
  shape(dlogits, probs.shape(), op, "dlogits");
  for (const Tensor* t : {&dweights, &dprobs_extra, &dlogits})
    require(!t->defined() || t->dtype() == probs.dtype(), op,
            "dweights, dprobs_extra and dlogits must have probs' element type");
  return d;
}

void OpChecks::moe_top_k(const char* op, const cpu::MoeRouterDims& d) const {
  require(d.k >= 1 && d.k <= d.X, op,
          "top_k " + std::to_string(d.k) + " outside [1, " + std::to_string(d.X) +
              "] (1 to the number of experts)");
}

cpu::MoeSlotDims OpChecks::moe_slot(const char* op, const Tensor& slot, const Tensor& tokens,
                                    const char* tokens_name, const Tensor& grouped,
                                    const char* grouped_name) const {
  require(slot.defined() && slot.ndim() == 2, op, "slot must be (rows, k)");
  require(slot.dtype() == DType::I64, op, "slot must be I64");
  require(tokens.defined() && tokens.ndim() == 2, op,
          std::string(tokens_name) + " must be (rows, D)");
  const cpu::MoeSlotDims d{slot.dim(0), slot.dim(1), tokens.dim(1)};
  shape(tokens, {d.rows, d.D}, op, tokens_name);
  shape(grouped, {d.rows * d.k, d.D}, op, grouped_name);
  require(grouped.dtype() == tokens.dtype(), op,
          std::string(tokens_name) + " and " + grouped_name + " element types differ");
  return d;
}

void OpChecks::moe_per_choice(const char* op, const cpu::MoeSlotDims& d, const Tensor& t,
                              const char* name, const Tensor& like) const {
  shape(t, {d.rows, d.k}, op, name);
  require(t.dtype() == like.dtype(), op,
          std::string(name) + " is " + std::string(dtype_name(t.dtype())) + ", expected " +
              std::string(dtype_name(like.dtype())));
}

void OpChecks::moe_slot_values(const char* op, const Tensor& slot) const {
  const std::int64_t n = slot.numel(), k = slot.dim(1);
  const std::int64_t* s = slot.data<std::int64_t>();
  auto at = [k](std::int64_t i) {
    return "slot[" + std::to_string(i / k) + ", " + std::to_string(i % k) + "]";
  };
  std::vector<std::int64_t> first(static_cast<std::size_t>(n), -1);  // where each value was seen
  for (std::int64_t i = 0; i < n; ++i) {
    require(s[i] >= 0 && s[i] < n, op,
            at(i) + " = " + std::to_string(s[i]) + " is outside [0, " + std::to_string(n) + ")");
    std::int64_t& seen = first[static_cast<std::size_t>(s[i])];
    require(seen < 0, op,
            at(i) + " = " + std::to_string(s[i]) + " repeats " + at(seen) +
                " (slot must be a permutation of [0, " + std::to_string(n) + "))");
    seen = i;
  }
}

void OpChecks::index(const char* op, const Tensor& values, const Tensor& index,
                     const Tensor& full) const {
  require(index.dtype() == DType::I64 && index.ndim() == 1, op, "index must be (k) I64");
  shape(values, {index.numel()}, op, "values");
  require(values.dtype() == full.dtype(), op, "values and tensor dtypes differ");
  const std::int64_t* idx = index.data<std::int64_t>();
  for (std::int64_t i = 0; i < index.numel(); ++i)
    require(
        idx[i] >= 0 && idx[i] < full.numel(), op,
        "index " + std::to_string(idx[i]) + " outside [0, " + std::to_string(full.numel()) + ")");
}

void OpChecks::adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                     const Backend::AdamWStep& s) const {
  const char* op = "adamw_update";
  shape(grad, param.shape(), op, "grad");
  shape(m, param.shape(), op, "m");
  shape(v, param.shape(), op, "v");
  require(s.step >= 1, op, "step must be >= 1");
}

void OpChecks::ids(const Tensor& ids, std::int64_t V) {
  const std::int64_t* p = ids.data<std::int64_t>();
  for (std::int64_t i = 0; i < ids.numel(); ++i)
    if (p[i] < 0 || p[i] >= V)
      throw Error("token id " + std::to_string(p[i]) + " at position " + std::to_string(i) +
                  " is outside the vocabulary [0, " + std::to_string(V) + ")");
}

void OpChecks::targets(const Tensor& targets, std::int64_t V) {
  const std::int64_t* p = targets.data<std::int64_t>();
  for (std::int64_t i = 0; i < targets.numel(); ++i)
    if (p[i] != -100 && (p[i] < 0 || p[i] >= V))
      throw Error("label " + std::to_string(p[i]) + " at position " + std::to_string(i) +
                  " is outside the vocabulary [0, " + std::to_string(V) + ") and is not -100");
}

}  // namespace ssmtune
