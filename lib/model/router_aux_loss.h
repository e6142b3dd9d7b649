// The router load-balancing loss of a model with experts (HF load_balancing_loss_func, as
// JambaForCausalLM calls it; docs/models.md "Jamba"). The rows of every MoE layer are pooled
// (one average over layers x tokens, not a mean of per-layer losses); K is the set of counted
// rows (attention mask 1; all rows without a mask):
//   f[j, e] = |{t in K : S_t[j] = e}| / |K|     per top-k slot j (not summed, not divided by k)
//   P[e]    = sum_{t in K} p_t[e] / |K|
//   aux     = X * sum_j sum_e f[j, e] P[e]      (uniform routing gives k)
// f is piecewise constant, so the gradient flows through P alone:
//   d aux / d p_t[e] = X * sum_j f[j, e] / |K|  for t in K, 0 otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ssmtune {

struct RouterAuxLoss {
  double value = 0;
  std::vector<double> dprob;  // (X) d aux / d p_t[e] of a counted row t
};

// One MoE layer's routing, on the host: probs (rows, X) F32/F64, experts (rows, k) I64,
// counted (rows) I64 (nonzero = counted) or undefined (all rows).
struct LayerRouting {
  Tensor probs, experts, counted;
};

RouterAuxLoss router_aux_loss(const std::vector<LayerRouting>& layers, std::int64_t n_experts);

}  // namespace ssmtune
