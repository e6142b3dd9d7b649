// The argument checks every backend makes before an op runs (shapes, element types, token ids,
// labels, indices), in one place so the CPU and CUDA backends refuse the same inputs with the
// same messages. Each throws Error("<backend> backend: <op>: <what>").
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "backend/backend.h"
#include "backend/cpu/ops_cpu.h"
#include "backend/cpu/scan_cpu.h"
#include "backend/cpu/ssd_cpu.h"

namespace ssmtune {

class OpChecks {
 public:
  explicit OpChecks(const char* backend) : backend_(backend) {}

  void require(bool cond, const char* op, const std::string& what) const;
  void shape(const Tensor& t, const Shape& shape, const char* op, const char* name) const;
  // Sizes of C = op(A) op(B) after checking the operands fit: {M, N, K}.
  struct GemmDims {
    std::int64_t M, N, K;
  };
  GemmDims gemm(bool trans_a, bool trans_b, const Tensor& A, const Tensor& B,
                const Tensor& C) const;
  // RMSNorm's rows and width {rows, D}.
  // rows, the width D, and the groups G each row is normalised in (rstd: (rows, G)).
  struct NormDims {
    std::int64_t rows, D, G;
  };
  NormDims rmsnorm_forward(const Tensor& x, const Tensor& w, const Tensor& y,
                           const Tensor& rstd) const;
  NormDims rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                            const Tensor& dx, const Tensor& dw) const;
  // The causal conv's sizes {B, L, E, K}.
  struct ConvDims {
    std::int64_t B, L, E, K;
  };
  ConvDims conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                          const Tensor& c) const;
  ConvDims conv1d_backward(const Tensor& dc, const Tensor& x, const Tensor& w, const Tensor& dx,
                           const Tensor& dw, const Tensor& dbias) const;
  // DoRA's row ops: a (and b, sub, out when defined): (rows, cols) with rows = a.dim(0);
  // the per-row tensors (rows). Returns {rows, cols}.
  struct RowDims {
    std::int64_t rows, cols;
  };
  RowDims rows_of(const char* op, const Tensor& a, std::initializer_list<const Tensor*> same,
                   std::initializer_list<const Tensor*> per_row) const;
  // wide: (rows, S), narrow: (rows, n) with [col0, col0 + n) inside S, one dtype.
  void columns(const char* op, const Tensor& wide, std::int64_t col0, const Tensor& narrow) const;
  cpu::ScanDims scan(const Backend::ScanInputs& in) const;
  void scan_outputs(const cpu::ScanDims& d, const Backend::ScanInputs& in, const Tensor& y,
                    const Tensor& h_saved, const Tensor& h_last) const;
  void scan_grads(const cpu::ScanDims& d, const Backend::ScanInputs& in, const Tensor& h_saved,
                  const Tensor& dy, const Backend::ScanGrads& g) const;
  // The SSD scan's sizes from x (B, L, H, P) and Bm (B, L, G, N): H a multiple of G, chunk >= 1,
  // every input of x's float type.
  cpu::SsdDims ssd(const Backend::SsdInputs& in) const;
  void ssd_outputs(const cpu::SsdDims& d, const Backend::SsdInputs& in, const Tensor& y,
                   const Tensor& h_saved, const Tensor& h_last) const;
  void ssd_grads(const cpu::SsdDims& d, const Backend::SsdInputs& in, const Tensor& h_saved,
                 const Tensor& dy, const Backend::SsdGrads& g) const;
  // Attention's sizes from q (B, Lq, H, hd) and k (B, Lk, KV, hd), Lq <= Lk: v like k, H a
  // multiple of KV, q, k, v of one float type, key_mask (B, Lk) I64 when defined.
  cpu::AttentionDims attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& key_mask) const;
  // out: q's shape, lse: (B, H, Lq), both of q's type.
  void attention_outputs(const cpu::AttentionDims& d, const Tensor& q, const Tensor& out,
                         const Tensor& lse) const;
  // forward's out and lse, dout and dq like q, dk and dv like k.
  void attention_grads(const cpu::AttentionDims& d, const Tensor& q, const Tensor& k,
                       const Tensor& out, const Tensor& lse, const Tensor& dout, const Tensor& dq,
                       const Tensor& dk, const Tensor& dv) const;
  // The router's sizes {rows, X, k}: logits (rows, X), 1 <= top_k <= X; probs like logits,
  // weights (rows, k) of logits' type, experts (rows, k) I64.
  cpu::MoeRouterDims moe_router_forward(const Tensor& logits, std::int64_t top_k,
                                        const Tensor& probs, const Tensor& weights,
                                        const Tensor& experts) const;
  // {rows, X, k} from probs (rows, X) and dweights (rows, k), 1 <= k <= X; experts (rows, k) I64;
  // dprobs_extra (when defined) and dlogits like probs; one float type.
  cpu::MoeRouterDims moe_router_backward(const Tensor& dweights, const Tensor& probs,
                                         const Tensor& experts, const Tensor& dprobs_extra,
                                         const Tensor& dlogits) const;
  // Dispatch and combine sizes {rows, k, D}: slot (rows, k) I64, a token-side tensor (rows, D)
  // and an expert-side one (rows k, D) of one type, each named as the op's argument.
  cpu::MoeSlotDims moe_slot(const char* op, const Tensor& slot, const Tensor& tokens,
                            const char* tokens_name, const Tensor& grouped,
                            const char* grouped_name) const;
  // A per-choice tensor (weights, dweights): (rows, k) of like's type.
  void moe_per_choice(const char* op, const cpu::MoeSlotDims& d, const Tensor& t, const char* name,
                      const Tensor& like) const;
  // Every entry of slot (rows, k) in [0, rows k) and none repeated (a permutation: the copies
  // into the grouped buffer then write disjoint rows). Reads slot on the host.
  void moe_slot_values(const char* op, const Tensor& slot) const;
  // values: (k) of full's dtype, index: (k) I64 on the host, within [0, full.numel())
  void index(const char* op, const Tensor& values, const Tensor& index, const Tensor& full) const;
  void adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
             const Backend::AdamWStep& s) const;

  // Token ids and labels are read on the host, where the batch comes from.
  static void ids(const Tensor& ids, std::int64_t V);
  static void targets(const Tensor& targets, std::int64_t V);

 private:
  // 1 <= d.k <= d.X
  void moe_top_k(const char* op, const cpu::MoeRouterDims& d) const;

  const char* backend_;
};

}  // namespace ssmtune
