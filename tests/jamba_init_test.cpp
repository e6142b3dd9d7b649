// ssmtune init for Jamba: every tensor drawn by its rule (lib/model/jamba_init.cpp,
// transformers 4.44.2's JambaForCausalLM(config) and _init_weights), the parameter count,
// determinism per seed and per tensor name, the written directory reloading and running, and
// `ssmtune init` / `info` / `bench` on a Jamba SIZES.json. No fixture: the configs are below.
#include "model/jamba_init.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "backend/backend.h"
#include "cli_run.h"
#include "init_test_util.h"
#include "io/json_file.h"
#include "io_test_util.h"
#include "model/causal_lm.h"
#include "model/mamba_init.h"
#include "model/model_init.h"

using namespace ssmtune;
using namespace ssmtune::test;  // the init, io and CLI test helpers
namespace fs = std::filesystem;

namespace {

// Four layers covering Mamba + MLP (0, 2), attention + MoE (1) and Mamba + MoE (3); GQA 4/2;
// in/out_proj biases on; pad id 3, not 0; initializer_range 0.05, not JambaConfig's 0.02, so a
// hard-coded std would show.
const char* const kStatsSizes = R"({"model_type": "jamba", "vocab_size": 512,
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
  "num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_period": 4,
  "attn_layer_offset": 1, "num_experts": 4, "num_experts_per_tok": 2,
  "expert_layer_period": 2, "expert_layer_offset": 1, "mamba_d_state": 16, "mamba_d_conv": 4,
  "mamba_expand": 2, "mamba_dt_rank": 4, "mamba_proj_bias": true, "initializer_range": 0.05,
  "pad_token_id": 3, "bos_token_id": 1, "eos_token_id": 2})";

// A small one for the CLI: 3 layers (attention at 1, experts at 1).
const char* const kSmallSizes = R"({"model_type": "jamba", "vocab_size": 40, "hidden_size": 16,
  "intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4,
  "num_key_value_heads": 2, "attn_layer_period": 2, "attn_layer_offset": 1, "num_experts": 3,
  "num_experts_per_tok": 2, "expert_layer_period": 2, "expert_layer_offset": 1,
  "mamba_d_state": 4, "mamba_d_conv": 3, "mamba_expand": 2, "mamba_dt_rank": 2})";

ModelConfig parse(const char* sizes, const nlohmann::json& changes = nlohmann::json::object()) {
  nlohmann::json j = nlohmann::json::parse(sizes);
  j.update(changes);
  return parse_model_config(j, "sizes.json");
}

bool row_is_zero(const Tensor& t, std::int64_t row) {
  const std::int64_t D = t.shape()[1];
  const float* p = t.data<float>() + row * D;
  return std::all_of(p, p + D, [](float x) { return x == 0.0f; });
}

bool is_constant_rule(const std::string& name) {
  return name.ends_with("layernorm.weight") || name.ends_with("mamba.D") ||
         name.ends_with("A_log") || name.ends_with(".bias");
}

using Result = ssmtune::test::CliResult;
Result run(const std::string& args) { return ssmtune::test::run_cli(args); }

}  // namespace

