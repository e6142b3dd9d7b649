// config.json for Mamba-2 (transformers' Mamba2Config): defaults, the head/group checks, Python's
// Infinity in time_step_limit, and the round trip through model_config_to_json
// (docs/models.md "Mamba-2").
#include <catch2/catch.hpp>

#include "io/json_file.h"
#include "io_test_util.h"
#include "model/model_config.h"

using namespace ssmtune;
using nlohmann::json;
using ssmtune::test::require_error;
using ssmtune::test::TempDir;
using ssmtune::test::write_bytes;

namespace {

json minimal() {
  return {{"model_type", "mamba2"}, {"vocab_size", 64}, {"hidden_size", 16},
          {"num_hidden_layers", 2}, {"num_heads", 4},   {"head_dim", 8},
          {"n_groups", 2}};
}

ModelConfig parse(const json& j) { return parse_model_config(j, "m/config.json"); }

json with(json j, const std::string& key, json value) {
  j[key] = std::move(value);
  return j;
}

}  // namespace

TEST_CASE("a minimal Mamba-2 config gets Mamba2Config's defaults", "[model][config][mamba2]") {
  const ModelConfig c = parse(minimal());
  CHECK(c.is_mamba2());
  CHECK(c.d_inner == 32);  // int(expand * hidden_size)
  CHECK(c.ssm_heads == 4);
  CHECK(c.ssm_head_dim == 8);
  CHECK(c.n_groups == 2);
  CHECK(c.d_state == 128);
  CHECK(c.d_conv == 4);
  CHECK(c.chunk_size == 256);
  CHECK(c.conv_dim() == 32 + 2 * 2 * 128);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK_FALSE(c.use_bias);
  CHECK(c.use_conv_bias);
  CHECK(c.pad_token_id == 1);
  CHECK(c.bos_token_id == 0);
  CHECK(c.eos_token_id == 2);
  CHECK(c.time_step_limit_min == 0.0);
  CHECK(std::isinf(c.time_step_limit_max));
  for (std::int64_t i = 0; i < c.n_layer; ++i) {
    CHECK(layer_kind(c, i).mixer == MixerKind::Mamba2);
    CHECK(layer_kind(c, i).ffn == FeedForwardKind::None);
  }
  CHECK(mamba_layers(c).empty());
}

TEST_CASE("Mamba-2 heads must tile d_inner and groups must divide heads",
          "[model][config][mamba2]") {
  require_error([] { parse(with(minimal(), "head_dim", 6)); },
                {"field \"num_heads\" = 4 and \"head_dim\" = 6", "num_heads * head_dim", "= 32"});
  require_error([] { parse(with(minimal(), "n_groups", 3)); },
                {"field \"n_groups\" = 3", "a divisor of num_heads = 4"});
  require_error([] { parse(with(minimal(), "chunk_size", 0)); }, {"field \"chunk_size\""});
  require_error([] { parse(with(minimal(), "time_step_limit", json::array({1.0}))); },
                {"field \"time_step_limit\"", "a list [min, max]"});
  require_error([] { parse(with(minimal(), "time_step_limit", json::array({2.0, 1.0}))); },
                {"field \"time_step_limit\"", "min <= max"});
  require_error([] { parse(with(minimal(), "model_type", "mamba3")); },
                {"\"mamba\", \"mamba2\" or \"jamba\"", "\"mamba3\""});
}

TEST_CASE("a config.json with Python's Infinity loads and is written back the same way",
          "[model][config][mamba2]") {
  TempDir dir;
  // What transformers' save_pretrained writes for the default time_step_limit (0.0, inf).
  std::string text = minimal().dump();
  text.insert(text.size() - 1, ", \"time_step_limit\": [0.0, Infinity], \"note\": \"Infinity\"");
  write_bytes(dir / "config.json", text);
  const ModelConfig c = load_model_config(dir.path().string());
  CHECK(std::isinf(c.time_step_limit_max));
  const json j = model_config_to_json(c);
  CHECK(j["time_step_limit"] == json::array({0.0, "Infinity"}));
  const std::string written = dump_python_json(j, 2);
  CHECK(written.find("Infinity\n") != std::string::npos);
  CHECK(written.find("\"Infinity\"") == std::string::npos);
  write_bytes(dir / "config.json", written);
  CHECK(model_config_to_json(load_model_config(dir.path().string())) == j);
  // A strict reader still refuses the bare constant: only config.json readers allow it.
  require_error([&] { read_json_file(dir / "config.json"); }, {"invalid JSON"});
}

TEST_CASE("model_config_to_json round-trips a Mamba-2 config", "[model][config][mamba2]") {
  ModelConfig c = parse(with(with(minimal(), "use_bias", true), "tie_word_embeddings", true));
  c.chunk_size = 3;
  const json j = model_config_to_json(c);
  CHECK(j["model_type"] == "mamba2");
  CHECK(j["architectures"] == json::array({"Mamba2ForCausalLM"}));
  CHECK(model_config_to_json(parse(j)) == j);
}
