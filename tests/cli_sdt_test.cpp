// SDLoRA (SDT + LoRA, docs/methods.md section 3) through the binary: one `ssmtune train` runs the
// warmup, the selection (printed, and written to sdt_selection.json), the reset and the masked
// training; a run killed in either phase resumes bit-exactly; the adapter holds the masks and
// merges exactly (eval of the adapter = eval of the merged model). The experiment is
// train_experiment_fixture.h's, with SDT added to its LoRA.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "io_test_util.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::read_file;
using ssmtune::test::run_cli;
using ssmtune::test::trajectory;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// 12 steps: 5 of warmup, 7 of masked training; checkpoints every 3.
struct SdloraExperiment : Experiment {
  SdloraExperiment() : Experiment(12, 3, 4) {
    json cfg = json::parse(read_file(config));
    cfg["peft"]["sdt"] = {
        {"warmup_steps", 5}, {"channel_freeze_fraction", 0.9}, {"state_freeze_fraction", 0.5}};
    cfg["peft"]["partial"] = {{"tensors", {"D"}}, {"mode", "delta"}};
    std::ofstream(config) << cfg.dump(2);
  }
};

}  // namespace

TEST_CASE("SDLoRA runs warmup, selection and masked training in one train command", "[cli][sdt]") {
  SdloraExperiment e;
  const auto r = run_cli("train '" + e.config.string() + "'");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  // The plan, the selection per layer, and the masked phase's count are printed.
  CHECK_THAT(r.output, Catch::Contains("sdt warmup: dense delta on A_log, 1024 parameters"));
  CHECK_THAT(r.output, Catch::Contains("sdt: warmup done; selected per layer"));
  CHECK_THAT(r.output, Catch::Contains("layer 1: "));
  // d_inner 64, d_state 8: 6 channels (64 - round(57.6)), 4 states; per layer 6*4 + 2*6*8.
  CHECK_THAT(r.output, Catch::Contains("sdt: masked A_log, x_proj.B, x_proj.C, 240 parameters"));
  const json sel = json::parse(read_file(e.run_dir() / "sdt_selection.json"));
  REQUIRE(sel["layers"].size() == 2);
  for (const json& layer : sel["layers"]) {
    CHECK(layer["channels"].size() == 6);
    for (const json& states : layer["states"]) CHECK(states.size() == 4);
  }
  // The summary counts what trained last and what trained first: LoRA rank 2 on in_proj,
  // x_proj.B, out_proj (2 layers x (2 (32 + 128) + 2 (64 + 8) + 2 (64 + 32)) = 1312), the D
  // deltas (2 x 64), and SDT's warmup delta (2 x 64 x 8) or its masks (2 x 120).
  const json summary = json::parse(read_file(e.run_dir() / "summary.json"));
  CHECK(summary["trainable_parameters_at_start"] == 1312 + 128 + 1024);
  CHECK(summary["trainable_parameters"] == 1312 + 128 + 240);
  const fs::path adapter = e.run_dir() / "adapter";
  REQUIRE(fs::exists(adapter / "ssmtune_params.safetensors"));
  REQUIRE(fs::exists(adapter / "adapter_model.safetensors"));

  const auto info = run_cli("info '" + adapter.string() + "'");
  CHECK(info.exit_code == 0);
  CHECK_THAT(info.output, Catch::Contains("\"phase\":\"train\""));
  CHECK_THAT(info.output, Catch::Contains("sdt.layers.1.x_proj.C"));

  // The adapter merges exactly: eval with it and eval of the merged model agree.
  const fs::path merged = e.dir / "merged";
  REQUIRE(run_cli("merge-adapter --model '" + (e.dir / "model").string() + "' --adapter '" +
                  adapter.string() + "' --out '" + merged.string() + "'")
              .exit_code == 0);
  const std::string data = (e.dir / "eval.jsonl").string();
  const auto with_adapter = run_cli("eval --model '" + (e.dir / "model").string() +
                                    "' --adapter '" + adapter.string() + "' --data '" + data + "'");
  const auto with_merged = run_cli("eval --model '" + merged.string() + "' --data '" + data + "'");
  REQUIRE(with_adapter.exit_code == 0);
  REQUIRE(with_merged.exit_code == 0);
  const auto loss_line = [](const std::string& out) {
    const std::size_t at = out.find("loss");
    return out.substr(at, out.find('\n', at) - at);
  };
  CHECK(loss_line(with_adapter.output) == loss_line(with_merged.output));
}

TEST_CASE("an SDLoRA run killed in either phase resumes bit-exactly", "[cli][sdt][resume]") {
  SdloraExperiment straight;
  REQUIRE(run_cli(straight.train_args()).exit_code == 0);
  for (const int kill_step : {4, 8}) {  // warmup (checkpoint 3), masked training (checkpoint 6)
    DYNAMIC_SECTION("SIGKILL after step " << kill_step) {
      SdloraExperiment killed;
      const auto r = run_cli(killed.train_args(),
                             "SSMTUNE_FAULT_KILL_AFTER_STEP=" + std::to_string(kill_step));
      REQUIRE((r.exit_code == -1 || r.exit_code == 137));
      const auto resumed = run_cli(killed.train_args("--resume"));
      INFO(resumed.output);
      REQUIRE(resumed.exit_code == 0);
      for (const char* f : {"adapter/adapter_model.safetensors",
                            "adapter/ssmtune_params.safetensors", "sdt_selection.json"})
        CHECK(read_file(killed.run_dir() / f) == read_file(straight.run_dir() / f));
      CHECK(trajectory(killed.run_dir()) == trajectory(straight.run_dir()));
    }
  }
}