TEST_CASE("Jamba init draws every tensor as JambaForCausalLM(config) does", "[init][jamba]") {
  const ModelConfig c = parse(kStatsSizes);
  ModelWeights w = init_jamba_weights(c, 7);
  const auto t = by_name(c, w);
  std::int64_t n_params = 0;
  for (const auto& [name, tensor] : t) {
    INFO(name);
    CHECK(tensor.dtype() == DType::F32);
    CHECK(tensor.shape() == expected_param_shape(c, name));
    n_params += tensor.numel();
  }
  CHECK(n_params == jamba_param_count(c));
  const double s = 0.05;

  SECTION("norms, D 1; A_log exactly ln(n + 1); every bias 0") {
    std::int64_t n_norms = 0, n_biases = 0;
    for (const auto& [name, tensor] : t) {
      if (name.ends_with("layernorm.weight") || name.ends_with("mamba.D"))
        check_constant(name, tensor, 1.0f), ++n_norms;
      if (name.ends_with(".bias")) check_constant(name, tensor, 0.0f), ++n_biases;
    }
    // 4 layers x 2 + final; 3 Mamba layers x (dt, b, c norms + D).
    CHECK(n_norms == 4 * 2 + 1 + 3 * 4);
    // 3 Mamba layers x (conv1d, in_proj, dt_proj, out_proj): dt_proj's too (dt = ln 2).
    CHECK(n_biases == 3 * 4);
    for (int i : {0, 2, 3}) {
      const Tensor& a = t.at("model.layers." + std::to_string(i) + ".mamba.A_log");
      for (std::int64_t e = 0; e < c.d_inner; ++e)
        for (std::int64_t n = 0; n < c.d_state; ++n)
          REQUIRE(a.data<float>()[e * c.d_state + n] == float(std::log(double(n + 1))));
      CHECK(a.data<float>()[1] == 0.6931472f);  // ln 2, rounded to F32
    }
  }
  SECTION("every Linear and Conv1d weight ~ N(0, initializer_range)") {
    std::int64_t n_normal = 0;
    std::vector<double> pooled;
    for (const auto& [name, tensor] : t) {
      if (is_constant_rule(name) || name.ends_with("embed_tokens.weight")) continue;
      check_normal(name, tensor, s);
      const std::vector<double> v = values(tensor);
      pooled.insert(pooled.end(), v.begin(), v.end());
      ++n_normal;
    }
    // Mamba layers 0, 2, 3: conv1d, in/x/dt/out_proj (15); attention at 1: q, k, v, o (4);
    // MLPs at 0 and 2 (6); MoE at 1 and 3: router + 4 experts x 3 (26); lm_head.
    CHECK(n_normal == 15 + 4 + 6 + 26 + 1);
    // All of them together (~380k values): std within 7 standard errors, 0.8%.
    check_normal("every Linear and Conv1d weight", pooled, s);
  }
  SECTION("embedding ~ N(0, initializer_range) with the pad row zero; lm_head's row is not") {
    const Tensor& emb = t.at("model.embed_tokens.weight");
    CHECK(row_is_zero(emb, 3));
    for (std::int64_t row : {0, 1, 2, 4, 511}) CHECK(!row_is_zero(emb, row));
    CHECK(!row_is_zero(t.at("lm_head.weight"), 3));
    // The other 511 rows: 32,704 values.
    const std::vector<double> v = values(emb);
    std::vector<double> rest(v.begin(), v.begin() + 3 * c.d_model);
    rest.insert(rest.end(), v.begin() + 4 * c.d_model, v.end());
    check_normal("model.embed_tokens.weight without row 3", rest, s);
  }
}

TEST_CASE("Jamba init follows tie_word_embeddings, a null pad id and the biases asked for",
          "[init][jamba]") {
  SECTION("tied: lm_head is the embedding, pad row zero included") {
    const ModelConfig c = parse(kStatsSizes, {{"tie_word_embeddings", true}});
    const ModelWeights w = init_jamba_weights(c, 1);
    CHECK(w.lm_head.raw() == w.embedding.raw());
    CHECK(row_is_zero(w.lm_head, 3));
  }
  SECTION("pad_token_id null: no row is zeroed") {
    const ModelConfig c = parse(kStatsSizes, {{"pad_token_id", nullptr}});
    const ModelWeights w = init_jamba_weights(c, 1);
    for (std::int64_t row = 0; row < c.vocab_size; ++row) REQUIRE(!row_is_zero(w.embedding, row));
  }
  SECTION("no conv or proj biases: none is made") {
    const ModelConfig c =
        parse(kStatsSizes, {{"mamba_conv_bias", false}, {"mamba_proj_bias", false}});
    ModelWeights w = init_jamba_weights(c, 1);
    std::vector<std::string> biases;
    for (const auto& [name, tensor] : by_name(c, w))
      if (name.ends_with(".bias")) biases.push_back(name);
    CHECK(biases == std::vector<std::string>{"model.layers.0.mamba.dt_proj.bias",
                                             "model.layers.2.mamba.dt_proj.bias",
                                             "model.layers.3.mamba.dt_proj.bias"});
  }
  SECTION("initializer_range 0 gives zero weights; a negative one or a Mamba config is refused") {
    const ModelConfig c = parse(kStatsSizes, {{"initializer_range", 0}});
    ModelWeights w = init_jamba_weights(c, 1);
    check_constant("q_proj", by_name(c, w).at("model.layers.1.self_attn.q_proj.weight"), 0.0f);
    require_error(
        [&] {
          init_jamba_weights(parse(kStatsSizes, {{"initializer_range", -1}}), 1);
        },
        {"initializer_range", "negative"});
    require_error([&] { init_jamba_weights(ModelConfig{}, 1); }, {"model_type", "mamba"});
  }
}

