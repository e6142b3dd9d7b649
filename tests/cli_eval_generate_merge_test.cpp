// ssmtune eval, generate and merge-adapter through the binary, on a run trained by ssmtune
// train: the adapter applied and the adapter merged give the same loss and the same text; the
// merged directory is a complete model directory; bad adapters and options are clear errors.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;
using ssmtune::test::q;

namespace {

// The JSON line `ssmtune eval --json` prints.
nlohmann::json eval_json(const std::string& args) {
  const auto r = run_cli("--quiet eval --json " + args);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.output);
}

}  // namespace

TEST_CASE("eval, merge-adapter and generate agree on a trained adapter", "[cli][eval][merge]") {
  Experiment e;
  REQUIRE(run_cli(e.train_args()).exit_code == 0);
  const fs::path model = e.dir / "model", adapter = e.run_dir() / "adapter";
  const fs::path data = e.dir / "eval.jsonl", merged = e.dir / "merged";

  const auto with_adapter = eval_json("--model " + q(model) + " --adapter " + q(adapter) +
                                      " --data " + q(data) + " --metrics loss,perplexity");
  const auto base = eval_json("--model " + q(model) + " --data " + q(data));
  const double loss = with_adapter["metrics"]["loss"];
  CHECK(with_adapter["examples"] == 6);
  CHECK(with_adapter["metrics"]["perplexity"].get<double>() == Approx(std::exp(loss)));
  CHECK(base["metrics"]["loss"].get<double>() != Approx(loss));  // the adapter changed something
  // The config's own eval set, on what the run produced (run/adapter found by itself).
  CHECK(eval_json(q(e.config))["metrics"]["loss"].get<double>() == Approx(loss).epsilon(1e-12));

  const auto m = run_cli("--quiet merge-adapter --model " + q(model) + " --adapter " + q(adapter) +
                         " --out " + q(merged));
  INFO(m.output);
  REQUIRE(m.exit_code == 0);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    CHECK(fs::exists(merged / f));
  // float32: merging rounds W + sBA once per weight; the loss is a mean over ~20 tokens.
  CHECK(eval_json("--model " + q(merged) + " --data " + q(data))["metrics"]["loss"].get<double>() ==
        Approx(loss).epsilon(1e-5));
  CHECK(run_cli("info " + q(merged)).exit_code == 0);
  const auto info = run_cli("info " + q(adapter));
  CHECK(info.exit_code == 0);
  CHECK_THAT(info.output, Catch::Contains("LoRA, rank 2") && Catch::Contains("layers.1.x_proj.B"));

  // An existing output is refused unless --overwrite.
  const auto again = run_cli("merge-adapter --model " + q(model) + " --adapter " + q(adapter) +
                             " --out " + q(merged));
  CHECK(again.exit_code == 2);
  CHECK_THAT(again.output, Catch::Contains("already exists") || Catch::Contains("exists"));
  CHECK(run_cli("--quiet merge-adapter --model " + q(model) + " --adapter " + q(adapter) +
                " --out " + q(merged) + " --overwrite")
            .exit_code == 0);

  // Greedy generation: the adapter applied = the merged model; sampling repeats with its seed.
  const std::string prompt = " --prompt 'Say alpha' --max-new-tokens 6";
  const auto g1 =
      run_cli("--quiet generate --model " + q(model) + " --adapter " + q(adapter) + prompt);
  const auto g2 = run_cli("--quiet generate --model " + q(merged) + prompt);
  REQUIRE(g1.exit_code == 0);
  CHECK(g1.output == g2.output);
  CHECK_THAT(g1.output, Catch::StartsWith("Say alpha"));
  const std::string sampled = " --temperature 1.0 --top-k 50 --seed 3";
  CHECK(run_cli("--quiet generate --model " + q(merged) + prompt + sampled).output ==
        run_cli("--quiet generate --model " + q(merged) + prompt + sampled).output);
}

