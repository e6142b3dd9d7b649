// config.json for Mamba-1: HF names, mamba_ssm aliases and original configs, defaults, and
// the errors for missing, mistyped and out-of-range fields (docs/models.md "Mamba config").
#include "model/model_config.h"

#include <catch2/catch.hpp>

#include "io_test_util.h"

using namespace ssmtune;
using nlohmann::json;
using ssmtune::test::require_error;
using ssmtune::test::TempDir;
using ssmtune::test::write_bytes;

namespace {

// The minimal HF config; tests add or break one field at a time.
json minimal() {
  return {
      {"model_type", "mamba"}, {"vocab_size", 64}, {"hidden_size", 16}, {"num_hidden_layers", 2}};
}

ModelConfig parse(const json& j) { return parse_model_config(j, "m/config.json"); }

void require_config_error(const json& j, std::initializer_list<std::string> fragments) {
  require_error([&] { parse(j); }, fragments);
}

json with(json j, const std::string& key, json value) {
  j[key] = std::move(value);
  return j;
}

json without(json j, const std::string& key) {
  j.erase(key);
  return j;
}

}  // namespace

TEST_CASE("a minimal HF Mamba config gets transformers' defaults", "[model][config]") {
  const ModelConfig c = parse(minimal());
  CHECK(c.vocab_size == 64);
  CHECK(c.d_model == 16);
  CHECK(c.n_layer == 2);
  CHECK(c.d_state == 16);
  CHECK(c.expand == 2);
  CHECK(c.d_inner == 32);  // int(expand * hidden_size)
  CHECK(c.d_conv == 4);
  CHECK(c.dt_rank == 1);  // "auto" = ceil(16 / 16)
  CHECK(!c.use_bias);
  CHECK(c.use_conv_bias);
  CHECK(c.tie_word_embeddings);
  CHECK(c.layer_norm_epsilon == 1e-5);
  CHECK(c.hidden_act == "silu");
}

TEST_CASE("mamba-130m-hf's config.json parses to its published sizes", "[model][config]") {
  // Verbatim fields of state-spaces/mamba-130m-hf (docs/models.md "Reference sizes"), leftovers
  // included.
  const json j = json::parse(R"({
    "architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "d_inner": 1536,
    "d_model": 768, "eos_token_id": 0, "expand": 2, "fused_add_norm": true, "hidden_act": "silu",
    "hidden_size": 768, "initializer_range": 0.1, "intermediate_size": 1536,
    "layer_norm_epsilon": 1e-05, "model_type": "mamba", "n_layer": 24, "num_hidden_layers": 24,
    "pad_token_id": 0, "pad_vocab_size_multiple": 8, "rescale_prenorm_residual": false,
    "residual_in_fp32": true, "rms_norm": true, "ssm_cfg": {}, "state_size": 16,
    "time_step_floor": 0.0001, "time_step_init_scheme": "random", "time_step_max": 0.1,
    "time_step_min": 0.001, "time_step_rank": 48, "time_step_scale": 1.0, "torch_dtype": "float32",
    "transformers_version": "4.39.0.dev0", "use_bias": false, "use_cache": true,
    "use_conv_bias": true, "vocab_size": 50280})");
  const ModelConfig c = parse(j);
  CHECK(c.d_model == 768);
  CHECK(c.n_layer == 24);
  CHECK(c.d_inner == 1536);
  CHECK(c.dt_rank == 48);
  CHECK(c.vocab_size == 50280);  // already padded in HF configs: not padded again
  CHECK(c.tie_word_embeddings);
}

TEST_CASE("time_step_rank \"auto\" is ceil(hidden_size / 16)", "[model][config]") {
  for (auto [hidden, rank] :
       {std::pair{768, 48}, {1024, 64}, {2560, 160}, {20, 2}, {17, 2}, {16, 1}}) {
    const auto j = with(with(minimal(), "hidden_size", hidden), "time_step_rank", "auto");
    CHECK(parse(j).dt_rank == rank);
  }
  require_config_error(with(minimal(), "time_step_rank", "big"),
                       {"m/config.json: field \"time_step_rank\": expected a positive integer or "
                        "\"auto\", got string \"big\""});
}

