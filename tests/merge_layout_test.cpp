// merge-adapter keeps its base model's checkpoint layout (write_model_dir_as_base,
// lib/model/model_dir_as_base.h): the same files, each tensor in its file and its dtype, a valid
// index, unchanged tensors copied bit for bit, merged tensors rounded once to nearest even from
// the float32 merge, and the merged model computing what the adapter model computes up to that
// rounding. The bases are made here from the committed fixtures (merge_layout_check.h); the
// adapters are peft's (tests/fixtures/peft-lora*, data_scripts/make_peft_fixture.py,
// make_jamba_peft_fixture.py) or drawn here.
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "backend/backend.h"
#include "cli_run.h"
#include "data/tokenizer.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "io/safetensors_checkpoint.h"
#include "io_test_util.h"
#include "merge_layout_check.h"
#include "model/model_dir_as_base.h"
#include "peft/merge.h"
#include "peft/peft_model.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::testing::merge_check;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;
using ssmtune::test::q;
using nlohmann::json;

TEST_CASE("merge-adapter keeps a BF16 single-file base's layout and rounds each merged weight once",
          "[merge][layout]") {
  const Scratch x("mamba-tiny", 0, all_bf16);
  const fs::path &base = x.base, &out = x.out;
  const fs::path adapter = kFixtures / "peft-lora" / "adapter_init";  // random A and B
  const LoadedModel m = merge(base, adapter, out);
  check_layout(base, out);
  CHECK(config_of(out)["torch_dtype"] == "bfloat16");
  check_values(base, out, m, expected_merge(base, adapter));
  check_logits(base, adapter, out, "mamba-tiny");
}

TEST_CASE("merge-adapter keeps a sharded Jamba base's shards, per-tensor dtypes and index",
          "[merge][layout][jamba]") {
  const Scratch x("jamba-tiny", 3, bf16_but_ssm_f32);
  const fs::path &base = x.base, &out = x.out;
  // LoRA on every projection: Mamba, attention, the router and each expert's MLP.
  const fs::path adapter = kFixtures / "peft-lora-jamba" / "adapter_init";
  const LoadedModel m = merge(base, adapter, out);
  check_layout(base, out);
  CHECK(config_of(out)["torch_dtype"] == "bfloat16");
  CHECK(test::read_bytes(out / "generation_config.json") ==
        test::read_bytes(base / "generation_config.json"));
  check_values(base, out, m, expected_merge(base, adapter));
  check_logits(base, adapter, out, "jamba-tiny");
}

TEST_CASE("merge-adapter keeps the layout for rsLoRA and DoRA adapters", "[merge][layout][dora]") {
  const Scratch x("mamba-tiny", 2, bf16_but_ssm_f32);
  const fs::path &base = x.base, &adapter = x.adapter, &out = x.out;
  LoraConfig lc;
  lc.rank = 4;
  lc.alpha = 8;
  SECTION("rsLoRA") {
    lc.targets = {"in_proj", "x_proj", "dt_proj", "out_proj"};
    lc.rslora = true;
  }
  SECTION("DoRA") {
    lc.targets = {"in_proj", "out_proj"};
    lc.dora = true;
  }
  write_random_lora(adapter, base, lc, 17);
  const LoadedModel m = merge(base, adapter, out);
  check_layout(base, out);
  check_values(base, out, m, expected_merge(base, adapter));
  check_logits(base, adapter, out, "mamba-tiny");
}

TEST_CASE(
    "merge-adapter puts the lm_head that LoRA on a tied embedding unties beside the "
    "embedding",
    "[merge][layout]") {
  const Scratch x("mamba-tiny", 2, all_bf16);
  const fs::path &base = x.base, &adapter = x.adapter, &out = x.out;
  LoraConfig lc;
  lc.targets = {"embeddings", "out_proj"};
  lc.rank = 2;
  lc.alpha = 4;
  write_random_lora(adapter, base, lc, 23);
  const LoadedModel m = merge(base, adapter, out);
  REQUIRE(!m.cfg.tie_word_embeddings);
  CHECK(config_of(out)["tie_word_embeddings"] == false);
  const std::string embedding = "backbone.embeddings.weight";
  check_layout(base, out, {{"lm_head.weight", embedding}});
  // The head keeps the unmerged embedding: the base's bytes.
  const SafetensorsCheckpoint o = SafetensorsCheckpoint::open(out);
  CHECK(testing::same_bits(o.tensor("lm_head.weight"),
                           SafetensorsCheckpoint::open(base).tensor(embedding)));
  check_values(base, out, m, expected_merge(base, adapter));
  check_logits(base, adapter, out, "mamba-tiny");
}

