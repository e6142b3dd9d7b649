// How the base weights are held in memory, apart from how they are computed with
// (docs/models.md "Weight storage"). Frozen base weights may be held in bf16, as Hub checkpoints
// store them, to halve their memory; the math stays fp32 (activations, accumulations, every
// gradient). The projection weights (and the lm_head) go to the backend's gemm as held: it
// multiplies a bf16 weight as its exact fp32 widening (backend.h), reading the bf16 directly
// for one row (a decoding step) and widening one matrix at a time into scratch otherwise. A
// layer's other bf16 tensors (norms, conv, biases, A_log, D: a few per channel) are widened to
// fp32 right before the layer runs, in forward and again in backward (CausalLM). A base tensor
// that a PEFT method trains or changes is held in the compute dtype (hold_params_in).
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "backend/backend.h"
#include "model/model_config.h"
#include "model/model_weights.h"

namespace ssmtune {

// The dtype frozen base weights are loaded in for a `training.frozen_weights` /
// `--frozen-weights` value: "fp32" -> F32, "bf16" -> BF16. UsageError naming `what` otherwise.
DType frozen_weights_dtype(const std::string& value, const std::string& what);

// The dtype the model computes in on weights `w`: F64 when they are F64 (gradient checks), else
// F32, however the frozen tensors are held.
DType compute_dtype(const ModelWeights& w);

// t in dtype dt: t itself when it already is (or is undefined), else a widened copy on `be`'s
// device (Backend::convert; t must be BF16).
Tensor in_dtype(Backend& be, const Tensor& t, DType dt);

// Layer weights `w` as a layer computes with them: every tensor in_dtype(dt) except the
// projection weights, which stay as held (gemm takes them in bf16).
LayerWeights layer_in_dtype(Backend& be, const LayerWeights& w, DType dt);

// Holds the parameters of `w` named in `names` (HF names; param_slots) in dtype dt, widening
// those held otherwise, and keeps a tied lm_head the embedding. Names the model lacks (a bias the
// config leaves out) are skipped. For the base tensors a PEFT method trains or merges into.
void hold_params_in(const ModelConfig& c, ModelWeights& w, const std::set<std::string>& names,
                    DType dt, Backend& be);

// Bytes the parameters of `w` take as held (a tied lm_head counted once).
std::int64_t held_param_bytes(const ModelConfig& c, ModelWeights& w);

}  // namespace ssmtune
