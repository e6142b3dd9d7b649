// ssmtune init for Mamba-2 beyond the rules mamba2_model_test.cpp checks (lib/model/
// mamba2_init.cpp): determinism per seed and per tensor name, a written directory that reloads
// (Python's Infinity in time_step_limit kept) and runs, and `ssmtune init`'s warning about keys
// a Mamba-2 config does not have. No fixture: the sizes are below.
#include "model/mamba2_init.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <limits>

#include "cli_run.h"
#include "init_test_util.h"
#include "io/json_file.h"
#include "io_test_util.h"
#include "model/mamba_init.h"
#include "model/model_init.h"

using namespace ssmtune;
using namespace ssmtune::test;  // the init, io and CLI test helpers
namespace fs = std::filesystem;

namespace {

// 4 heads x 6 in 2 groups, d_state 4, biases on in/out_proj, untied, vocab 96.
const char* const kSizes = R"({"model_type": "mamba2", "vocab_size": 96, "hidden_size": 12,
  "num_hidden_layers": 2, "num_heads": 4, "head_dim": 6, "n_groups": 2, "state_size": 4,
  "conv_kernel": 3, "chunk_size": 4, "use_bias": true, "tie_word_embeddings": false,
  "initializer_range": 0.05})";

ModelConfig parse(const nlohmann::json& changes = nlohmann::json::object()) {
  nlohmann::json j = nlohmann::json::parse(kSizes);
  j.update(changes);
  return parse_model_config(j, "sizes.json");
}

// The tensors drawn at random (mamba2_init.cpp's table); the rest are constants.
bool is_random(const std::string& name) {
  for (const char* r : {"embeddings.weight", "in_proj.weight", "conv1d.weight", "conv1d.bias",
                        "out_proj.weight", "dt_bias", "lm_head.weight"})
    if (name.ends_with(r)) return true;
  return false;
}

}  // namespace

TEST_CASE("Mamba-2 init is deterministic per seed and per tensor name", "[init][mamba2]") {
  const ModelConfig c = parse();
  check_seed_determinism(
      c, [](const ModelConfig& m, std::uint64_t seed) { return init_mamba2_weights(m, seed); }, is_random);
  // init_model_weights picks the Mamba-2 rules for a Mamba-2 config.
  ModelWeights w = init_mamba2_weights(c, 42), dispatched = init_model_weights(c, 42);
  check_same_tensors(c, w, dispatched);
  CHECK(model_param_count(c) == mamba2_param_count(c));
  // A third layer leaves the first two and the embedding as they were.
  const ModelConfig c3 = parse({{"num_hidden_layers", 3}});
  ModelWeights w3 = init_mamba2_weights(c3, 42);
  check_tensors_kept(c, w, c3, w3);
}

TEST_CASE("a written Mamba-2 model directory reloads to the same tensors and runs",
          "[init][mamba2]") {
  TempDir tmp;
  for (bool tied : {false, true}) {
    // transformers' Mamba2Config default time_step_limit, (0, inf): written as Infinity.
    const ModelConfig c =
        parse({{"tie_word_embeddings", tied},
               {"time_step_limit", {0.0, std::numeric_limits<double>::infinity()}}});
    REQUIRE(std::isinf(c.time_step_limit_max));
    ModelWeights w = init_mamba2_weights(c, 5);
    const fs::path dir = tmp / (tied ? "tied" : "untied");
    write_mamba_model_dir(dir.string(), c, w);
    CHECK(entries(dir) == std::vector<std::string>{"config.json", "model.safetensors"});
    CHECK_THAT(read_bytes(dir / "config.json"), Catch::Contains("Infinity"));
    const nlohmann::json j = read_python_json_file(dir / "config.json");
    CHECK(j.at("model_type") == "mamba2");
    CHECK(j.at("architectures") == nlohmann::json::array({"Mamba2ForCausalLM"}));
    const ModelWeights w2 = check_reloads(dir, c, w);
    const LmLoss loss = forward_loss(c, w2, 37);
    // The final norm gives h unit RMS; untied, lm_head U(+-1/sqrt(12)) gives logits of std
    // about 0.58 (+0.17 to the uniform loss), tied N(0, 0.05) about 0.17: within 0.35 of ln(96).
    CHECK(std::isfinite(loss.loss));
    CHECK(loss.loss == Approx(std::log(96.0)).margin(0.35));
  }
}

TEST_CASE("ssmtune init warns about keys a Mamba-2 config does not have", "[init][mamba2][cli]") {
  TempDir tmp;
  nlohmann::json j = nlohmann::json::parse(kSizes);
  j["mamba_d_state"] = 8;  // Jamba's name; Mamba-2's is state_size
  j["transformers_version"] = "4.44.2";
  write_bytes(tmp / "sizes.json", j.dump());
  const CliResult r =
      run_cli("init " + (tmp / "sizes.json").string() + " --out " + (tmp / "m").string());
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("field \"mamba_d_state\" is not a Mamba-2 config field"));
  CHECK_THAT(r.output, !Catch::Contains("transformers_version"));
  CHECK_THAT(r.output, Catch::Contains("4 heads x 6, n_groups 2, d_inner 24, d_state 4"));
  // num_heads x head_dim must be expand x hidden_size: a usage error naming both.
  j.erase("mamba_d_state");
  j["head_dim"] = 5;
  write_bytes(tmp / "bad.json", j.dump());
  const CliResult bad =
      run_cli("init " + (tmp / "bad.json").string() + " --out " + (tmp / "b").string());
  INFO(bad.output);
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, Catch::Contains("head_dim") && Catch::Contains("num_heads"));
  CHECK(!fs::exists(tmp / "b"));
}
