// Every method config of configs/methods/ trains on Jamba: its "peft" section and learning rate
// on tests/fixtures/jamba-tiny (data_scripts/make_jamba_fixtures.py; 4 layers, attention at 1
// and 3, vocabulary 64) for 2 steps of batches of 2, or is refused with a message naming the
// method. The configs point at the quickstart model and data, whose vocabulary the fixture
// does not have: the model directory here is the fixture with the 12-token tokenizer of
// tests/fixtures/tokenizers/tiny_unk (prompt tuning's init_text encodes with it), and the data
// are pre-tokenized sequences with ids below 12.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io_test_util.h"
#include "train/experiment_config.h"
#include "train/trainer.h"
#include "train_experiment_fixture.h"

namespace fs = std::filesystem;
using nlohmann::json;
using ssmtune::test::read_file;
using ssmtune::test::TempDir;

namespace {

// configs/methods/<name>.json that Jamba refuses, with what the message must name. None today:
// every method acts on Jamba (docs/methods.md section 10).
const std::map<std::string, std::string> kRefusedOnJamba = {};

}  // namespace

TEST_CASE("every configs/methods config trains 2 steps on Jamba or is refused naming the method",
          "[train][jamba][methods][sdt][state]") {
  const std::vector<fs::path> configs = ssmtune::test::method_configs();
  REQUIRE(configs.size() >= 19);
  TempDir dir;
  const fs::path train_file = ssmtune::test::make_fixture_experiment(dir.path(), "jamba-tiny");
  for (const fs::path& method : configs) {
    const std::string name = method.stem().string();
    DYNAMIC_SECTION(name) {
      const json cfg = ssmtune::test::method_experiment(method, dir.path(), train_file);
      const fs::path config = dir / (name + ".json");
      std::ofstream(config) << cfg.dump(2);
      const auto refused = kRefusedOnJamba.find(name);
      try {
        const ssmtune::TrainResult r =
            ssmtune::train(ssmtune::load_experiment_config(config.string(), {}), {});
        CHECK(refused == kRefusedOnJamba.end());
        CHECK(r.steps == 2);
        CHECK(std::isfinite(r.last_loss));
        CHECK(r.n_trainable > 0);
        // full fine-tuning writes the whole model instead of an adapter
        CHECK(fs::exists(dir / ("run-" + name) / (name == "full" ? "model" : "adapter")));
        if (cfg["peft"].contains("sdt")) {  // selected on the Mamba layers 0 and 2 only
          const json sel = json::parse(read_file(dir / ("run-" + name) / "sdt_selection.json"));
          REQUIRE(sel["layers"].size() == 2);
          CHECK(sel["layers"][0]["layer"] == 0);
          CHECK(sel["layers"][1]["layer"] == 2);
        }
      } catch (const ssmtune::UsageError& e) {
        INFO(e.what());
        REQUIRE(refused != kRefusedOnJamba.end());
        CHECK_THAT(e.what(), Catch::Contains(refused->second));
      }
    }
  }
}

TEST_CASE("LoRA on every Jamba projection (experts included) checkpoints and resumes bit-exactly",
          "[train][jamba][resume]") {
  // An MoE layer has a gate_proj per expert: each needs its own optimizer state in a checkpoint.
  TempDir dir;
  const fs::path train_file = ssmtune::test::make_fixture_experiment(dir.path(), "jamba-tiny");
  const json cfg = {
      {"model", (dir / "model").string()},
      {"seed", 3},
      {"data", {{"train", train_file.string()}, {"format", "tokens"}, {"max_length", 16}}},
      {"peft",
       {{"lora",
         {{"targets", {"in_proj", "x_proj", "dt_proj", "out_proj", "q_proj", "k_proj", "v_proj",
                       "o_proj", "router", "gate_proj", "up_proj", "down_proj"}},
          {"rank", 2},
          {"alpha", 4},
          {"dropout", 0.1}}}}},
      {"optimizer", {{"lr", 1e-2}}},
      {"training", {{"steps", 4}, {"batch_size", 2}}},
      {"checkpoint", {{"every", 2}, {"keep", 2}}}};
  const auto train_into = [&](const fs::path& out, bool resume) {
    json c = cfg;
    c["output_dir"] = out.string();
    std::ofstream(dir / "config.json") << c.dump(2);
    ssmtune::TrainOptions options;
    options.resume = resume;
    return ssmtune::train(ssmtune::load_experiment_config((dir / "config.json").string(), {}),
                          options);
  };
  const fs::path whole = dir / "whole", resumed = dir / "resumed";
  REQUIRE(train_into(whole, false).steps == 4);
  REQUIRE(fs::exists(whole / "checkpoint-2"));
  // As if killed after step 3: the run directory up to its step-2 checkpoint.
  fs::copy(whole, resumed, fs::copy_options::recursive);
  for (const char* later : {"checkpoint-4", "adapter", "summary.json"})
    fs::remove_all(resumed / later);
  REQUIRE(train_into(resumed, true).steps == 4);
  CHECK(read_file(resumed / "adapter" / "adapter_model.safetensors") ==
        read_file(whole / "adapter" / "adapter_model.safetensors"));
  CHECK(ssmtune::test::trajectory(resumed) == ssmtune::test::trajectory(whole));
}
