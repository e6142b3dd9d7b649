// The linear hook (docs/architecture.md "Where PEFT methods attach"): a term added beside a frozen linear
// layer, such as LoRA's s * B A x. The model calls it at every projection with the layer's input
// and the layer's output split into parts that match rows of the weight, so a hook can act on
// the whole module or on one slice (in_proj.x, x_proj.B, ...) without the model knowing which.
// Sites are named (LinearSite below), so a hook finds its modules by name as `peft` does.
// The model depends on this interface only; lib/peft implements it.
#pragma once

#include <cstdint>
#include <vector>

#include <string>

#include "core/tensor.h"
#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

// A named row range of a linear layer's weight that a PEFT method may act on alone: in_proj's
// x rows [0, E) and z rows [E, 2E); x_proj's dt, B and C rows.
struct LinearSlice {
  std::string name;  // "x", "z", "dt", "B", "C"
  std::int64_t row0 = 0, rows = 0;
};

// One linear layer of the model (a weight (out, in), y = x W^T + b), named as Hugging Face
// names the module, so PEFT methods address it by name as `peft` does. linear_sites() lists the
// model's in a fixed order: layer by layer, in each layer its kind's order (mamba_mixer.h).
struct LinearSite {
  std::int64_t index = -1;  // its position in linear_sites(): what hooks key on
  std::int64_t layer = -1;
  std::string module;       // "backbone.layers.3.mixer.in_proj"
  std::string name;         // its name in its layer kind, what targets match: "in_proj"
  std::int64_t in = 0, out = 0;
  std::vector<LinearSlice> slices;  // empty when it has none
  std::int64_t expert = -1;         // its expert in an MoE layer ("experts.<e>.gate_proj"), else -1
};

// Every linear site of a model with config `c`, in order.
std::vector<LinearSite> linear_sites(const ModelConfig& c);

// The weight (out, in) of `site` in `w` (a handle: writing through it writes the model's tensor).
Tensor linear_weight(const ModelWeights& w, const LinearSite& site);

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
  virtual void linear_forward(const LinearSite& site, const Tensor& x,
                              std::vector<LinearPart>& out) = 0;
  // x: as in forward; dout: the parts' gradients. Accumulates the hook's parameter gradients
  // and adds the gradient w.r.t. x to dx: (tokens, in).
  virtual void linear_backward(const LinearSite& site, const Tensor& x,
                               const std::vector<LinearPart>& dout, Tensor& dx) = 0;
  // The embedding lookup as a linear layer on one-hot ids (PEFT's LoRA on nn.Embedding).
  // ids: (tokens) I64   out: (tokens, d_model) += the hook's term.
  virtual void embedding_forward(const Tensor& ids, Tensor& out) = 0;
  // dout: (tokens, d_model). Accumulates the hook's parameter gradients.
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout) = 0;
  // True while the model runs a layer's forward a second time, in backward (recomputing the
  // activations it did not keep, CausalLM::set_recompute_mixers): linear_forward must then give
  // what it gave the first time, its dropout masks included, and draw no new random numbers.
  virtual void set_recomputing(bool /*on*/) {}
};

}  // namespace ssmtune
