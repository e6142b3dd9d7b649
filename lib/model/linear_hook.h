// The linear hook (DESIGN.md "Where PEFT methods attach"): a term added beside a frozen linear
// layer, such as LoRA's s * B A x. The model calls it at every projection with the layer's input
// and the layer's output split into parts that match rows of the weight, so a hook can act on
// the whole module or on one slice (in_proj.x, x_proj.B, ...) without the model knowing which.
// The model depends on this interface only; lib/peft implements it.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ssmtune {

// The projections of one Mamba layer (HF MambaMixer module names).
enum class LinearSite { InProj, XProj, DtProj, OutProj };
const char* linear_site_name(LinearSite site);  // "in_proj", "x_proj", ...

// One contiguous output part of a projection: y rows (tokens, n) computed by weight rows
// [row0, row0 + n). in_proj has parts x [0, E) and z [E, 2E); x_proj has dt [0, R),
// B [R, R+N) and C [R+N, R+2N); dt_proj and out_proj one part each.
struct LinearPart {
  std::int64_t row0 = 0;
  Tensor y;  // (tokens, n): forward adds to it; backward reads it as the gradient dy
};

class LinearHook {
 public:
  virtual ~LinearHook() = default;
  // x: (tokens, in) the projection's input. Adds the hook's term to each part's y.
  virtual void linear_forward(std::int64_t layer, LinearSite site, const Tensor& x,
                              std::vector<LinearPart>& out) = 0;
  // x: as in forward; dout: the parts' gradients. Accumulates the hook's parameter gradients
  // and adds the gradient w.r.t. x to dx: (tokens, in).
  virtual void linear_backward(std::int64_t layer, LinearSite site, const Tensor& x,
                               const std::vector<LinearPart>& dout, Tensor& dx) = 0;
  // The embedding lookup as a linear layer on one-hot ids (PEFT's LoRA on nn.Embedding).
  // ids: (tokens) I64   out: (tokens, d_model) += the hook's term.
  virtual void embedding_forward(const Tensor& ids, Tensor& out) = 0;
  // dout: (tokens, d_model). Accumulates the hook's parameter gradients.
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout) = 0;
};

}  // namespace ssmtune
