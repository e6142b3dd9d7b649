#include "apps/ssmtune/bench_model.h"

#include "io/json_file.h"
#include "model/model_init.h"

namespace ssmtune {

BenchModel load_bench_model(const std::string& model_dir, const std::string& config_file,
                            DType held, std::uint64_t seed) {
  BenchModel m;
  const bool random = !config_file.empty();
  m.cfg = random ? parse_model_config(read_python_json_file(config_file), config_file)
                 : load_model_config(model_dir);
  m.label = random ? config_file + ", random weights" : model_dir;
  // Random: throughput does not depend on the values, but with Hugging Face's initialisation
  // softplus and exp stay in their usual ranges.
  // Held in bf16: each tensor rounded once as drawn, as a loaded fp32 checkpoint is.
  m.w = random ? init_model_weights(m.cfg, seed, held)
               : load_model_weights(model_dir, m.cfg, held);
  if (m.cfg.tie_word_embeddings) m.w.lm_head = m.w.embedding;
  return m;
}

std::string describe_model(const ModelConfig& cfg) {
  std::string layers = std::to_string(cfg.n_layer) + " layers";
  if (cfg.is_jamba()) {
    std::int64_t attention = 0, moe = 0;
    for (std::int64_t i = 0; i < cfg.n_layer; ++i) {
      attention += layer_kind(cfg, i).mixer == MixerKind::Attention;
      moe += layer_kind(cfg, i).ffn == FeedForwardKind::MoE;
    }
    layers += " (" + std::to_string(attention) + " attention, " + std::to_string(moe) +
              " with " + std::to_string(cfg.n_experts) + " experts, top " +
              std::to_string(cfg.experts_per_token) + ")";
  }
  if (cfg.is_mamba2())
    layers += " (Mamba-2: " + std::to_string(cfg.ssm_heads) + " heads x " +
              std::to_string(cfg.ssm_head_dim) + ", n_groups " +
              std::to_string(cfg.n_groups) + ", chunk " + std::to_string(cfg.chunk_size) + ")";
  return layers + ", d_model " + std::to_string(cfg.d_model) + ", d_inner " +
         std::to_string(cfg.d_inner) + ", d_state " + std::to_string(cfg.d_state);
}

double weight_bytes(const ModelConfig& cfg, ModelWeights& w) {
  double bytes = 0;
  if (w.layers.empty()) return bytes;  // no gradients: a frozen base
  for_each_param(cfg, w, [&](const std::string&, Tensor& t) { bytes += double(t.nbytes()); });
  return bytes;
}

}  // namespace ssmtune
