// ssmtune init SIZES.json --out DIR: a new, randomly initialised Mamba, Mamba-2 or Jamba model
// directory in Hugging Face format (config.json + model.safetensors, optionally tokenizer
// files), drawn as transformers' MambaForCausalLM(config), Mamba2ForCausalLM(config) or
// JambaForCausalLM(config) draws it (lib/model/mamba_init.cpp, mamba2_init.cpp and
// jamba_init.cpp list the rules).
#include <spdlog/spdlog.h>

#include <filesystem>
#include <set>

#include "apps/ssmtune/commands.h"
#include "apps/ssmtune/option_checks.h"
#include "apps/ssmtune/format.h"
#include "data/tokenizer.h"
#include "io/json_fields.h"
#include "io/json_file.h"
#include "model/mamba_init.h"
#include "model/model_config.h"
#include "model/model_init.h"
#include "model/model_weights.h"

namespace ssmtune {

namespace fs = std::filesystem;

namespace {

struct InitOptions {
  std::string sizes_file;
  std::string out_dir;
  std::string tokenizer_dir;
  std::uint64_t seed = 0;
  bool overwrite = false;
};

// Keys a Mamba config.json may hold that parse_model_config does not read or that only
// document where the file came from, beside those model_config_to_json writes.
const char* const kOtherMambaKeys[] = {"d_model",
                                       "n_layer",
                                       "d_state",
                                       "d_conv",
                                       "dt_rank",
                                       "d_inner",
                                       "ssm_cfg",
                                       "pad_vocab_size_multiple",
                                       "rms_norm",
                                       "fused_add_norm",
                                       "tie_embeddings",
                                       "d_intermediate",
                                       "attn_layer_idx",
                                       "attn_cfg",
                                       "dtype",
                                       "use_mambapy",
                                       "transformers_version",
                                       "_name_or_path"};
// The same for Mamba-2 (what transformers and mamba_ssm configs carry besides).
const char* const kOtherMamba2Keys[] = {"dtype", "transformers_version", "_name_or_path",
                                        "use_mambapy"};
// The same for Jamba: Hub configs' leftovers (docs/models.md "Jamba config").
const char* const kOtherJambaKeys[] = {
    "mamba_inner_layernorms", "n_ctx",         "calc_logits_for_entire_prompt", "auto_map", "dtype",
    "transformers_version",   "_name_or_path",
};

// A typo ("stat_size") would otherwise silently give the default; a warning, not an error, so
// a config.json copied from a real model (with its leftovers) still works as SIZES.json. A
// Mamba key in a Jamba file ("state_size" for "mamba_d_state") is such a typo too.
void warn_unknown_keys(const nlohmann::json& j, const std::string& file) {
  if (!j.is_object()) return;  // parse_model_config reports it
  ModelConfig kind;
  std::set<std::string> known;
  if (j.contains("model_type") && j["model_type"] == "jamba") {
    kind.model_type = "jamba";
    known.insert(std::begin(kOtherJambaKeys), std::end(kOtherJambaKeys));
  } else if (j.contains("model_type") && j["model_type"] == "mamba2") {
    kind.model_type = "mamba2";
    known.insert(std::begin(kOtherMamba2Keys), std::end(kOtherMamba2Keys));
  } else {
    known.insert(std::begin(kOtherMambaKeys), std::end(kOtherMambaKeys));
  }
  const nlohmann::json written = model_config_to_json(kind);
  for (const auto& [key, value] : written.items()) known.insert(key);
  for (const auto& [key, value] : j.items())
    if (!known.count(key))
      spdlog::warn("warning: {}: field {} is not a {} config field; ignored", file, quote_str(key),
                   kind.family_name());
}

// Every mistake in SIZES.json is the user's configuration: exit 2, naming the file and field.
ModelConfig read_sizes(const std::string& file) {
  try {
    const nlohmann::json j = read_python_json_file(file);
    warn_unknown_keys(j, file);
    ModelConfig c = parse_model_config(j, file);
    const JsonFields f(j, file);
    if (c.initializer_range < 0) f.fail("initializer_range", "a non-negative number");
    if (c.time_step_min > c.time_step_max)
      throw Error(f.where(f.has("time_step_min") ? "time_step_min" : "time_step_max") + ": " +
                  "time_step_min = " + nlohmann::json(c.time_step_min).dump() +
                  " is larger than time_step_max = " + nlohmann::json(c.time_step_max).dump());
    if (c.torch_dtype != "float32")
      spdlog::warn("warning: {}: field \"torch_dtype\" = {} ignored; init writes float32", file,
                   quote_str(c.torch_dtype));
    c.torch_dtype = "float32";
    return c;
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
}

// Largest token id in tokenizer.json's model.vocab (an object token -> id for BPE, WordPiece
// and WordLevel; a list of [piece, score] for Unigram, where the id is the position) and
// added_tokens (a list of {"id", "content", ...}). Only enough JSON to find ids: no tokenizer.
struct MaxToken {
  std::int64_t id = -1;
  std::string token;
  void see(std::int64_t i, const std::string& t) {
    if (i > id) id = i, token = t;
  }
};

MaxToken max_token_id(const fs::path& path) {
  const std::string file = path.string();
  const nlohmann::json j = read_json_file(path);
  const JsonFields root(j, file);
  MaxToken max;
  const auto id_of = [&](const nlohmann::json& v, const std::string& field) {
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 ||
        (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t(INT64_MAX)))
      throw Error(file + ": field " + quote_str(field) +
                  ": expected a non-negative integer id, got " + describe_json_value(v));
    return v.get<std::int64_t>();
  };
  const auto model = root.get_object("model");
  if (!model || !model->has("vocab")) throw Error(file + ": field \"model.vocab\": missing");
  const nlohmann::json& vocab = model->raw("vocab");
  if (vocab.is_object()) {
    for (const auto& [token, id] : vocab.items()) max.see(id_of(id, "model.vocab"), token);
  } else if (vocab.is_array()) {
    if (!vocab.empty()) {
      const nlohmann::json& last = vocab.back();
      max.see(std::int64_t(vocab.size()) - 1,
              last.is_array() && !last.empty() && last[0].is_string() ? last[0].get<std::string>()
                                                                      : "");
    }
  } else {
    model->fail("vocab", "an object (token -> id) or a list of [piece, score]");
  }
  if (root.has("added_tokens") && !root.raw("added_tokens").is_null()) {
    const nlohmann::json& added = root.raw("added_tokens");
    if (!added.is_array()) root.fail("added_tokens", "a list");
    for (const nlohmann::json& t : added) {
      if (!t.is_object() || !t.contains("id"))
        throw Error(file + ": field \"added_tokens\": expected objects with an \"id\", got " +
                    describe_json_value(t));
      const std::string content =
          t.contains("content") && t["content"].is_string() ? t["content"].get<std::string>() : "";
      max.see(id_of(t["id"], "added_tokens.id"), content);
    }
  }
  return max;
}

// The tokenizer files of `dir` to copy, after checking the vocabulary fits the model.
std::vector<fs::path> tokenizer_files(const std::string& dir, const ModelConfig& c,
                                      const std::string& sizes_file) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw UsageError("--tokenizer " + dir + ": not a directory");
  const std::vector<fs::path> files = tokenizer_files_in(dir);
  if (files.empty())
    throw UsageError("--tokenizer " + dir +
                     ": holds none of tokenizer.json, "
                     "tokenizer_config.json, special_tokens_map.json, tokenizer.model");
  const fs::path json = fs::path(dir) / "tokenizer.json";
  if (fs::is_regular_file(json, ec)) {
    const MaxToken max = max_token_id(json);
    if (max.id >= c.vocab_size)
      throw UsageError(json.string() + ": token id " + std::to_string(max.id) + " (" +
                       quote_str(max.token, 40) + ") does not fit vocab_size " +
                       std::to_string(c.vocab_size) + " of " + sizes_file +
                       "; set vocab_size to at least " + std::to_string(max.id + 1));
  } else {
    spdlog::warn("warning: {} has no tokenizer.json; its vocabulary size is not checked", dir);
  }
  return files;
}

// The sizes `ssmtune init` reports, e.g. "4 layers, d_model 128, d_inner 256, d_state 16,
// vocab 2048, tied embeddings".
std::string describe_sizes(const ModelConfig& c) {
  const auto n = [](std::int64_t v) { return std::to_string(v); };
  std::string s = n(c.n_layer) + " layers, ";
  if (c.is_jamba()) {
    std::int64_t attention = 0, moe = 0;
    for (std::int64_t i = 0; i < c.n_layer; ++i) {
      attention += layer_kind(c, i).mixer == MixerKind::Attention;
      moe += layer_kind(c, i).ffn == FeedForwardKind::MoE;
    }
    s += n(attention) + " attention (" + n(c.n_heads) + " heads, " + n(c.n_kv_heads) +
         " key/value), " + n(moe) + " with " + n(c.n_experts) + " experts (top " +
         n(c.experts_per_token) + "), hidden " + n(c.d_model) + ", ffn " + n(c.d_ffn) + ", ";
  } else {
    s += "d_model " + n(c.d_model) + ", ";
  }
  if (c.is_mamba2())
    s += n(c.ssm_heads) + " heads x " + n(c.ssm_head_dim) + ", n_groups " + n(c.n_groups) + ", ";
  return s + "d_inner " + n(c.d_inner) + ", d_state " + n(c.d_state) + ", vocab " +
         n(c.vocab_size) + ", " + (c.tie_word_embeddings ? "tied" : "untied") + " embeddings";
}

void run_init(const InitOptions& o) {
  const ModelConfig cfg = read_sizes(o.sizes_file);
  const std::vector<fs::path> extra = o.tokenizer_dir.empty()
                                          ? std::vector<fs::path>{}
                                          : tokenizer_files(o.tokenizer_dir, cfg, o.sizes_file);
  check_model_dir_target(o.out_dir, o.overwrite);  // before the weights, which may take a while
  const ModelWeights w = init_model_weights(cfg, o.seed);
  write_mamba_model_dir(o.out_dir, cfg, w, o.overwrite, extra);

  std::string files = "config.json, model.safetensors";
  for (const fs::path& f : extra) files += ", " + f.filename().string();
  std::printf("wrote %s (%s): %s, %s parameters, float32, seed %llu\n", o.out_dir.c_str(),
              files.c_str(), describe_sizes(cfg).c_str(),
              with_commas(model_param_count(cfg)).c_str(), (unsigned long long)o.seed);
}

}  // namespace

