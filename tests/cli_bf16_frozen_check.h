// training.frozen_weights / --frozen-weights through the binary on a CLI experiment
// (train_experiment_fixture.h): a LoRA run with its frozen base rounded to bf16 trains, and eval
// and generate take the setting from the config or the flag. What cli_bf16_frozen_test.cpp
// (Mamba) and cli_mamba2_test.cpp share.
#pragma once

#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_run.h"
#include "train_experiment_fixture.h"

namespace ssmtune::test {

// The loss `ssmtune eval --json ARGS` prints.
inline double eval_loss(const std::string& args) {
  const auto r = run_cli("--quiet eval --json " + args);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.output)["metrics"]["loss"].get<double>();
}

// Trains e's config with training.frozen_weights=bf16 and checks eval and generate on the run.
inline void check_frozen_bf16_run(const Experiment& e) {
  namespace fs = std::filesystem;
  const std::string bf16 = " --set training.frozen_weights=bf16";
  const auto t = run_cli("train " + q(e.config) + bf16);
  INFO(t.output);
  REQUIRE(t.exit_code == 0);
  CHECK_THAT(t.output, Catch::Contains("frozen weights bf16"));
  double run_eval = 0;  // the run's last eval: LoRA beside the bf16 base, as trained
  for (const nlohmann::json& line : metrics_lines(e.run_dir()))
    if (line.contains("eval")) run_eval = line["eval"]["loss"];
  REQUIRE(run_eval > 0);

  const fs::path model = e.dir / "model", adapter = e.run_dir() / "adapter";
  const std::string data = " --data " + q(e.dir / "eval.jsonl");
  // eval CONFIG takes the config's setting and runs what training ran: the same numbers.
  const double from_config = eval_loss(q(e.config) + bf16);
  CHECK(from_config == Approx(run_eval).epsilon(1e-12));
  // The flag, with --model/--adapter: the same again.
  CHECK(eval_loss("--model " + q(model) + " --adapter " + q(adapter) + data +
                  " --frozen-weights bf16") == Approx(from_config).epsilon(1e-12));
  // fp32 (the flag overrides the config): the unrounded base, a nearby but different loss. The
  // fixture's weights move by up to 2^-9 relative when rounded; the mean loss of ~20 tokens by
  // far less than 1%.
  const double fp32 = eval_loss(q(e.config) + bf16 + " --frozen-weights fp32");
  CHECK(fp32 != from_config);
  CHECK(fp32 == Approx(from_config).epsilon(1e-2));

  const auto g = run_cli("--quiet generate --model " + q(model) + " --adapter " + q(adapter) +
                         " --frozen-weights bf16 --prompt 'Say alpha' --max-new-tokens 4");
  INFO(g.output);
  CHECK(g.exit_code == 0);
  CHECK_THAT(g.output, Catch::StartsWith("Say alpha"));
}

}  // namespace ssmtune::test
