#include "model/weight_storage.h"

#include "core/error.h"

namespace ssmtune {

DType frozen_weights_dtype(const std::string& value, const std::string& what) {
  if (value == "fp32") return DType::F32;
  if (value == "bf16") return DType::BF16;
  throw UsageError(what + ": expected \"fp32\" or \"bf16\", got \"" + value + "\"");
}

DType compute_dtype(const ModelWeights& w) {
  return w.embedding.dtype() == DType::F64 ? DType::F64 : DType::F32;
}

Tensor in_dtype(Backend& be, const Tensor& t, DType dt) {
  if (!t.defined() || t.dtype() == dt) return t;
  Tensor out = be.empty(t.shape(), dt);
  be.convert(t, out);
  return out;
}

LayerWeights layer_in_dtype(Backend& be, const LayerWeights& w, DType dt) {
  // The projection weights stay as held: every backend's gemm takes a bf16 B (backend.h).
  LayerWeights out = w;
  MambaMixerWeights& m = out.mamba;
  for (Tensor* t : {&out.norm, &out.ffn_norm, &m.in_proj_bias, &m.conv1d, &m.conv1d_bias,
                    &m.dt_proj_bias, &m.A_log, &m.D, &m.out_proj_bias, &m.dt_norm, &m.B_norm,
                    &m.C_norm})
    *t = in_dtype(be, *t, dt);
  Mamba2MixerWeights& m2 = out.mamba2;
  for (Tensor* t : {&m2.in_proj_bias, &m2.conv1d, &m2.conv1d_bias, &m2.dt_bias, &m2.A_log, &m2.D,
                    &m2.norm, &m2.out_proj_bias})
    *t = in_dtype(be, *t, dt);
  return out;
}

void hold_params_in(const ModelConfig& c, ModelWeights& w, const std::set<std::string>& names,
                    DType dt, Backend& be) {
  const bool tied = c.tie_word_embeddings;
  for (ParamSlot& s : param_slots(c, w)) {
    const bool wanted =
        names.count(s.name) || (tied && s.tensor == &w.embedding && names.count("lm_head.weight"));
    if (wanted && !s.absent_because) *s.tensor = in_dtype(be, *s.tensor, dt);
  }
  if (tied) w.lm_head = w.embedding;
}

std::int64_t held_param_bytes(const ModelConfig& c, ModelWeights& w) {
  std::int64_t bytes = 0;
  for_each_param(c, w,
                 [&](const std::string&, const Tensor& t) { bytes += std::int64_t(t.nbytes()); });
  return bytes;
}

}  // namespace ssmtune
