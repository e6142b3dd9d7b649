// The Mamba-2 LM on the CPU without a reference implementation: every parameter gradient
// against central finite differences in float64, recurrent decoding against the full forward,
// the dt clamp, and ssmtune's own init (lib/model/mamba2_mixer.h, mamba2_init.h). Parity with
// transformers is mamba2_parity_test.cpp's job.
#include <catch2/catch.hpp>

#include <cmath>

#include "backend/backend.h"
#include "decoder_check.h"
#include "gradient_check.h"
#include "model/causal_lm.h"
#include "model/model_init.h"
#include "peft/additional_scan.h"
#include "peft/parallel_adapter.h"
#include "peft/state_tuning.h"
#include "peft/virtual_tokens.h"
#include "test_compare.h"

using namespace ssmtune;
using nlohmann::json;
using ssmtune::testing::check_gradient;

namespace {

// Small enough for finite differences, with every dimension distinct: 4 heads of 3 channels in
// 2 groups, d_state 5, a conv of 3, biases everywhere, untied, chunks of 4 over 7 steps.
ModelConfig tiny_config(json extra = json::object()) {
  json j = {{"model_type", "mamba2"}, {"vocab_size", 13},   {"hidden_size", 6},
            {"num_hidden_layers", 2}, {"num_heads", 4},     {"head_dim", 3},
            {"n_groups", 2},          {"state_size", 5},    {"conv_kernel", 3},
            {"chunk_size", 4},        {"use_bias", true},   {"time_step_min", 1e-4},
            {"time_step_max", 0.5},   {"tie_word_embeddings", false}};
  j.update(extra);
  return parse_model_config(j, "tiny/config.json");
}

// init_model_weights in F64 (for finite differences), with norm gains and D moved off 1 so
// they matter.
ModelWeights f64_weights(const ModelConfig& cfg, std::uint64_t seed) {
  ModelWeights w = init_model_weights(cfg, seed);
  std::mt19937_64 rng(seed);
  for_each_param(cfg, w, [&](const std::string& name, Tensor& t) {
    t = t.to(DType::F64);
    if (name.ends_with("norm.weight") || name.ends_with("mixer.D") ||
        name.ends_with("norm_f.weight"))
      for (std::int64_t i = 0; i < t.numel(); ++i)
        t.data<double>()[i] += std::uniform_real_distribution<double>(-0.5, 0.5)(rng);
  });
  if (cfg.tie_word_embeddings) w.lm_head = w.embedding;
  return w;
}

// The method parameters' gradients from lm (its hooks set) against central finite differences
// of the loss on ids, base weights frozen.
void check_method_gradients(CausalLM& lm, const Tensor& ids,
                            std::vector<TrainableParam>& params) {
  const Tensor targets = shift_labels(ids);
  const auto loss = [&] {
    lm.forward(ids);
    return lm.loss(targets).loss;
  };
  loss();
  ModelWeights frozen;
  lm.backward(targets, frozen);
  for (TrainableParam& p : params) check_gradient(p.name, p.value, p.grad, loss);
}

}  // namespace

TEST_CASE("Mamba-2: every parameter gradient matches finite differences (float64)",
          "[model][mamba2]") {
  const ModelConfig cfg = tiny_config();
  ModelWeights w = f64_weights(cfg, 5);
  auto be = make_cpu_backend();
  CausalLM lm(cfg, w, *be);
  const Tensor ids = testing::random_ids(2, 7, cfg.vocab_size, 9);
  const Tensor targets = shift_labels(ids);
  ModelWeights grads = zeros_like_params(cfg, DType::F64);
  lm.forward(ids);
  lm.loss(targets);
  lm.backward(targets, grads);
  const auto loss = [&] {
    lm.forward(ids);
    return lm.loss(targets).loss;
  };
  ModelWeights handles = grads;
  std::map<std::string, Tensor> analytic;
  for_each_param(cfg, handles, [&](const std::string& name, Tensor& g) { analytic[name] = g; });
  int n_checked = 0;
  for_each_param(cfg, w, [&](const std::string& name, Tensor& t) {
    // about 24 elements per tensor, first and last included: two forwards each
    const std::int64_t stride = std::max<std::int64_t>(1, t.numel() / 24);
    check_gradient(name, t, analytic.at(name), loss, 1e-6, 1e-6, 1e-9, stride);
    ++n_checked;
  });
  CHECK(n_checked == 2 + 2 * 11 + 1);  // embedding, lm_head; 11 per layer; norm_f
}

