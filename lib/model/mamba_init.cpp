#include "model/mamba_init.h"

#include <cmath>
#include <optional>

#include "core/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/model_dir.h"
#include "model/model_init.h"

namespace ssmtune {

namespace fs = std::filesystem;

namespace {

// What transformers 4.44.2 does for `MambaForCausalLM(config)`, tensor by tensor. A tensor's
// value is first set by its module's constructor (PyTorch defaults), then `post_init` applies
// MambaPreTrainedModel._init_weights to every module and ties lm_head to the embedding
// (transformers/models/mamba/modeling_mamba.py; docs/models.md "Mamba config"). PyTorch's defaults:
// nn.Linear and nn.Conv1d draw weight ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in),
// 1/sqrt(fan_in)) and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
//
//   tensor                     rule                                   set by
//   backbone.embeddings.weight N(0, initializer_range)                _init_weights, nn.Embedding
//   layers.i.norm.weight       1                                      MambaRMSNorm.__init__
//   backbone.norm_f.weight     1                                      MambaRMSNorm.__init__
//   mixer.A_log (E, N)         A_log[e, n] = ln(n + 1), S4D-real      MambaMixer.__init__
//   mixer.D (E)                1                                      MambaMixer.__init__
//   mixer.conv1d.weight        U(+-1/sqrt(K)); fan_in = (E/groups)*K  nn.Conv1d default (not a
//     (E, 1, K)                = K since groups = E                   Linear: _init_weights skips)
//   mixer.conv1d.bias (E)      U(+-1/sqrt(K))                         nn.Conv1d default (kept)
//   mixer.in_proj.weight       U(+-1/sqrt(D))                         nn.Linear default
//   mixer.in_proj.bias         0                                      _init_weights zeroes
//                                                                     Linear biases
//   mixer.x_proj.weight        U(+-1/sqrt(E))                         nn.Linear default
//   mixer.dt_proj.weight       "random": U(+-s), "constant": s,       _init_weights, MambaMixer
//                              s = dt_rank^-0.5 * time_step_scale
//   mixer.dt_proj.bias (E)     dt = exp(U(ln dt_min, ln dt_max)),     _init_weights, MambaMixer
//                              clamped >= time_step_floor; bias =     (_no_reinit keeps the
//                              dt + ln(-expm1(-dt)) = softplus^-1(dt) Linear rule off it)
//   mixer.out_proj.weight      U(+-1/sqrt(E)), divided by             nn.Linear default; the
//                              sqrt(n_layer) if rescale_prenorm_      rescale branch of
//                              residual                               _init_weights
//   mixer.out_proj.bias        0                                      _init_weights
//   lm_head.weight (untied)    U(+-1/sqrt(D))                         nn.Linear default (no bias;
//                                                                     _init_weights keeps it)
//   lm_head.weight (tied)      the embedding itself                   tie_weights
//
// The distributions match transformers'; the numbers do not (torch's generator is not ours).
// model_init.cpp draws them (InitRule).
InitRule rule_for(const ModelConfig& c, const std::string& name) {
  const auto ends = [&](const char* suffix) { return name.ends_with(suffix); };
  const double kaiming_d = 1.0 / std::sqrt(double(c.d_model));
  const double kaiming_e = 1.0 / std::sqrt(double(c.d_inner));
  const double kaiming_k = 1.0 / std::sqrt(double(c.d_conv));
  const double dt_init_std = std::pow(double(c.dt_rank), -0.5) * c.time_step_scale;
  if (ends("embeddings.weight")) return {InitRule::kNormal, c.initializer_range};
  if (ends("norm.weight") || ends("norm_f.weight") || ends("mixer.D"))
    return {InitRule::kConstant, 1};
  if (ends("mixer.A_log")) return {InitRule::kLogA};
  if (ends("conv1d.weight") || ends("conv1d.bias")) return {InitRule::kUniform, kaiming_k};
  if (ends("in_proj.weight") || ends("lm_head.weight")) return {InitRule::kUniform, kaiming_d};
  if (ends("x_proj.weight")) return {InitRule::kUniform, kaiming_e};
  if (ends("in_proj.bias") || ends("out_proj.bias")) return {InitRule::kConstant, 0};
  if (ends("dt_proj.weight"))
    return c.time_step_init_scheme == "constant" ? InitRule{InitRule::kConstant, dt_init_std}
                                                 : InitRule{InitRule::kUniform, dt_init_std};
  if (ends("dt_proj.bias")) return {InitRule::kDtBias};
  if (ends("out_proj.weight"))
    return {InitRule::kUniform,
            c.rescale_prenorm_residual ? kaiming_e / std::sqrt(double(c.n_layer)) : kaiming_e};
  throw Error("init_mamba_weights: no initialisation rule for tensor " + quote_str(name));
}

}  // namespace

std::int64_t mamba_param_count(const ModelConfig& c) {
  const std::int64_t D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank, K = c.d_conv,
                     V = c.vocab_size;
  const std::int64_t per_layer = D                                       // norm
                                 + E * N + E                             // A_log, D
                                 + E * K + (c.use_conv_bias ? E : 0)     // conv1d
                                 + 2 * E * D + (c.use_bias ? 2 * E : 0)  // in_proj
                                 + (R + 2 * N) * E                       // x_proj
                                 + E * R + E                             // dt_proj
                                 + D * E + (c.use_bias ? D : 0);         // out_proj
  return V * D + c.n_layer * per_layer + D + (c.tie_word_embeddings ? 0 : V * D);
}

ModelWeights init_mamba_weights(const ModelConfig& c, std::uint64_t seed, DType held) {
  if (c.time_step_min > c.time_step_max)
    throw Error("time_step_min = " + std::to_string(c.time_step_min) +
                " is larger than time_step_max = " + std::to_string(c.time_step_max));
  if (!(c.initializer_range >= 0))
    throw Error("initializer_range = " + std::to_string(c.initializer_range) +
                " is negative; it is the std of the embedding");
  return draw_model_weights(c, seed, mamba_param_count(c),
                            [&](const std::string& name) { return rule_for(c, name); }, held);
}

void write_mamba_model_dir(const std::string& dir, const ModelConfig& c, const ModelWeights& w,
                           bool overwrite, const std::vector<fs::path>& extra_files) {
  std::vector<NamedTensor> tensors;
  ModelWeights handles = w;  // for_each_param wants a mutable struct; copies only handles
  std::optional<DType> dtype;
  for_each_param(c, handles, [&](const std::string& name, Tensor& t) {
    if (dtype && t.dtype() != *dtype)
      throw Error("write_mamba_model_dir: tensor " + quote_str(name) + " is " +
                  std::string(dtype_name(t.dtype())) + ", the others " +
                  std::string(dtype_name(*dtype)));
    dtype = t.dtype();
    tensors.push_back({name, t});
  });
  if (!dtype || !torch_dtype_name(*dtype))
    throw Error("write_mamba_model_dir: weights must be F32, F64, F16 or BF16");
  ModelDirContents contents;
  contents.config = model_config_to_json(c);
  contents.config["torch_dtype"] = torch_dtype_name(*dtype);
  contents.weight_files = {"model.safetensors"};
  contents.write_weights = [&](const fs::path& staging) {
    write_safetensors(staging / "model.safetensors", tensors);
  };
  contents.extra_files = extra_files;
  write_model_dir(dir, contents, overwrite);
}

}  // namespace ssmtune
