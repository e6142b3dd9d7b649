// Mamba-2 through the binary, end to end: `ssmtune init` from a Mamba-2 SIZES.json (with
// Python's Infinity in time_step_limit, as transformers writes Mamba2Config's default), info,
// a short LoRA run on train_experiment_fixture.h's data and byte-level BPE tokenizer, eval,
// merge-adapter (the merged directory loads back with the adapter model's logits), generate,
// bench, and the frozen base held in bf16. No fixture: the sizes are below.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "cli_bf16_frozen_check.h"
#include "init_test_util.h"
#include "io/json_file.h"
#include "model/causal_lm.h"
#include "model/model_init.h"
#include "peft/lora_adapter_io.h"
#include "test_compare.h"
#include "train_experiment_fixture.h"

using ssmtune::test::eval_loss;
using ssmtune::test::Experiment;
using ssmtune::test::q;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// 2 layers of 4 heads x 8 (d_inner 32 = expand 2 x 16), one group, d_state 8, chunks of 8, tied,
// the vocabulary of the BPE fixture; time_step_limit as Mamba2Config's default (0, inf).
const char* const kSizes = R"({"model_type": "mamba2", "vocab_size": 1024, "hidden_size": 16,
  "num_hidden_layers": 2, "num_heads": 4, "head_dim": 8, "n_groups": 1, "state_size": 8,
  "conv_kernel": 4, "chunk_size": 8, "tie_word_embeddings": true,
  "time_step_limit": [0.0, Infinity]})";

// The Experiment with its Mamba-1 model replaced by `ssmtune init` of kSizes (seed 1, the
// experiment's tokenizer) and LoRA on Mamba-2's projections.
void use_mamba2_model(const Experiment& e) {
  const fs::path model = e.dir / "model", sizes = e.dir / "sizes.json";
  ssmtune::test::write_bytes(sizes, kSizes);
  const fs::path tok = fs::path(SSMTUNE_FIXTURES_DIR) / "tokenizers" / "bpe";
  fs::remove_all(model);
  const auto r =
      run_cli("init " + q(sizes) + " --out " + q(model) + " --seed 1 --tokenizer " + q(tok));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  json cfg = json::parse(ssmtune::test::read_file(e.config));
  cfg["peft"]["lora"]["targets"] = {"in_proj", "out_proj"};
  std::ofstream(e.config) << cfg.dump(2);
}

// Per layer: in_proj 16 x (2 x 32 + 2 x 8 + 4) = 1,344, conv1d 48 x 4 + 48, dt_bias, A_log, D
// 4 each, gated norm 32, out_proj 512, norm 16: 2,156. Embedding 16,384 (tied), norm_f 16.
constexpr const char* kParams = "20,712";

}  // namespace

TEST_CASE("ssmtune init and info on a Mamba-2 SIZES.json", "[cli][init][mamba2]") {
  ssmtune::test::TempDir tmp;
  ssmtune::test::write_bytes(tmp / "sizes.json", kSizes);
  const auto r = run_cli("init " + q(tmp / "sizes.json") + " --out " + q(tmp / "m") + " --seed 4");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("4 heads x 8, n_groups 1, d_inner 32, d_state 8"));
  CHECK_THAT(r.output, Catch::Contains(std::string(kParams) + " parameters"));
  const ssmtune::ModelConfig c = ssmtune::load_model_config((tmp / "m").string());
  CHECK(c.is_mamba2());
  CHECK(ssmtune::model_param_count(c) == 20'712);
  CHECK(std::isinf(c.time_step_limit_max));
  // The binary draws exactly what the library draws for that seed.
  ssmtune::ModelWeights expected = ssmtune::init_model_weights(c, 4);
  ssmtune::ModelWeights loaded = ssmtune::load_model_weights((tmp / "m").string(), c);
  ssmtune::test::check_same_tensors(c, expected, loaded);
  const auto info = run_cli("info " + q(tmp / "m"));
  INFO(info.output);
  REQUIRE(info.exit_code == 0);
  CHECK_THAT(info.output, Catch::Contains("Mamba2ForCausalLM (mamba2), 2 layers"));
  CHECK_THAT(info.output, Catch::Contains("d_inner 32 = 4 heads x 8, n_groups 1"));
  // The per-module table names Mamba-2's tensors and sums to the total.
  for (const char* module :
       {"in_proj", "conv1d", "dt_bias", "A_log", "mixer.D", "mixer.norm", "out_proj", "norm_f"})
    CHECK_THAT(info.output, Catch::Contains(module));
  CHECK_THAT(info.output, Catch::Contains("1,344") && Catch::Contains("2,688"));
  CHECK_THAT(info.output, Catch::Contains(kParams));
}

