// Every method config of configs/methods/ on Mamba-2: its "peft" section and learning rate on
// tests/fixtures/mamba2-tiny (data_scripts/make_mamba2_fixtures.py; 2 layers of 4 heads x 8,
// one group, vocabulary 64) with make_fixture_experiment's 12-token tokenizer and data. Every
// method is mapped to Mamba-2 (docs/methods.md section 10): each config trains 4 steps with
// finite losses and resumes from its step-2 checkpoint bit for bit, except those that name
// Mamba-1's modules, refused naming them. SDLoRA also resumes from a checkpoint inside its
// warmup.
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

// The configs that name Mamba-1-only modules (x_proj, dt_proj): configs/methods/<name>.json ->
// what the message must say.
const std::map<std::string, std::vector<std::string>> kRefusedOnMamba2 = {
    {"lora-slices", {"x_proj.B"}},
    {"lora-ssm", {"x_proj"}},
    {"partial-delta", {"dt_proj.bias"}},
};

ssmtune::TrainResult train_config(const json& cfg, const fs::path& file, bool resume) {
  std::ofstream(file) << cfg.dump(2);
  ssmtune::TrainOptions options;
  options.resume = resume;
  return ssmtune::train(ssmtune::load_experiment_config(file.string(), {}), options);
}

// Every file of a directory by name, with its bytes.
std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& f : fs::directory_iterator(dir)) out[f.path().filename()] = read_file(f.path());
  return out;
}

}  // namespace

TEST_CASE("every configs/methods config trains and resumes on Mamba-2 or is refused clearly",
          "[train][mamba2][methods][resume]") {
  const std::vector<fs::path> configs = ssmtune::test::method_configs();
  REQUIRE(configs.size() >= 19);
  TempDir dir;
  const fs::path train_file = ssmtune::test::make_fixture_experiment(dir.path(), "mamba2-tiny");
  for (const fs::path& method : configs) {
    const std::string name = method.stem().string();
    DYNAMIC_SECTION(name) {
      json cfg = ssmtune::test::method_experiment(method, dir.path(), train_file, 4);
      cfg["checkpoint"] = {{"every", 2}, {"keep", 2}};
      const fs::path whole = dir / ("run-" + name), resumed = dir / ("resumed-" + name);
      const auto refused = kRefusedOnMamba2.find(name);
      try {
        const ssmtune::TrainResult r = train_config(cfg, dir / (name + ".json"), false);
        CHECK(refused == kRefusedOnMamba2.end());
        CHECK(r.steps == 4);
        CHECK(std::isfinite(r.last_loss));
        CHECK(r.n_trainable > 0);
        // full fine-tuning writes the whole model instead of an adapter
        const std::string out = name == "full" ? "model" : "adapter";
        REQUIRE(fs::exists(whole / out));
        REQUIRE(fs::exists(whole / "checkpoint-2"));
        // As if killed after step 3: the run directory up to its step-2 checkpoint.
        fs::copy(whole, resumed, fs::copy_options::recursive);
        for (const std::string& later :
             {std::string("checkpoint-4"), out, std::string("summary.json")})
          fs::remove_all(resumed / later);
        cfg["output_dir"] = resumed.string();
        REQUIRE(train_config(cfg, dir / (name + "-resumed.json"), true).steps == 4);
        CHECK(files_of(resumed / out) == files_of(whole / out));
        CHECK(ssmtune::test::trajectory(resumed) == ssmtune::test::trajectory(whole));
      } catch (const ssmtune::UsageError& e) {
        INFO(e.what());
        REQUIRE(refused != kRefusedOnMamba2.end());
        for (const std::string& part : refused->second) CHECK_THAT(e.what(), Catch::Contains(part));
        CHECK(!fs::exists(whole / "adapter"));
      }
    }
  }
}