TEST_CASE("merge-adapter keeps a stored tied lm_head and renames mamba_ssm's embedding",
          "[merge][layout]") {
  const Scratch x("mamba-tiny", 0, all_bf16);
  const fs::path model_file = x.base / "model.safetensors";
  const std::string embedding = "backbone.embeddings.weight";
  std::vector<NamedTensor> tensors;
  {
    const SafetensorsFile f = SafetensorsFile::open(model_file);
    for (const SafetensorsEntry& e : f.entries())
      tensors.push_back({e.name, f.tensor(e.name).clone()});
  }
  std::string stored_embedding = embedding;
  SECTION("a tied lm_head stored beside the embedding (equal to it) stays") {
    for (const NamedTensor& t : std::vector<NamedTensor>(tensors))
      if (t.name == embedding) tensors.push_back({"lm_head.weight", t.tensor});
  }
  SECTION("mamba_ssm's backbone.embedding.weight is written under HF's name") {
    stored_embedding = "backbone.embedding.weight";
    for (NamedTensor& t : tensors)
      if (t.name == embedding) t.name = stored_embedding;
  }
  write_safetensors(model_file, tensors);
  const fs::path adapter = kFixtures / "peft-lora" / "adapter_init";
  merge(x.base, adapter, x.out);
  const SafetensorsCheckpoint b = SafetensorsCheckpoint::open(x.base);
  const SafetensorsCheckpoint o = SafetensorsCheckpoint::open(x.out);
  std::vector<std::string> expected = b.names();
  std::replace(expected.begin(), expected.end(), stored_embedding, embedding);
  std::sort(expected.begin(), expected.end());
  CHECK(o.names() == expected);
  CHECK(testing::same_bits(o.tensor(embedding), b.tensor(stored_embedding)));
  if (b.contains("lm_head.weight"))
    CHECK(testing::same_bits(o.tensor("lm_head.weight"), b.tensor(embedding)));
}

TEST_CASE("merge-adapter writes parameter tuning's created biases beside their weights",
          "[merge][layout][partial]") {
  // mamba-odd: no conv bias, an untied lm_head stored, biases on in_proj and out_proj.
  const Scratch x("mamba-odd", 3, bf16_but_ssm_f32);
  const fs::path &base = x.base, &adapter = x.adapter, &out = x.out;
  const ModelConfig cfg = load_model_config(base.string());
  REQUIRE(!cfg.use_conv_bias);
  PeftConfig pc;
  pc.partial = PartialConfig{};
  pc.partial->tensors = {"D", "dt_proj.bias", "conv1d.bias", "layers.1.out_proj.bias"};
  std::unique_ptr<Backend> be = make_cpu_backend();
  ModelWeights w = load_model_weights(base.string(), cfg, DType::F32);
  PeftModel peft(cfg, w, pc, *be, 0);
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(-0.2f, 0.2f);
  for (TrainableParam& p : peft.trainables())
    for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data<float>()[i] += u(rng);
  peft.after_step();
  fs::create_directories(adapter);
  peft.save(adapter, base.string(), {});

  const LoadedModel m = merge(base, adapter, out);
  CHECK(config_of(out)["use_conv_bias"] == true);
  std::map<std::string, std::string> created;
  for (std::int64_t i = 0; i < cfg.n_layer; ++i) {
    const std::string conv = "backbone.layers." + std::to_string(i) + ".mixer.conv1d";
    created[conv + ".bias"] = conv + ".weight";
  }
  check_layout(base, out, created);
  // Each created bias is the trained value rounded once to its weight's dtype.
  const SafetensorsCheckpoint o = SafetensorsCheckpoint::open(out);
  for (std::int64_t i = 0; i < cfg.n_layer; ++i)
    CHECK(
        testing::same_bits(o.tensor("backbone.layers." + std::to_string(i) + ".mixer.conv1d.bias"),
                           m.weights.layers[std::size_t(i)].mamba.conv1d_bias.to(DType::BF16)));
  // The tuned tensors changed (D is F32 here, so exactly the float32 value), the rest did not.
  const SafetensorsCheckpoint b = SafetensorsCheckpoint::open(base);
  for (const std::string& n : b.names()) {
    INFO(n);
    const bool tuned = n.ends_with(".D") || n.ends_with("dt_proj.bias") ||
                       n == "backbone.layers.1.mixer.out_proj.bias";
    CHECK(testing::same_bits(o.tensor(n), b.tensor(n)) == !tuned);
  }
  CHECK(testing::same_bits(o.tensor("backbone.layers.0.mixer.D"), m.weights.layers[0].mamba.D));

  const Tensor ids = reference_ids("mamba-odd");
  const Tensor tuned = logits_of(cfg, peft.weights(), *be, ids, nullptr);
  testing::require_close("merged logits", plain_logits(out, *be, ids), tuned,
                         bf16_logits_rel("mamba-odd", base, *be), 0);
}

