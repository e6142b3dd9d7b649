#include "model/jamba_init.h"

#include <algorithm>
#include <initializer_list>
#include <string>

#include "core/error.h"
#include "io/json_file.h"
#include "model/model_init.h"

namespace ssmtune {

namespace {

// What transformers 4.44.2 does for `JambaForCausalLM(config)`, tensor by tensor
// (transformers/models/jamba/modeling_jamba.py; docs/models.md "Jamba initialisation"). The
// module constructors set the values first; then post_init applies
// JambaPreTrainedModel._init_weights to every module, which overwrites every nn.Linear and
// nn.Conv1d weight with N(0, initializer_range) and zeroes their biases (so PyTorch's
// kaiming-uniform defaults, and a Mamba-style dt_proj bias, never survive), and redraws
// nn.Embedding the same way with its padding_idx row zeroed; tie_weights runs last. s =
// initializer_range (JambaConfig default 0.02).
//
//   tensor                              rule                     set by
//   model.embed_tokens.weight (V, D)    N(0, s), row             _init_weights, nn.Embedding
//                                       pad_token_id 0           (padding_idx = pad_token_id;
//                                       (none if pad is null)     none when null)
//   layers.i.input_layernorm.weight     1                        JambaRMSNorm.__init__
//   layers.i.pre_ff_layernorm.weight    1                        JambaRMSNorm.__init__
//   model.final_layernorm.weight        1                        JambaRMSNorm.__init__
//   mamba.A_log (E, N)                  ln(n + 1), S4D-real      JambaMambaMixer.__init__ (a
//                                                                Parameter: _init_weights skips)
//   mamba.D (E)                         1                        JambaMambaMixer.__init__
//   mamba.dt_layernorm.weight (R)       1                        JambaRMSNorm.__init__
//   mamba.b_layernorm / c_layernorm (N) 1                        JambaRMSNorm.__init__
//   mamba.conv1d.weight (E, 1, K)       N(0, s)                  _init_weights, nn.Conv1d
//   mamba.conv1d.bias (E)               0                        _init_weights, nn.Conv1d
//   mamba.in_proj / x_proj / dt_proj /  N(0, s)                  _init_weights, nn.Linear
//     out_proj .weight
//   mamba.dt_proj.bias (E)              0 (so dt = softplus(0)   _init_weights, nn.Linear
//                                       = ln 2 before training)
//   mamba.in_proj / out_proj .bias      0                        _init_weights, nn.Linear
//     (mamba_proj_bias)
//   self_attn.q/k/v/o_proj.weight       N(0, s)                  _init_weights, nn.Linear
//   feed_forward.gate/up/down_proj      N(0, s)                  _init_weights, nn.Linear
//     .weight (dense MLP)
//   feed_forward.router.weight (X, D)   N(0, s)                  _init_weights, nn.Linear
//   feed_forward.experts.j.gate/up/     N(0, s)                  _init_weights, nn.Linear
//     down_proj.weight
//   lm_head.weight (untied)             N(0, s), no row zeroed   _init_weights, nn.Linear
//   lm_head.weight (tied)               the embedding itself     tie_weights, after the init
//                                       (pad row zero)
//
// The distributions match transformers'; the numbers do not (torch's generator is not ours).
InitRule rule_for(const ModelConfig& c, const std::string& name) {
  const auto ends = [&](const char* suffix) { return name.ends_with(suffix); };
  const auto ends_any = [&](std::initializer_list<const char*> suffixes) {
    return std::any_of(suffixes.begin(), suffixes.end(), ends);
  };
  if (ends_any({"layernorm.weight", "mamba.D"})) return {InitRule::kConstant, 1};
  if (ends("mamba.A_log")) return {InitRule::kLogA};
  if (ends_any({"conv1d.bias", "proj.bias"})) return {InitRule::kConstant, 0};
  if (ends_any({"embed_tokens.weight", "lm_head.weight", "conv1d.weight", "in_proj.weight",
                "x_proj.weight", "dt_proj.weight", "out_proj.weight", "q_proj.weight",
                "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight",
                "up_proj.weight", "down_proj.weight", "router.weight"}))
    return {InitRule::kNormal, c.initializer_range};
  throw Error("init_jamba_weights: no initialisation rule for tensor " + quote_str(name));
}

}  // namespace

std::int64_t jamba_param_count(const ModelConfig& c) {
  const std::int64_t D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank, K = c.d_conv,
                     V = c.vocab_size, F = c.d_ffn, X = c.n_experts, hd = c.head_dim();
  const std::int64_t mamba = 2 * E * D + (c.use_bias ? 2 * E : 0)  // in_proj
                             + E * K + (c.use_conv_bias ? E : 0)   // conv1d
                             + (R + 2 * N) * E                     // x_proj
                             + E * R + E                           // dt_proj
                             + E * N + E                           // A_log, D
                             + D * E + (c.use_bias ? D : 0)        // out_proj
                             + R + 2 * N;                          // dt, B, C norms
  const std::int64_t attention = 2 * c.n_heads * hd * D + 2 * c.n_kv_heads * hd * D;
  const std::int64_t mlp = 3 * F * D;
  std::int64_t layers = 0;
  for (std::int64_t i = 0; i < c.n_layer; ++i) {
    const LayerKind k = layer_kind(c, i);
    layers += 2 * D  // input_layernorm, pre_ff_layernorm
              + (k.mixer == MixerKind::Attention ? attention : mamba) +
              (k.ffn == FeedForwardKind::MoE ? X * D + X * mlp : mlp);
  }
  return V * D + layers + D + (c.tie_word_embeddings ? 0 : V * D);
}

ModelWeights init_jamba_weights(const ModelConfig& c, std::uint64_t seed, DType held) {
  if (!c.is_jamba())
    throw Error("init_jamba_weights: model_type is " + quote_str(c.model_type) + ", not \"jamba\"");
  if (!(c.initializer_range >= 0))
    throw Error("initializer_range = " + std::to_string(c.initializer_range) +
                " is negative; it is the std of every weight");
  ModelWeights w = draw_model_weights(c, seed, jamba_param_count(c),
                                      [&](const std::string& name) { return rule_for(c, name); },
                                      held);
  // nn.Embedding(V, D, padding_idx) and _init_weights both zero the padding row; a tied lm_head
  // shares it, as after tie_weights.
  if (c.pad_token_id >= 0) {
    check(c.pad_token_id < c.vocab_size,
          "init_jamba_weights: pad_token_id " + std::to_string(c.pad_token_id) + " >= vocab_size");
    // All-zero bits are +0 in F32 and BF16 alike.
    auto* row = static_cast<std::uint8_t*>(w.embedding.raw()) +
                c.pad_token_id * c.d_model * std::int64_t(dtype_size(w.embedding.dtype()));
    std::fill_n(row, c.d_model * std::int64_t(dtype_size(w.embedding.dtype())), std::uint8_t(0));
  }
  return w;
}

}  // namespace ssmtune
