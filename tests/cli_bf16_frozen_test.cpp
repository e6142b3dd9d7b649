// training.frozen_weights / --frozen-weights through the binary (model/weight_storage.h,
// docs/config.md): a LoRA run on the CLI fixture experiment (train_experiment_fixture.h, fp32
// weights rounded to bf16 on load) trains, eval and generate take the setting from the config or
// the flag, and the combinations that cannot work are refused.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::metrics_lines;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;

namespace {

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

double eval_loss(const std::string& args) {
  const auto r = run_cli("--quiet eval --json " + args);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.output)["metrics"]["loss"].get<double>();
}

}  // namespace

TEST_CASE("train, eval and generate hold the frozen weights in bf16 when asked",
          "[cli][train][eval][generate][bf16-frozen]") {
  Experiment e(6, 3, 3);
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

TEST_CASE("frozen-weights settings that cannot work are refused clearly",
          "[cli][bad-input][bf16-frozen]") {
  Experiment e(2, 0, 0);
  SECTION("full fine-tuning: no base tensor is frozen") {
    const auto r = run_cli("train " + q(e.config) +
                           " --set peft.full=true --set training.frozen_weights=bf16");
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("peft.full trains every base tensor"));
    CHECK(!fs::exists(e.run_dir()));
  }
  SECTION("an unknown storage") {
    const auto r = run_cli("train " + q(e.config) + " --set training.frozen_weights=fp16");
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("training.frozen_weights") && Catch::Contains("bf16"));
    const auto g =
        run_cli("generate --model " + q(e.dir / "model") + " --frozen-weights fp16 --prompt hi");
    CHECK(g.exit_code == 2);
    CHECK_THAT(g.output, Catch::Contains("--frozen-weights"));
  }
}