TEST_CASE("a Mamba-2 model trains, evaluates, merges, generates and benches through the CLI",
          "[cli][train][eval][merge][generate][mamba2]") {
  Experiment e(6, 3, 3);
  use_mamba2_model(e);
  const auto t = run_cli(e.train_args());
  INFO(t.output);
  REQUIRE(t.exit_code == 0);
  const fs::path model = e.dir / "model", adapter = e.run_dir() / "adapter";
  const fs::path merged = e.dir / "merged";
  const std::string data = " --data " + q(e.dir / "eval.jsonl");
  const double loss = eval_loss("--model " + q(model) + " --adapter " + q(adapter) + data);
  CHECK(eval_loss("--model " + q(model) + data) != Approx(loss));  // the adapter acts
  CHECK(eval_loss(q(e.config)) == Approx(loss).epsilon(1e-12));

  const auto m = run_cli("--quiet merge-adapter --model " + q(model) + " --adapter " + q(adapter) +
                         " --out " + q(merged));
  INFO(m.output);
  REQUIRE(m.exit_code == 0);
  // float32: merging rounds W + sBA once per weight; the loss is a mean over ~20 tokens.
  CHECK(eval_loss("--model " + q(merged) + data) == Approx(loss).epsilon(1e-5));
  CHECK(run_cli("info " + q(merged)).exit_code == 0);
  {  // The merged directory loads back (Infinity in its config.json) with the adapter's logits.
    using namespace ssmtune;
    const ModelConfig cfg = load_model_config(model.string());
    const ModelConfig merged_cfg = load_model_config(merged.string());
    CHECK(merged_cfg.is_mamba2());
    CHECK(std::isinf(merged_cfg.time_step_limit_max));
    const ModelWeights w = load_model_weights(model.string(), cfg, DType::F32);
    const ModelWeights mw = load_model_weights(merged.string(), merged_cfg, DType::F32);
    auto be = make_cpu_backend();
    const auto lora = read_lora_adapter(adapter, cfg, DType::F32, *be);
    Tensor ids = Tensor::empty({2, 9}, DType::I64);
    for (std::int64_t i = 0; i < ids.numel(); ++i) ids.data<std::int64_t>()[i] = (i * 37) % 1024;
    CausalLM with_adapter(cfg, w, *be), plain(merged_cfg, mw, *be);
    with_adapter.set_hook(lora.get());
    with_adapter.forward(ids);
    plain.forward(ids);
    // float32: W + sBA rounded once per weight, then sums over d_inner 32 and 2 layers.
    testing::require_close("merged logits", plain.logits(), with_adapter.logits(), 1e-5, 1e-6);
  }

  // Greedy generation: the adapter applied = the merged model.
  const std::string prompt = " --prompt 'Say alpha' --max-new-tokens 6";
  const auto g1 =
      run_cli("--quiet generate --model " + q(model) + " --adapter " + q(adapter) + prompt);
  const auto g2 = run_cli("--quiet generate --model " + q(merged) + prompt);
  INFO(g1.output);
  REQUIRE(g1.exit_code == 0);
  CHECK(g1.output == g2.output);
  CHECK_THAT(g1.output, Catch::StartsWith("Say alpha"));

  const std::string bench = " --batch 1 --seq-len 8 --steps 1 --warmup 0";
  for (const std::string& what : {"--model " + q(model), "--config " + q(e.dir / "sizes.json")})
    for (const std::string frozen : {"", " --frozen-weights bf16"}) {
      const auto b = run_cli("bench " + what + bench + frozen);
      INFO(b.output);
      CHECK(b.exit_code == 0);
      CHECK_THAT(b.output, Catch::Contains("tokens/s") && Catch::Contains("Mamba-2"));
      if (!frozen.empty()) CHECK_THAT(b.output, Catch::Contains("base frozen in bf16"));
      // The SSD table (cmd_bench.cpp ssd_cost_per_token) at H 4, P 8, G 1, N 8, chunk 8:
      // forward bytes 4 (2*32 + 4 + 2*8 + 32*8/8 + 2*8) = 528, FLOPs 8*8 + 4*8*8 + 4*256 = 1344.
      CHECK_THAT(b.output, Catch::Matches(R"([\s\S]*\nforward +528 +1344 [\s\S]*)"));
      CHECK_THAT(b.output, Catch::Matches(R"([\s\S]*\nbackward +1184 +2688 [\s\S]*)"));
    }
}

TEST_CASE("a Mamba-2 model trains, evaluates and generates with its frozen weights in bf16",
          "[cli][train][eval][generate][bf16-frozen][mamba2]") {
  Experiment e(6, 3, 3);
  use_mamba2_model(e);
  ssmtune::test::check_frozen_bf16_run(e);
}