TEST_CASE("Jamba parameter count matches the tensors and transformers' totals", "[init][jamba]") {
  for (bool tied : {true, false})
    for (bool bias : {true, false}) {
      const ModelConfig c = parse(
          kSmallSizes,
          {{"tie_word_embeddings", tied}, {"mamba_proj_bias", bias}, {"mamba_conv_bias", !bias}});
      ModelWeights w = init_jamba_weights(c, 0);
      std::int64_t n = 0;
      for_each_param(c, w, [&](const std::string&, Tensor& t) { n += t.numel(); });
      CHECK(jamba_param_count(c) == n);
      CHECK(model_param_count(c) == n);
    }
  // sum(p.numel() for p in JambaForCausalLM(config).parameters()) in transformers 4.44.2, built
  // on the meta device (accelerate.init_empty_weights): JambaConfig()'s defaults (Jamba-v0.1's
  // sizes) and configs/bench/jamba-small.json.
  ModelConfig v01 = parse(R"({"model_type": "jamba", "vocab_size": 65536, "hidden_size": 4096,
    "num_hidden_layers": 32, "intermediate_size": 14336})");
  CHECK(jamba_param_count(v01) == 51'570'323'328);
  const fs::path small =
      fs::path(SSMTUNE_FIXTURES_DIR) / ".." / ".." / "configs" / "bench" / "jamba-small.json";
  const ModelConfig c = parse_model_config(read_json_file(small), small.string());
  CHECK(c.is_jamba());
  CHECK(jamba_param_count(c) == 18'171'424);
}

TEST_CASE("Jamba init is deterministic per seed and per tensor name", "[init][jamba]") {
  const ModelConfig c = parse(kSmallSizes, {{"mamba_proj_bias", true}});
  check_seed_determinism(
      c, [](const ModelConfig& m, std::uint64_t seed) { return init_jamba_weights(m, seed); },
      [](const std::string& name) { return !is_constant_rule(name); });
  // init_model_weights picks the Jamba rules for a Jamba config.
  ModelWeights w = init_jamba_weights(c, 42), dispatched = init_model_weights(c, 42);
  check_same_tensors(c, w, dispatched);
  // Held in bf16 (ssmtune bench --frozen-weights bf16): each tensor of the F32 draw rounded
  // once, the padding row's zeros included.
  ModelWeights held = init_model_weights(c, 42, DType::BF16);
  std::map<std::string, Tensor> rounded;
  for_each_param(c, w,
                 [&](const std::string& name, Tensor& t) { rounded[name] = t.to(DType::BF16); });
  for_each_param(c, held, [&](const std::string& name, Tensor& t) {
    INFO(name);
    REQUIRE(t.dtype() == DType::BF16);
    CHECK(std::memcmp(t.raw(), rounded.at(name).raw(), t.nbytes()) == 0);
  });
  if (c.tie_word_embeddings) CHECK(held.lm_head.raw() == held.embedding.raw());
  CHECK(c.pad_token_id >= 0);  // so the padding row above was zeroed in bf16
  // A fourth layer (Mamba + MLP) leaves the first three and the embedding as they were.
  const ModelConfig c4 = parse(kSmallSizes, {{"mamba_proj_bias", true}, {"num_hidden_layers", 4}});
  ModelWeights w4 = init_jamba_weights(c4, 42);
  check_tensors_kept(c, w, c4, w4);
}

TEST_CASE("a written Jamba model directory reloads to the same tensors and runs", "[init][jamba]") {
  TempDir tmp;
  for (bool tied : {false, true}) {
    const ModelConfig c =
        parse(kStatsSizes, {{"tie_word_embeddings", tied}, {"output_router_logits", true}});
    ModelWeights w = init_jamba_weights(c, 5);
    const fs::path dir = tmp / (tied ? "tied" : "untied");
    write_mamba_model_dir(dir.string(), c, w);
    CHECK(entries(dir) == std::vector<std::string>{"config.json", "model.safetensors"});
    const nlohmann::json j = read_json_file(dir / "config.json");
    CHECK(j.at("model_type") == "jamba");
    CHECK(j.at("architectures") == nlohmann::json::array({"JambaForCausalLM"}));
    CHECK(j.at("torch_dtype") == "float32");
    CHECK(j.at("use_mamba_kernels") == false);

    const ModelWeights w2 = check_reloads(dir, c, w);
    const LmLoss loss = forward_loss(c, w2, 37);
    // The final norm gives h unit RMS, so a logit's std is about s sqrt(D) = 0.05 x 8 = 0.4,
    // which adds about 0.4^2 / 2 = 0.08 to the uniform loss ln(V): within 0.25 of ln(512).
    CHECK(std::isfinite(loss.loss));
    CHECK(loss.loss == Approx(std::log(512.0)).margin(0.25));
    // Near-uniform routing gives the load-balancing loss top-k = 2 (docs/models.md "Jamba
    // MoE"); all tokens on two experts would give up to 4. 0.5 tells the two apart.
    CHECK(loss.aux_loss == Approx(2.0).margin(0.5));
  }
}

