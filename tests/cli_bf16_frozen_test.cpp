// training.frozen_weights / --frozen-weights through the binary (model/weight_storage.h,
// docs/config.md): a LoRA run on the CLI fixture experiment (train_experiment_fixture.h, fp32
// weights rounded to bf16 on load) trains, eval and generate take the setting from the config or
// the flag, and the combinations that cannot work are refused.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli_bf16_frozen_check.h"

using ssmtune::test::Experiment;
using ssmtune::test::run_cli;
using ssmtune::test::q;
namespace fs = std::filesystem;

TEST_CASE("train, eval and generate hold the frozen weights in bf16 when asked",
          "[cli][train][eval][generate][bf16-frozen]") {
  ssmtune::test::check_frozen_bf16_run(Experiment(6, 3, 3));
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