TEST_CASE("legacy aliases stand in for HF names and must agree with them", "[model][config]") {
  json j = {{"model_type", "mamba"}, {"vocab_size", 10}, {"d_model", 32}, {"n_layer", 3},
            {"d_state", 4},          {"d_conv", 2},      {"d_inner", 48}, {"dt_rank", 5}};
  const ModelConfig c = parse(j);
  CHECK(c.d_model == 32);
  CHECK(c.n_layer == 3);
  CHECK(c.d_state == 4);
  CHECK(c.d_conv == 2);
  CHECK(c.d_inner == 48);
  CHECK(c.dt_rank == 5);
  require_config_error(
      with(j, "hidden_size", 64),
      {"m/config.json: field \"hidden_size\" = 64 disagrees with its alias \"d_model\" = 32"});
  require_config_error(with(j, "time_step_rank", 6),
                       {"field \"time_step_rank\" = 6 disagrees with its alias \"dt_rank\" = 5"});
}

TEST_CASE("an explicit intermediate_size wins over expand * hidden_size", "[model][config]") {
  const auto c = parse(with(with(minimal(), "expand", 1.5), "intermediate_size", 30));
  CHECK(c.d_inner == 30);
  CHECK(parse(with(minimal(), "expand", 1.5)).d_inner == 24);  // int(1.5 * 16)
}

TEST_CASE("an original mamba_ssm config pads the vocab and reads ssm_cfg", "[model][config]") {
  // state-spaces/mamba-130m's config.json (docs/models.md "Mamba config", original layout).
  json j = json::parse(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {},
      "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true,
      "pad_vocab_size_multiple": 8})");
  ModelConfig c = parse(j);
  CHECK(c.vocab_size == 50280);
  CHECK(c.d_model == 768);
  CHECK(c.d_inner == 1536);
  CHECK(c.dt_rank == 48);
  CHECK(c.d_state == 16);
  CHECK(c.use_conv_bias);
  CHECK(!c.use_bias);
  CHECK(c.tie_word_embeddings);

  j["ssm_cfg"] = {{"d_state", 8},       {"d_conv", 3},  {"expand", 1},      {"dt_rank", 7},
                  {"conv_bias", false}, {"bias", true}, {"layer", "Mamba1"}};
  j["tie_embeddings"] = false;
  c = parse(j);
  CHECK(c.d_state == 8);
  CHECK(c.d_conv == 3);
  CHECK(c.d_inner == 768);
  CHECK(c.dt_rank == 7);
  CHECK(!c.use_conv_bias);
  CHECK(c.use_bias);
  CHECK(!c.tie_word_embeddings);
  CHECK(parse(without(j, "pad_vocab_size_multiple")).vocab_size == 50280);  // mamba_ssm default 8
  CHECK(parse(with(j, "pad_vocab_size_multiple", 1)).vocab_size == 50277);

  require_config_error(with(j, "ssm_cfg", {{"layer", "Mamba2"}}),
                       {"field \"ssm_cfg.layer\": expected \"Mamba1\", got string \"Mamba2\""});
  require_config_error(
      with(j, "ssm_cfg", {{"d_state", "8"}}),
      {"field \"ssm_cfg.d_state\": expected a positive integer, got string \"8\""});
  require_config_error(with(j, "rms_norm", false),
                       {"field \"rms_norm\": expected true (LayerNorm"});
  require_config_error(with(j, "d_intermediate", 512), {"field \"d_intermediate\": expected 0"});
  require_config_error(with(j, "attn_layer_idx", {1}),
                       {"field \"attn_layer_idx\": expected an empty list"});
  require_config_error(with(j, "ssm_cfg", 3),
                       {"field \"ssm_cfg\": expected an object, got number 3"});
}

TEST_CASE("a missing required field is an error naming it and its alias", "[model][config]") {
  require_config_error(without(minimal(), "vocab_size"),
                       {"m/config.json: field \"vocab_size\": missing"});
  require_config_error(without(minimal(), "hidden_size"),
                       {"m/config.json: field \"hidden_size\" (or \"d_model\"): missing"});
  require_config_error(without(minimal(), "num_hidden_layers"),
                       {"field \"num_hidden_layers\" (or \"n_layer\"): missing"});
}