TEST_CASE("SDLoRA on Mamba-2 resumes bit-exactly from a warmup and a masked-phase checkpoint",
          "[train][mamba2][sdt][resume]") {
  TempDir dir;
  const fs::path train_file = ssmtune::test::make_fixture_experiment(dir.path(), "mamba2-tiny");
  const fs::path method = ssmtune::test::method_configs().front().parent_path() / "sdlora.json";
  // 6 steps: 3 of warmup, 3 masked; checkpoints at 2 (warmup) and 4 (masked).
  json cfg = ssmtune::test::method_experiment(method, dir.path(), train_file, 6);
  cfg["peft"]["sdt"]["warmup_steps"] = 3;
  cfg["peft"]["sdt"]["channel_freeze_fraction"] = 0.5;  // 2 of mamba2-tiny's 4 heads
  cfg["checkpoint"] = {{"every", 2}, {"keep", 3}};
  const fs::path whole = dir / "run-sdlora";
  REQUIRE(train_config(cfg, dir / "sdlora.json", false).steps == 6);
  const json selection = json::parse(read_file(whole / "sdt_selection.json"));
  REQUIRE(selection["layers"].size() == 2);
  for (const json& layer : selection["layers"]) {
    CHECK(layer["heads"].size() == 2);
    for (const json& states : layer["states"]) CHECK(states.size() == 2);  // 8 - round(6)
  }
  for (const int from : {2, 4}) {
    DYNAMIC_SECTION("from checkpoint-" << from) {
      const fs::path resumed = dir / ("resumed-" + std::to_string(from));
      fs::copy(whole, resumed, fs::copy_options::recursive);
      for (const auto& f : fs::directory_iterator(resumed)) {
        const std::string n = f.path().filename().string();
        const bool later_checkpoint =
            n.rfind("checkpoint-", 0) == 0 && std::stoi(n.substr(11)) > from;
        if (later_checkpoint || n == "adapter" || n == "summary.json" ||
            (from < 3 && n == "sdt_selection.json"))
          fs::remove_all(f.path());
      }
      cfg["output_dir"] = resumed.string();
      REQUIRE(train_config(cfg, dir / "resumed.json", true).steps == 6);
      CHECK(files_of(resumed / "adapter") == files_of(whole / "adapter"));
      CHECK(read_file(resumed / "sdt_selection.json") == read_file(whole / "sdt_selection.json"));
      CHECK(ssmtune::test::trajectory(resumed) == ssmtune::test::trajectory(whole));
    }
  }
}

TEST_CASE("LoRA on every Mamba-2 projection and slice trains, and the loss falls",
          "[train][mamba2][lora]") {
  TempDir dir;
  const fs::path train_file = ssmtune::test::make_fixture_experiment(dir.path(), "mamba2-tiny");
  const json cfg = {
      {"model", (dir / "model").string()},
      {"output_dir", (dir / "run").string()},
      {"seed", 3},
      {"data", {{"train", train_file.string()}, {"format", "tokens"}, {"max_length", 16}}},
      {"peft",
       {{"lora",
         {{"targets",
           {"in_proj.z", "in_proj.x", "in_proj.B", "in_proj.C", "in_proj.dt", "out_proj"}},
          {"rank", 2},
          {"alpha", 4}}}}},
      {"optimizer", {{"lr", 3e-2}}},
      {"training", {{"steps", 12}, {"batch_size", 8}}},
      {"checkpoint", {{"every", 0}}}};
  const ssmtune::TrainResult r = train_config(cfg, dir / "config.json", false);
  CHECK(r.steps == 12);
  const std::vector<json> lines = ssmtune::test::metrics_lines(dir / "run");
  double first = -1, last = -1;
  for (const json& l : lines)
    if (l.contains("loss")) (first < 0 ? first : last) = l["loss"].get<double>();
  INFO("first loss " << first << ", last " << last);
  // The same 8 sequences every step (one batch): 12 steps at lr 3e-2 fit them visibly.
  CHECK(last < first - 0.05);
}
