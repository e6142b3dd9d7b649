// --device on a machine without a usable GPU (the build machines): train, eval, generate and
// bench refuse --device cuda with the reason, exit non-zero, and write nothing. With a GPU the
// same commands run (tests/gpu covers them there), so the test skips.
#include <catch2/catch.hpp>
#include <filesystem>

#include "backend/cuda/device_info.h"
#include "cli_run.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;

TEST_CASE("a machine without a usable GPU refuses --device cuda clearly and writes nothing",
          "[cli][cuda]") {
  const ssmtune::CudaDevices gpus = ssmtune::query_cuda_devices();
  if (gpus.count > 0) {
    WARN("a GPU is present (" << gpus.detail << "): the no-GPU error cannot be shown here");
    return;
  }
  Experiment e(2, 1, 1);
  const auto train = run_cli(e.train_args("--device cuda"));
  INFO(train.output);
  CHECK(train.exit_code == 1);
  CHECK_THAT(train.output,
             Catch::Contains("--device cuda: ") &&
                 (Catch::Contains("no usable GPU") || Catch::Contains("no CUDA parts")));
  CHECK(!fs::exists(e.run_dir()));
  const std::string model = (e.dir / "model").string();
  const auto bench = run_cli("bench --model '" + model + "' --device cuda --steps 1");
  CHECK(bench.exit_code == 1);
  CHECK_THAT(bench.output, Catch::Contains("--device cuda: "));
  const auto gen = run_cli("generate --model '" + model + "' --prompt hi --device cuda");
  CHECK(gen.exit_code == 1);
  CHECK_THAT(gen.output, Catch::Contains("--device cuda: "));
  // The set of devices is closed: a typo is a usage error naming the choices.
  const auto typo = run_cli(e.train_args("--device gpu"));
  CHECK(typo.exit_code != 0);
  CHECK_THAT(typo.output, Catch::Contains("cpu") && Catch::Contains("cuda"));
}