TEST_CASE("Mamba-2: recurrent decoding equals the full forward", "[model][mamba2][decoder]") {
  for (const std::int64_t chunk : {1, 4, 256}) {
    INFO("chunk_size " << chunk);
    const ModelConfig cfg = tiny_config({{"chunk_size", chunk}});
    ModelWeights w = init_model_weights(cfg, 3);
    auto be = make_cpu_backend();
    CausalLM lm(cfg, w, *be);
    const Tensor ids = testing::random_ids(1, 9, cfg.vocab_size, 4);
    lm.forward(ids);
    testing::require_decoder_matches_forward(cfg, w, *be, ids, lm.logits(), nullptr, nullptr);
  }
}

TEST_CASE("Mamba-2: dt is clamped to time_step_limit and the clamp stops its gradient",
          "[model][mamba2]") {
  // A lower limit far above every softplus(dt + dt_bias): every dt is the clamp's bound, so the
  // gradient w.r.t. dt_bias is exactly zero and the loss does not move with dt_bias.
  const ModelConfig cfg = tiny_config({{"time_step_limit", {50.0, 60.0}}});
  ModelWeights w = f64_weights(cfg, 7);
  auto be = make_cpu_backend();
  CausalLM lm(cfg, w, *be);
  const Tensor ids = testing::random_ids(2, 5, cfg.vocab_size, 2);
  const Tensor targets = shift_labels(ids);
  ModelWeights grads = zeros_like_params(cfg, DType::F64);
  lm.forward(ids);
  const double before = lm.loss(targets).loss;
  lm.backward(targets, grads);
  for (const LayerWeights& lg : grads.layers)
    for (std::int64_t h = 0; h < cfg.ssm_heads; ++h)
      CHECK(lg.mamba2.dt_bias.data<double>()[h] == 0.0);
  w.layers[0].mamba2.dt_bias.data<double>()[1] += 0.3;
  lm.forward(ids);
  CHECK(lm.loss(targets).loss == before);
}

TEST_CASE("Mamba-2 init draws transformers' rules", "[model][mamba2][init]") {
  const ModelConfig cfg = tiny_config();
  ModelWeights w = init_model_weights(cfg, 1);
  CHECK(model_param_count(cfg) == [&] {
    std::int64_t n = 0;
    for_each_param(cfg, w, [&](const std::string&, Tensor& t) { n += t.numel(); });
    return n;
  }());
  const Mamba2MixerWeights& m = w.layers[1].mamba2;
  for (std::int64_t h = 0; h < cfg.ssm_heads; ++h) {
    CHECK(m.A_log.data<float>()[h] == Approx(std::log(double(h + 1))));
    CHECK(m.D.data<float>()[h] == 1.0f);
    // dt_bias = softplus^-1(dt), dt in [time_step_min, time_step_max]
    const double dt = std::log1p(std::exp(double(m.dt_bias.data<float>()[h])));
    CHECK(dt >= 1e-4 * 0.999);
    CHECK(dt <= 0.5 * 1.001);
  }
  for (std::int64_t e = 0; e < cfg.d_inner; ++e) CHECK(m.norm.data<float>()[e] == 1.0f);
  for (std::int64_t i = 0; i < m.in_proj_bias.numel(); ++i)
    CHECK(m.in_proj_bias.data<float>()[i] == 0.0f);
}