TEST_CASE("ssmtune init writes a Jamba directory that ssmtune info describes",
          "[init][jamba][cli]") {
  TempDir tmp;
  write_bytes(tmp / "sizes.json", kSmallSizes);
  fs::create_directory(tmp / "tok");
  const std::string tok = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 39}}})";
  write_bytes(tmp / "tok" / "tokenizer.json", tok);
  const fs::path out = tmp / "model";
  Result r = run("init " + (tmp / "sizes.json").string() + " --out " + out.string() +
                 " --seed 9 --tokenizer " + (tmp / "tok").string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const ModelConfig c = parse(kSmallSizes);
  // Layers 0, 2: Mamba mixer 2,250 + MLP 1,152; layer 1: attention 768 + router 48 + 3 experts
  // 3,456; 2 x 16 norms each; embedding and lm_head 640 each, final norm 16. transformers
  // 4.44.2's JambaForCausalLM of these sizes counts the same.
  CHECK(jamba_param_count(c) == 12'468);
  CHECK_THAT(r.output,
             Catch::Contains("wrote " + out.string() +
                             " (config.json, model.safetensors, tokenizer.json): 3 layers, 1 "
                             "attention (4 heads, 2 key/value), 1 with 3 experts (top 2), "
                             "hidden 16, ffn 24, d_inner 32, d_state 4, vocab 40, untied "
                             "embeddings, 12,468 parameters, float32, seed 9"));
  CHECK(read_bytes(out / "tokenizer.json") == tok);
  // The binary draws exactly what the library draws for that seed.
  ModelWeights expected = init_jamba_weights(c, 9);
  ModelWeights loaded = load_model_weights(out.string(), load_model_config(out.string()));
  check_same_tensors(c, expected, loaded);

  r = run("info " + out.string());
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("architecture  JambaForCausalLM (jamba), 3 layers"));
  CHECK_THAT(r.output, Catch::Contains("layers        0 mamba+mlp, 1 attention+moe, 2 mamba+mlp"));
  CHECK_THAT(r.output, Catch::Contains("stored as F32"));
  CHECK_THAT(r.output, Catch::Contains("12,468"));

  r = run("init --help");
  CHECK_THAT(r.output, Catch::Contains("JambaForCausalLM"));
}

TEST_CASE("ssmtune init warns about keys a Jamba config does not have", "[init][jamba][cli]") {
  TempDir tmp;
  nlohmann::json j = nlohmann::json::parse(kSmallSizes);
  j["state_size"] = 8;             // Mamba's name; Jamba's is mamba_d_state
  j["use_mamba_kernels"] = false;  // written by model_config_to_json: known
  j["transformers_version"] = "4.44.2";
  write_bytes(tmp / "sizes.json", j.dump());
  const Result r = run("init " + (tmp / "sizes.json").string() + " --out " + (tmp / "m").string());
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("field \"state_size\" is not a Jamba config field"));
  CHECK_THAT(r.output, !Catch::Contains("use_mamba_kernels"));
  CHECK_THAT(r.output, !Catch::Contains("transformers_version"));
  CHECK_THAT(r.output, Catch::Contains("d_state 4"));
}

TEST_CASE("ssmtune bench runs a random Jamba from its sizes", "[init][jamba][cli]") {
  TempDir tmp;
  write_bytes(tmp / "sizes.json", kSmallSizes);
  const Result r = run("bench --config " + (tmp / "sizes.json").string() +
                       " --batch 1 --seq-len 8 --steps 1 --warmup 0");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("tokens/s"));
  // A frozen base held in bf16 (model/weight_storage.h): no weight gradients, widened per layer.
  const Result frozen = run("bench --config " + (tmp / "sizes.json").string() +
                            " --batch 1 --seq-len 8 --steps 1 --warmup 0 --frozen-weights bf16");
  INFO(frozen.output);
  CHECK(frozen.exit_code == 0);
  CHECK_THAT(frozen.output, Catch::Contains("base frozen in bf16"));
}
