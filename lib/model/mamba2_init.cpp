#include "model/mamba2_init.h"

#include <cmath>

#include "core/error.h"
#include "io/json_file.h"
#include "model/model_init.h"

namespace ssmtune {

namespace {

// What transformers 4.44.2 does for `Mamba2ForCausalLM(config)`, tensor by tensor
// (transformers/models/mamba2/modeling_mamba2.py; docs/models.md "Mamba-2"): module
// constructors, then Mamba2PreTrainedModel._init_weights, which sets dt_bias, zeroes nn.Linear
// biases and redraws nn.Embedding, and leaves every nn.Linear and nn.Conv1d weight at PyTorch's
// default kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
//
//   tensor                      rule                                  set by
//   backbone.embeddings.weight  N(0, initializer_range)               _init_weights, nn.Embedding
//   layers.i.norm.weight,       1                                     Mamba2RMSNorm,
//     mixer.norm.weight, norm_f                                       MambaRMSNormGated
//   mixer.A_log (H)             ln(h + 1)                             Mamba2Mixer.__init__
//   mixer.D (H)                 1                                     Mamba2Mixer.__init__
//   mixer.dt_bias (H)           softplus^-1 of dt = exp(U(ln dt_min,  _init_weights
//                               ln dt_max)) clamped >= floor
//   mixer.conv1d.weight, .bias  U(+-1/sqrt(K)); fan_in = K (depthwise) nn.Conv1d default
//   mixer.in_proj.weight        U(+-1/sqrt(D))                        nn.Linear default
//   mixer.in_proj / out_proj    0                                     _init_weights
//     .bias
//   mixer.out_proj.weight       U(+-1/sqrt(E)), / sqrt(n_layer) if    nn.Linear default; the
//                               rescale_prenorm_residual              rescale branch
//   lm_head.weight (untied)     U(+-1/sqrt(D))                        nn.Linear default
//   lm_head.weight (tied)       the embedding itself                  tie_weights
//
// The distributions match transformers'; the numbers do not (torch's generator is not ours).
InitRule rule_for(const ModelConfig& c, const std::string& name) {
  const auto ends = [&](const char* suffix) { return name.ends_with(suffix); };
  const double kaiming_d = 1.0 / std::sqrt(double(c.d_model));
  const double kaiming_e = 1.0 / std::sqrt(double(c.d_inner));
  if (ends("embeddings.weight")) return {InitRule::kNormal, c.initializer_range};
  if (ends("norm.weight") || ends("norm_f.weight") || ends("mixer.D"))
    return {InitRule::kConstant, 1};
  if (ends("mixer.A_log")) return {InitRule::kLogA};
  if (ends("mixer.dt_bias")) return {InitRule::kDtBias};
  if (ends("conv1d.weight") || ends("conv1d.bias"))
    return {InitRule::kUniform, 1.0 / std::sqrt(double(c.d_conv))};
  if (ends("in_proj.weight") || ends("lm_head.weight")) return {InitRule::kUniform, kaiming_d};
  if (ends("in_proj.bias") || ends("out_proj.bias")) return {InitRule::kConstant, 0};
  if (ends("out_proj.weight"))
    return {InitRule::kUniform,
            c.rescale_prenorm_residual ? kaiming_e / std::sqrt(double(c.n_layer)) : kaiming_e};
  throw Error("init_mamba2_weights: no initialisation rule for tensor " + quote_str(name));
}

}  // namespace

std::int64_t mamba2_param_count(const ModelConfig& c) {
  const std::int64_t D = c.d_model, E = c.d_inner, H = c.ssm_heads, K = c.d_conv,
                     C = c.conv_dim(), V = c.vocab_size;
  const std::int64_t in_rows = E + C + H;
  const std::int64_t per_layer = D                                         // norm
                                 + 3 * H                                   // dt_bias, A_log, D
                                 + C * K + (c.use_conv_bias ? C : 0)       // conv1d
                                 + in_rows * D + (c.use_bias ? in_rows : 0)  // in_proj
                                 + E                                       // gated norm
                                 + D * E + (c.use_bias ? D : 0);           // out_proj
  return V * D + c.n_layer * per_layer + D + (c.tie_word_embeddings ? 0 : V * D);
}

ModelWeights init_mamba2_weights(const ModelConfig& c, std::uint64_t seed, DType held) {
  if (!c.is_mamba2())
    throw Error("init_mamba2_weights: model_type is " + quote_str(c.model_type) +
                ", not \"mamba2\"");
  if (c.time_step_min > c.time_step_max)
    throw Error("time_step_min = " + std::to_string(c.time_step_min) +
                " is larger than time_step_max = " + std::to_string(c.time_step_max));
  if (!(c.initializer_range >= 0))
    throw Error("initializer_range = " + std::to_string(c.initializer_range) +
                " is negative; it is the std of the embedding");
  return draw_model_weights(c, seed, mamba2_param_count(c),
                            [&](const std::string& name) { return rule_for(c, name); }, held);
}

}  // namespace ssmtune