TEST_CASE("Mamba-2: the state methods' gradients match finite differences (float64)",
          "[model][mamba2][peft][state]") {
  // Two groups, so the h offset's read-out runs per group; chunks of 4 over 7 steps, so h0
  // reaches the scan through a chunk boundary; the learned conv state replaces zero padding.
  const ModelConfig cfg = tiny_config();
  ModelWeights w = f64_weights(cfg, 11);
  auto be = make_cpu_backend();
  const Tensor ids = testing::random_ids(2, 7, cfg.vocab_size, 3);
  for (const StateOffset offset : {StateOffset::H, StateOffset::Y}) {
    DYNAMIC_SECTION("offset " << int(offset)) {
      StateTuning st(cfg, /*initial_state=*/true, offset, DType::F64, *be,
                     /*conv_state=*/true);
      std::vector<TrainableParam> params;
      st.append_trainables(params);
      REQUIRE(params.size() == 3 * std::size_t(cfg.n_layer));  // h0, conv, offset per layer
      CHECK(params[0].value.shape() == Shape{cfg.ssm_heads, cfg.ssm_head_dim, cfg.d_state});
      std::mt19937_64 rng(17);
      for (TrainableParam& p : params) testing::fill_uniform(p.value, rng, -0.3, 0.3);
      CausalLM lm(cfg, w, *be);
      lm.set_scan_hook(&st);
      check_method_gradients(lm, ids, params);
    }
  }
}

TEST_CASE("Mamba-2: the recurrent decoder applies the state methods as the full forward does",
          "[model][mamba2][peft][state][decoder]") {
  const ModelConfig cfg = tiny_config();
  ModelWeights w = init_model_weights(cfg, 2);
  auto be = make_cpu_backend();
  for (const StateOffset offset : {StateOffset::H, StateOffset::Y}) {
    DYNAMIC_SECTION("offset " << int(offset)) {
      StateTuning st(cfg, /*initial_state=*/true, offset, DType::F32, *be, /*conv_state=*/true);
      std::vector<TrainableParam> params;
      st.append_trainables(params);
      std::mt19937_64 rng(5);
      std::uniform_real_distribution<float> u(-0.3f, 0.3f);
      for (TrainableParam& p : params)
        for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data<float>()[i] = u(rng);
      const Tensor ids = testing::random_ids(1, 9, cfg.vocab_size, 8);
      CausalLM lm(cfg, w, *be);
      lm.set_scan_hook(&st);
      lm.forward(ids);
      testing::require_decoder_matches_forward(cfg, w, *be, ids, lm.logits(), nullptr, &st);
    }
  }
}

TEST_CASE("Mamba-2: the parallel adapter beside out_proj matches finite differences (float64)",
          "[model][mamba2][peft]") {
  const ModelConfig cfg = tiny_config();
  ModelWeights w = f64_weights(cfg, 13);
  auto be = make_cpu_backend();
  ParallelAdapterConfig pc;
  pc.rank = 3;
  pc.scale = 0.7;
  ParallelAdapter pa(cfg, pc, DType::F64, *be);
  std::vector<TrainableParam> params;
  pa.append_trainables(params);
  REQUIRE(params.size() == 2 * std::size_t(cfg.n_layer));  // down and up per layer
  std::mt19937_64 rng(3);
  for (TrainableParam& p : params) testing::fill_uniform(p.value, rng, -0.5, 0.5);
  CausalLM lm(cfg, w, *be);
  lm.set_hook(&pa);
  check_method_gradients(lm, testing::random_ids(2, 6, cfg.vocab_size, 5), params);
}

namespace {

// Affix tuning with initial-state tuning (so the conv's learned context sits in front of the
// affix), or beside the additional scan, with random values everywhere. One scan hook at a
// time, as CausalLM takes it (PeftModel composes several).
struct AffixCase {
  std::unique_ptr<VirtualTokens> affix;
  std::unique_ptr<ScanHook> scan;
  std::vector<TrainableParam> params;
};

AffixCase affix_case(const ModelConfig& cfg, Backend& be, DType dtype, bool additional_scan,
                     std::uint64_t seed) {
  AffixCase c;
  VirtualTokensConfig vc;
  vc.affix_tokens = 2;
  c.affix = std::make_unique<VirtualTokens>(cfg, vc, dtype, be);
  c.affix->append_trainables(c.params);
  if (additional_scan) {
    AdditionalScanConfig ac;
    ac.states = 3;
    auto as = std::make_unique<AdditionalScan>(cfg, ac, dtype, be);
    as->append_trainables(c.params);
    c.scan = std::move(as);
  } else {
    auto st = std::make_unique<StateTuning>(cfg, /*initial_state=*/true, StateOffset::None,
                                            dtype, be, /*conv_state=*/true);
    st->append_trainables(c.params);
    c.scan = std::move(st);
  }
  std::mt19937_64 rng(seed);
  for (TrainableParam& p : c.params) testing::fill_uniform(p.value, rng, -0.3, 0.3);
  return c;
}

}  // namespace