TEST_CASE("eval scores classification by restricted-vocabulary argmax", "[cli][eval]") {
  Experiment e;
  std::ofstream data(e.dir / "cls.jsonl");
  for (int i = 0; i < 8; ++i)
    data << nlohmann::json{{"prompt", "Item " + std::to_string(i) + " is"},
                           {"label", i % 2 ? "red" : "blue"}}
                .dump()
         << "\n";
  data.close();
  const auto r = eval_json("--model " + q(e.dir / "model") + " --data " + q(e.dir / "cls.jsonl") +
                           " --metrics loss,accuracy");
  const double acc = r["metrics"]["accuracy"];
  CHECK(acc >= 0.0);
  CHECK(acc <= 1.0);
  // Half the labels are "red": an accuracy is a multiple of 1/8.
  CHECK(acc * 8 == Approx(std::round(acc * 8)));
  const auto bad = run_cli("eval --model " + q(e.dir / "model") + " --data " +
                           q(e.dir / "eval.jsonl") + " --metrics accuracy");
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, Catch::Contains("classification"));
}

TEST_CASE("eval, generate and merge-adapter refuse bad adapters and options clearly",
          "[cli][bad-input]") {
  Experiment e;
  const fs::path model = e.dir / "model";
  SECTION("missing adapter directory") {
    const auto r = run_cli("eval --model " + q(model) + " --adapter " + q(e.dir / "nope") +
                           " --data " + q(e.dir / "eval.jsonl"));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("nope: not an adapter directory"));
  }
  SECTION("adapter trained for another model") {
    const fs::path other = fs::path(SSMTUNE_FIXTURES_DIR) / "peft-lora" / "adapter_init";
    const auto r = run_cli("merge-adapter --model " + q(model) + " --adapter " + q(other) +
                           " --out " + q(e.dir / "m"));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output,
               Catch::Contains("adapter_model.safetensors") && Catch::Contains("expected shape"));
    CHECK(!fs::exists(e.dir / "m"));
  }
  SECTION("an adapter type ssmtune does not read") {
    fs::create_directories(e.dir / "prefix");
    std::ofstream(e.dir / "prefix" / "adapter_config.json") << R"({"peft_type": "PREFIX_TUNING"})";
    const auto r = run_cli("generate --model " + q(model) + " --adapter " + q(e.dir / "prefix") +
                           " --prompt hi");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("peft_type") && Catch::Contains("LORA"));
  }
  SECTION("sampling options out of range") {
    const auto r = run_cli("generate --model " + q(model) + " --prompt hi --top-p 0");
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("top_p") || Catch::Contains("top-p"));
  }
}

TEST_CASE("a model with a SentencePiece tokenizer trains, evaluates, merges and generates",
          "[cli][sentencepiece]") {
  Experiment e(6, 0, 3, "sp");
  REQUIRE(fs::exists(e.dir / "model" / "tokenizer.model"));
  const auto r = run_cli(e.train_args());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const fs::path model = e.dir / "model", adapter = e.run_dir() / "adapter";
  const double loss = eval_json("--model " + q(model) + " --adapter " + q(adapter) + " --data " +
                                q(e.dir / "eval.jsonl"))["metrics"]["loss"];
  REQUIRE(run_cli("--quiet merge-adapter --model " + q(model) + " --adapter " + q(adapter) +
                  " --out " + q(e.dir / "merged"))
              .exit_code == 0);
  CHECK(fs::exists(e.dir / "merged" / "tokenizer.model"));  // the tokenizer travels with it
  CHECK(eval_json("--model " + q(e.dir / "merged") + " --data " +
                  q(e.dir / "eval.jsonl"))["metrics"]["loss"]
            .get<double>() == Approx(loss).epsilon(1e-5));
  const auto g = run_cli("--quiet generate --model " + q(e.dir / "merged") +
                         " --prompt 'Say alpha' --max-new-tokens 4");
  CHECK(g.exit_code == 0);
  CHECK_THAT(g.output, Catch::StartsWith("Say alpha"));
}