void add_init_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "init",
      "Write a new, randomly initialised Mamba, Mamba-2 or Jamba model directory (config.json\n"
      "+ model.safetensors, float32) that transformers' MambaForCausalLM, Mamba2ForCausalLM or\n"
      "JambaForCausalLM .from_pretrained loads, drawn as transformers' own init draws it.\n"
      "SIZES.json holds Hugging Face config fields; those left out take transformers'\n"
      "defaults. Mamba needs vocab_size, hidden_size and num_hidden_layers, e.g.\n"
      "  {\"vocab_size\": 50280, \"hidden_size\": 256, \"num_hidden_layers\": 4, \"state_size\": "
      "16}\n"
      "Jamba (\"model_type\": \"jamba\") needs intermediate_size (the MLP width) too; its Mamba\n"
      "sizes are mamba_d_state, mamba_expand, ... (configs/bench/jamba-small.json), e.g.\n"
      "  {\"model_type\": \"jamba\", \"vocab_size\": 2048, \"hidden_size\": 256,\n"
      "   \"num_hidden_layers\": 8, \"intermediate_size\": 512, \"num_attention_heads\": 8,\n"
      "   \"attn_layer_period\": 4, \"attn_layer_offset\": 2, \"num_experts\": 8}\n"
      "Mamba-2 (\"model_type\": \"mamba2\") takes num_heads x head_dim = expand x hidden_size,\n"
      "n_groups, state_size and chunk_size, e.g.\n"
      "  {\"model_type\": \"mamba2\", \"vocab_size\": 2048, \"hidden_size\": 256,\n"
      "   \"num_hidden_layers\": 4, \"num_heads\": 8, \"head_dim\": 64, \"n_groups\": 1,\n"
      "   \"state_size\": 64, \"chunk_size\": 64}\n"
      "Example: ssmtune init sizes.json --out models/mamba-small --seed 1 "
      "--tokenizer models/mamba-130m-hf");
  static InitOptions o;
  cmd->add_option("sizes", o.sizes_file, "JSON file with the model's config fields")->required();
  cmd->add_option("--out", o.out_dir, "model directory to create (its parent must exist)")
      ->required();
  cmd->add_option("--seed", o.seed, "random seed; the same seed gives the same bytes")
      ->check(non_negative_integer())
      ->capture_default_str();
  cmd->add_option("--tokenizer", o.tokenizer_dir,
                  "copy tokenizer.json, tokenizer_config.json, special_tokens_map.json and "
                  "tokenizer.model (those present) from this directory");
  cmd->add_flag("--overwrite", o.overwrite, "replace an existing model directory at --out");
  cmd->callback([] { run_init(o); });
}

}  // namespace ssmtune