TEST_CASE("Mamba-2: affix tuning and the additional scan match finite differences (float64)",
          "[model][mamba2][peft]") {
  // Two groups; 2 affix steps in front of 7 tokens with chunks of 4, so the affix and the
  // additional scan's states cross a chunk boundary.
  const ModelConfig cfg = tiny_config();
  ModelWeights w = f64_weights(cfg, 19);
  auto be = make_cpu_backend();
  const Tensor ids = testing::random_ids(2, 7, cfg.vocab_size, 4);
  for (const bool additional_scan : {false, true}) {
    DYNAMIC_SECTION((additional_scan ? "affix + additional scan" : "affix + initial state")) {
      AffixCase c = affix_case(cfg, *be, DType::F64, additional_scan, 23);
      // per layer: the affix (2, C + H), then A_log_add (H) and W_add (2n, E), or h0 and conv
      const std::int64_t C = cfg.conv_dim(), H = cfg.ssm_heads;
      REQUIRE(c.params.size() == 3 * std::size_t(cfg.n_layer));
      CHECK(c.params[0].value.shape() == Shape{2, C + H});
      if (additional_scan) CHECK(c.params[2].value.shape() == Shape{H});
      CausalLM lm(cfg, w, *be);
      lm.set_input_hook(c.affix.get());
      lm.set_scan_hook(c.scan.get());
      check_method_gradients(lm, ids, c.params);
    }
  }
}

TEST_CASE("Mamba-2: the recurrent decoder applies affix tuning and the additional scan as the "
          "full forward does",
          "[model][mamba2][peft][decoder]") {
  const ModelConfig cfg = tiny_config();
  ModelWeights w = init_model_weights(cfg, 4);
  auto be = make_cpu_backend();
  for (const bool additional_scan : {false, true}) {
    DYNAMIC_SECTION((additional_scan ? "affix + additional scan" : "affix + initial state")) {
      AffixCase c = affix_case(cfg, *be, DType::F32, additional_scan, 29);
      const Tensor ids = testing::random_ids(1, 9, cfg.vocab_size, 6);
      CausalLM lm(cfg, w, *be);
      lm.set_input_hook(c.affix.get());
      lm.set_scan_hook(c.scan.get());
      lm.forward(ids);
      testing::require_decoder_matches_forward(cfg, w, *be, ids, lm.logits(), nullptr,
                                               c.scan.get(), c.affix.get());
    }
  }
}

TEST_CASE("Mamba-2: an initialised additional scan leaves the logits alone; s4d init is refused",
          "[model][mamba2][peft]") {
  const ModelConfig cfg = tiny_config();
  ModelWeights w = init_model_weights(cfg, 6);
  auto be = make_cpu_backend();
  const Tensor ids = testing::random_ids(2, 7, cfg.vocab_size, 2);
  CausalLM lm(cfg, w, *be);
  lm.forward(ids);
  const Tensor want = lm.logits().clone();
  AdditionalScan as(cfg, AdditionalScanConfig{}, DType::F32, *be);
  as.init(w, 1);
  std::vector<TrainableParam> params;
  as.append_trainables(params);
  // "copy": each head's own A_log
  testing::require_close("A_log_add", params[0].value, w.layers[0].mamba2.A_log, 0, 0);
  lm.set_scan_hook(&as);
  lm.forward(ids);
  // W_C = 0, so the extra states are read out as exact zeros: the logits' bits stay.
  testing::require_close("logits", lm.logits(), want, 0, 0);

  AdditionalScanConfig s4d;
  s4d.init = "s4d";
  CHECK_THROWS_WITH(AdditionalScan(cfg, s4d, DType::F32, *be),
                    Catch::Contains("peft.additional_scan.init \"s4d\"") &&
                        Catch::Contains("use \"copy\""));
}
