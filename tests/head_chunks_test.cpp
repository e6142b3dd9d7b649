// CausalLM::loss_and_backward (the vocabulary head a block of rows at a time, no (B, L, V)
// logits kept) against forward + loss + backward, which keep the whole logits: the same loss,
// token count, router loss and gradient of every base tensor, on a Mamba (tied head), a Jamba
// with experts and the router loss, and a Mamba-2 (untied head). And CausalLM::eval_loss
// (evaluation: no activations kept, the head in blocks) against forward + loss, with the
// logits it picks. lib/model/causal_lm.h.
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

TEST_CASE("loss_and_backward needs forward_for_training; eval_loss keeps nothing for it",
          "[model][head-chunks]") {
  const ModelConfig cfg = config_for("mamba");
  const ModelWeights w = weights_in(cfg, DType::F32);
  auto be = make_cpu_backend();
  CausalLM lm(cfg, w, *be);
  const Tensor ids = testing::random_ids(2, 5, cfg.vocab_size, 1);
  const Tensor targets = shift_labels(ids);
  ModelWeights frozen;
  SECTION("loss_and_backward") {
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
  SECTION("eval_loss") {
    std::vector<double> picked;
    CHECK_THROWS_WITH(lm.eval_loss(ids, Tensor(), targets, {2 * 5 * cfg.vocab_size}, &picked),
                      Catch::Contains("outside the logits (2, 5, 29)"));
    CHECK_THROWS_WITH(lm.eval_loss(ids, Tensor(), targets, {-1}, &picked),
                      Catch::Contains("outside the logits"));
    CHECK_THROWS_WITH(lm.eval_loss(ids, Tensor(), targets, {3}),
                      Catch::Contains("picks without a place"));
    CHECK_THROWS_WITH(lm.eval_loss(ids, Tensor(), targets.rows(0, 1)),
                      Catch::Contains("!= ids shape"));
    lm.forward_for_training(ids);
    lm.eval_loss(ids, Tensor(), targets);  // replaces the training forward's activations
    CHECK_THROWS_WITH(lm.loss_and_backward(targets, frozen),
                      Catch::Contains("needs forward_for_training first"));
    CHECK_THROWS_WITH(lm.backward(targets, frozen), Catch::Contains("called before forward"));
    CHECK_THROWS_WITH(lm.loss(targets), Catch::Contains("called before forward"));
  }
}

namespace {

// A batch with right padding in row 1 (its last 3 steps: mask 0, label -100), as evaluation
// makes them: the router loss must leave the padding out.
struct PaddedBatch {
  Tensor ids, mask, targets;
};
PaddedBatch padded_batch(const ModelConfig& cfg) {
  PaddedBatch p{testing::random_ids(3, 7, cfg.vocab_size, 23), Tensor::empty({3, 7}, DType::I64),
                Tensor()};
  Tensor labels = p.ids.clone();
  for (std::int64_t t = 0; t < 21; ++t) {
    const bool pad = t >= 7 + 4 && t < 14;
    p.mask.data<std::int64_t>()[t] = pad ? 0 : 1;
    if (pad) labels.data<std::int64_t>()[t] = -100;
  }
  p.targets = shift_labels(labels);
  return p;
}

}  // namespace

TEST_CASE("eval_loss equals forward + loss and picks the logits asked for",
          "[model][head-chunks][eval-loss]") {
  const std::string kind = GENERATE("mamba", "jamba", "mamba2");
  const DType dt = GENERATE(DType::F64, DType::F32);
  const ModelConfig cfg = config_for(kind);
  INFO(kind << " " << dtype_name(dt));
  const ModelWeights w = weights_in(cfg, dt);
  const PaddedBatch batch = padded_batch(cfg);
  auto be = make_cpu_backend();
  CausalLM lm(cfg, w, *be);
  lm.forward(batch.ids, batch.mask);
  const LmLoss whole = lm.loss(batch.targets);
  const Tensor logits = lm.logits().to(DType::F64);  // (3, 7, V)
  const std::int64_t V = cfg.vocab_size, n_logits = logits.numel();
  // Scattered picks, out of order, one repeated, the first and the last logit among them.
  std::vector<std::int64_t> picks = {n_logits - 1, 0, 5 * V + 2, 17 * V + V - 1, 5 * V + 2};
  for (std::int64_t p = 3; p < n_logits; p += 11) picks.push_back(p);
  // 0 rows: the default block (one block here, the same gemm as forward's); in float64 also
  // 1 to 21 blocks, which change only the order of the loss's sum over blocks.
  const std::vector<std::int64_t> block_rows =
      dt == DType::F64 ? std::vector<std::int64_t>{0, 1, 4, 5, 21} : std::vector<std::int64_t>{0};
  for (const std::int64_t rows : block_rows) {
    INFO("rows per block " << rows);
    CausalLM eval_lm(cfg, w, *be);
    eval_lm.set_head_chunk_rows(rows);
    std::vector<double> picked;
    const LmLoss l = eval_lm.eval_loss(batch.ids, batch.mask, batch.targets, picks, &picked);
    CHECK(l.n_tokens == whole.n_tokens);
    CHECK(l.n_tokens == 3 * 6 - 3);
    if (rows == 0) {
      CHECK(l.loss == whole.loss);
    } else {
      CHECK(l.loss == Approx(whole.loss).epsilon(1e-13));
    }
    CHECK(l.aux_loss == whole.aux_loss);  // the same routing, pooled in the same order
    if (cfg.output_router_logits) CHECK(l.aux_loss > 0);
    REQUIRE(picked.size() == picks.size());
    for (std::size_t j = 0; j < picks.size(); ++j) {
      INFO("pick " << picks[j]);
      const double want = logits.data<double>()[picks[j]];
      if (rows == 0) {
        CHECK(picked[j] == want);  // the same product as forward's
      } else {  // a product over fewer rows: BLAS may take another path, a few ulps off
        CHECK(picked[j] == Approx(want).epsilon(1e-13).margin(1e-15));
      }
    }
  }
}