TEST_CASE("a mistyped field is an error naming file, field, expected type and value",
          "[model][config]") {
  require_config_error(
      with(minimal(), "state_size", "16"),
      {"m/config.json: field \"state_size\": expected a positive integer, got string \"16\""});
  require_config_error(with(minimal(), "hidden_size", 16.5),
                       {"field \"hidden_size\": expected a positive integer, got number 16.5"});
  require_config_error(with(minimal(), "use_bias", "false"),
                       {"field \"use_bias\": expected true or false, got string \"false\""});
  require_config_error(with(minimal(), "layer_norm_epsilon", "1e-5"),
                       {"field \"layer_norm_epsilon\": expected a number, got string \"1e-5\""});
  require_config_error(
      with(minimal(), "hidden_act", "gelu"),
      {"field \"hidden_act\": expected \"silu\" or \"swish\", got string \"gelu\""});
  require_config_error(with(minimal(), "model_type", "mamba3"),
                       {"field \"model_type\": expected \"mamba\", \"mamba2\" or \"jamba\", got "
                        "\"mamba3\""});
  // A Mamba config relabelled: Mamba2Config's default heads (128 x 64) do not tile d_inner.
  require_config_error(with(minimal(), "model_type", "mamba2"),
                       {"field \"num_heads\" = 128 and \"head_dim\" = 64: expected num_heads * "
                        "head_dim = int(expand * hidden_size) = 32"});
  require_config_error(with(minimal(), "model_type", 1),
                       {"field \"model_type\": expected a string"});
  require_config_error(json::array(), {"m/config.json: expected a JSON object, got an array"});
}

TEST_CASE("out-of-range sizes are errors before anything is allocated", "[model][config]") {
  require_config_error(
      with(minimal(), "vocab_size", 0),
      {"field \"vocab_size\": expected a positive integer no larger than 10000000, got number 0"});
  require_config_error(with(minimal(), "vocab_size", 100000000),
                       {"field \"vocab_size\"", "got number 100000000"});
  require_config_error(with(minimal(), "hidden_size", 1 << 20),
                       {"field \"hidden_size\": expected a positive integer no larger than 65536"});
  require_config_error(with(minimal(), "num_hidden_layers", -1),
                       {"field \"num_hidden_layers\"", "got number -1"});
  require_config_error(with(minimal(), "num_hidden_layers", 5000), {"no larger than 1024"});
  require_config_error(with(minimal(), "state_size", 4096),
                       {"field \"state_size\"", "no larger than 1024"});
  require_config_error(
      with(minimal(), "conv_kernel", 0),
      {"field \"conv_kernel\": expected a positive integer no larger than 16, got number 0"});
  require_config_error(with(minimal(), "conv_kernel", 17),
                       {"field \"conv_kernel\"", "got number 17"});
  require_config_error(with(minimal(), "layer_norm_epsilon", 0),
                       {"field \"layer_norm_epsilon\": expected a positive number, got number 0"});
  require_config_error(with(minimal(), "expand", -2),
                       {"field \"expand\": expected a positive number"});
  require_config_error(
      with(minimal(), "expand", 0.01),
      {"field \"expand\": expected a value with int(expand * hidden_size) from 1 to 262144"});
  require_config_error(with(with(minimal(), "hidden_size", 65536), "expand", 64),
                       {"field \"expand\": expected a value with int(expand * hidden_size)"});
  require_config_error(
      with(minimal(), "eos_token_id", 64),
      {"field \"eos_token_id\": expected a non-negative integer no larger than 63"});
  require_config_error(with(minimal(), "vocab_size", 18446744073709551615u),
                       {"field \"vocab_size\""});
  CHECK(parse(with(minimal(), "pad_token_id", nullptr)).pad_token_id == -1);
}

TEST_CASE("model_config_to_json round-trips through parse", "[model][config]") {
  ModelConfig c = parse(with(with(minimal(), "expand", 1.5), "intermediate_size", 30));
  c.use_bias = true;
  c.tie_word_embeddings = false;
  c.layer_norm_epsilon = 1e-6;
  c.pad_token_id = -1;
  const json j = model_config_to_json(c);
  CHECK(j["model_type"] == "mamba");
  CHECK(j["intermediate_size"] == 30);
  CHECK(j["pad_token_id"].is_null());
  const ModelConfig back = parse(j);
  CHECK(model_config_to_json(back) == j);
  CHECK(
      model_config_to_json(parse(minimal()))["expand"].is_number_integer());  // 2, as HF writes it
}

TEST_CASE("load_model_config reads model_dir/config.json and names it in errors",
          "[model][config]") {
  TempDir dir;
  require_error([&] { load_model_config(dir.path().string()); }, {"config.json: cannot open"});
  write_bytes(dir / "config.json", R"({"model_type": "mamba", "vocab_size": 8, "hidden_size": 4, )"
                                   R"("num_hidden_layers": 1, "state_size": "4"})");
  require_error([&] { load_model_config(dir.path().string()); },
                {(dir / "config.json").string() +
                 ": field \"state_size\": expected a positive integer, got string \"4\""});
  write_bytes(dir / "config.json", R"({"vocab_size": 8, "vocab_size": 9})");
  require_error([&] { load_model_config(dir.path().string()); }, {"duplicate key \"vocab_size\""});
}