TEST_CASE("ssmtune merge-adapter writes what the library writes, tokenizer files included",
          "[merge][layout][cli]") {
  const Scratch x("jamba-tiny", 3, all_bf16);
  const fs::path& base = x.base;
  const TempDir& tmp = x.tmp;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kFixtures / "tokenizers" / "bpe" / f, base / f);
  const fs::path adapter = kFixtures / "peft-lora-jamba" / "adapter_init";
  const auto r = run_cli("--quiet merge-adapter --model " + q(base) + " --adapter " + q(adapter) +
                         " --out " + q(tmp / "cli"));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);

  std::unique_ptr<Backend> be = make_cpu_backend();
  const LoadedModel m = load_model_with_adapter(base.string(), adapter.string(), *be);
  std::vector<fs::path> extra = tokenizer_files_in(base);
  extra.push_back(base / "generation_config.json");
  write_model_dir_as_base((tmp / "lib").string(), base.string(), m.cfg, m.weights, false, extra);
  CHECK(files_in(tmp / "cli") == files_in(base));
  for (const std::string& f : files_in(tmp / "lib")) {
    INFO(f);
    CHECK(test::read_bytes(tmp / "cli" / f) == test::read_bytes(tmp / "lib" / f));
  }
  CHECK(run_cli("info " + q(tmp / "cli")).exit_code == 0);
}

TEST_CASE("merge-adapter names the file and the tensor when a sharded base is inconsistent",
          "[merge][layout][cli][bad-input]") {
  const Scratch x("mamba-tiny", 3, all_bf16);
  const fs::path &base = x.base, &out = x.out;
  const fs::path adapter = kFixtures / "peft-lora" / "adapter_init";
  const fs::path index_path = base / "model.safetensors.index.json";
  json index = read_json_file(index_path);
  const std::string shard2 = "model-00002-of-00003.safetensors";
  std::string in_shard2;  // the first tensor of shard 2
  for (const auto& [name, file] : index["weight_map"].items())
    if (file == shard2 && in_shard2.empty()) in_shard2 = name;
  REQUIRE(!in_shard2.empty());

  std::vector<std::string> fragments;
  SECTION("a shard the index names is missing") {
    fs::remove(base / shard2);
    fragments = {index_path.string(), "shard \"" + shard2 + "\"", "does not exist"};
  }
  SECTION("the index maps a tensor to a shard that lacks it") {
    index["weight_map"][in_shard2] = "model-00001-of-00003.safetensors";
    std::ofstream(index_path) << index.dump(2);
    fragments = {index_path.string(), "tensor \"" + in_shard2 + "\"", "no such tensor"};
  }
  SECTION("a tensor is in no shard and not in the index") {
    const SafetensorsFile shard = SafetensorsFile::open(base / shard2);
    std::vector<NamedTensor> kept;
    for (const SafetensorsEntry& e : shard.entries())
      if (e.name != in_shard2) kept.push_back({e.name, shard.tensor(e.name).clone()});
    write_safetensors(base / shard2, kept);
    index["weight_map"].erase(in_shard2);
    std::ofstream(index_path) << index.dump(2);
    fragments = {index_path.string() + ": missing tensor \"" + in_shard2 + "\""};
  }
  const auto r =
      run_cli("merge-adapter --model " + q(base) + " --adapter " + q(adapter) + " --out " + q(out));
  INFO(r.output);
  CHECK(r.exit_code == 1);
  for (const std::string& f : fragments) CHECK_THAT(r.output, Catch::Contains(f));
  CHECK(files_in(x.tmp.path()) == std::set<std::string>{"base"});  // no output, no temporary
}
