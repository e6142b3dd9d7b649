// CausalLM::loss_and_backward (the vocabulary head a block of rows at a time, no (B, L, V)
// logits kept) against forward + loss + backward, which keep the whole logits: the same loss,
// token count, router loss and gradient of every base tensor, on a Mamba (tied head), a Jamba
// with experts and the router loss, and a Mamba-2 (untied head). lib/model/causal_lm.h.
#include <catch2/catch.hpp>

#include <map>

#include "backend/backend.h"
#include "gradient_check.h"
#include "model/causal_lm.h"
#include "model/model_init.h"
#include "test_compare.h"

using namespace ssmtune;
using nlohmann::json;

namespace {

ModelConfig config_for(const std::string& kind) {
  json j;
  if (kind == "mamba") {
    j = {{"model_type", "mamba"}, {"vocab_size", 29}, {"hidden_size", 8},
         {"num_hidden_layers", 2}, {"state_size", 4}, {"expand", 2}};
  } else if (kind == "jamba") {
    j = {{"model_type", "jamba"}, {"vocab_size", 31}, {"hidden_size", 16},
         {"intermediate_size", 24}, {"num_hidden_layers", 3}, {"num_attention_heads", 4},
         {"num_key_value_heads", 2}, {"attn_layer_period", 2}, {"attn_layer_offset", 1},
         {"num_experts", 3}, {"num_experts_per_tok", 2}, {"expert_layer_period", 2},
         {"expert_layer_offset", 1}, {"mamba_d_state", 4}, {"mamba_d_conv", 3},
         {"mamba_expand", 2}, {"mamba_dt_rank", 2}, {"output_router_logits", true},
         {"router_aux_loss_coef", 0.1}, {"pad_token_id", 0}};
  } else {
    j = {{"model_type", "mamba2"}, {"vocab_size", 23}, {"hidden_size", 6},
         {"num_hidden_layers", 2}, {"num_heads", 4}, {"head_dim", 3}, {"n_groups", 2},
         {"state_size", 5}, {"conv_kernel", 3}, {"chunk_size", 4},
         {"tie_word_embeddings", false}};
  }
  return parse_model_config(j, kind + "/config.json");
}

struct Result {
  LmLoss loss;
  std::map<std::string, Tensor> grads;
};

// One batch's loss and the gradient of every base tensor, normalised by `normaliser` tokens;
// head_rows < 0: forward + loss + backward, else loss_and_backward with blocks of head_rows
// (0: the default size).
Result run(const ModelConfig& cfg, const ModelWeights& w, DType dt, std::int64_t head_rows,
           std::int64_t normaliser) {
  auto be = make_cpu_backend();
  CausalLM lm(cfg, w, *be);
  const Tensor ids = testing::random_ids(3, 7, cfg.vocab_size, 17);
  Tensor targets = shift_labels(ids);
  targets.data<std::int64_t>()[4] = -100;  // one more uncounted row, inside a block
  ModelWeights grads = zeros_like_params(cfg, dt);
  Result r;
  if (head_rows < 0) {
    lm.forward(ids);
    r.loss = lm.loss(targets);
    lm.backward(targets, grads, normaliser);
  } else {
    lm.set_head_chunk_rows(head_rows);
    lm.forward_for_training(ids);
    r.loss = lm.loss_and_backward(targets, grads, normaliser);
  }
  for_each_param(cfg, grads, [&](const std::string& name, Tensor& g) { r.grads[name] = g; });
  return r;
}

ModelWeights weights_in(const ModelConfig& cfg, DType dt) {
  ModelWeights w = init_model_weights(cfg, 3);
  for_each_param(cfg, w, [&](const std::string&, Tensor& t) { t = t.to(dt); });
  if (cfg.tie_word_embeddings) w.lm_head = w.embedding;
  return w;
}

}  // namespace

TEST_CASE("loss_and_backward in blocks of rows equals forward + loss + backward",
          "[model][head-chunks]") {
  const std::string kind = GENERATE("mamba", "jamba", "mamba2");
  const ModelConfig cfg = config_for(kind);
  INFO(kind);
  // float64: the blocks change only the order of two sums (the loss over blocks, the head's
  // gradient over rows), so the results agree to a few ulps of double.
  const ModelWeights w = weights_in(cfg, DType::F64);
  const Result whole = run(cfg, w, DType::F64, -1, 40);
  for (const std::int64_t rows : {1, 4, 5, 21, 64}) {  // 21 rows in all: 1 to 21 blocks
    INFO("rows per block " << rows);
    const Result blocks = run(cfg, w, DType::F64, rows, 40);
    CHECK(blocks.loss.n_tokens == whole.loss.n_tokens);
    CHECK(blocks.loss.n_tokens == 3 * 6 - 1);
    CHECK(blocks.loss.loss == Approx(whole.loss.loss).epsilon(1e-13));
    CHECK(blocks.loss.aux_loss == whole.loss.aux_loss);
    CHECK(blocks.loss.objective == Approx(whole.loss.objective).epsilon(1e-13));
    if (cfg.output_router_logits) CHECK(blocks.loss.aux_loss > 0);
    for (const auto& [name, g] : whole.grads)
      testing::require_close(name, blocks.grads.at(name), g, 1e-13, 0);
  }
}

TEST_CASE("loss_and_backward in one block is forward + loss + backward, bit for bit (float32)",
          "[model][head-chunks]") {
  const std::string kind = GENERATE("mamba", "jamba", "mamba2");
  const ModelConfig cfg = config_for(kind);
  INFO(kind);
  const ModelWeights w = weights_in(cfg, DType::F32);
  const Result whole = run(cfg, w, DType::F32, -1, 0);
  const Result one_block = run(cfg, w, DType::F32, 0, 0);  // the default: ~32 MiB of logits
  CHECK(one_block.loss.loss == whole.loss.loss);
  CHECK(one_block.loss.objective == whole.loss.objective);
  for (const auto& [name, g] : whole.grads) {
    INFO(name);
    CHECK(testing::same_bits(one_block.grads.at(name), g));
  }
}

TEST_CASE("loss_and_backward refuses to run without forward_for_training", "[model][head-chunks]") {
  const ModelConfig cfg = config_for("mamba");
  const ModelWeights w = weights_in(cfg, DType::F32);
  auto be = make_cpu_backend();
  CausalLM lm(cfg, w, *be);
  const Tensor ids = testing::random_ids(1, 5, cfg.vocab_size, 1);
  const Tensor targets = shift_labels(ids);
  ModelWeights frozen;
  CHECK_THROWS_WITH(lm.loss_and_backward(targets, frozen),
                    Catch::Contains("needs forward_for_training first"));
  lm.forward(ids);  // keeps whole logits: backward's input, not this one's
  CHECK_THROWS_WITH(lm.loss_and_backward(targets, frozen),
                    Catch::Contains("needs forward_for_training first"));
  lm.forward_for_training(ids);
  lm.loss_and_backward(targets, frozen);
  CHECK_THROWS_WITH(lm.loss_and_backward(targets, frozen),  // the activations are consumed
                    Catch::Contains("needs forward_for_training first"));
}
