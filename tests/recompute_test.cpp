// training.recompute "mixers" (CausalLM::set_recompute_mixers): forward keeps none of a mixer's
// inner activations and backward runs each mixer's forward again. That must change no bit:
// every configs/methods config trains on a Mamba, a Jamba and a Mamba-2 fixture
// (make_fixture_experiment) to the same metrics rows and the same saved tensors with it as
// without. LoRA's dropout is turned on (the parallel adapter's is on by default), so a
// recomputed forward must reuse the first forward's masks (LinearHook::set_recomputing): a fresh
// draw would give other gradients, and would move the dropout stream for every later step.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io_test_util.h"
#include "train/experiment_config.h"
#include "train/trainer.h"
#include "train_experiment_fixture.h"

namespace fs = std::filesystem;
using nlohmann::json;
using ssmtune::test::read_file;

namespace {

// Every .safetensors file under `dir`, by path relative to it: the tensors a run saved.
std::map<std::string, std::string> saved_tensors(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& f : fs::recursive_directory_iterator(dir))
    if (f.path().extension() == ".safetensors")
      out[fs::relative(f.path(), dir).string()] = read_file(f.path());
  return out;
}

// Trains `cfg` with training.recompute = `recompute` into dir/<name>-<recompute>; returns the
// run directory, or the refusal's message (a method the model's layers do not take).
std::string run(json cfg, const fs::path& dir, const std::string& name,
                const std::string& recompute, fs::path& run_dir) {
  run_dir = dir / (name + "-" + recompute);
  cfg["output_dir"] = run_dir.string();
  cfg["training"]["recompute"] = recompute;
  const fs::path config = dir / (name + "-" + recompute + ".json");
  std::ofstream(config) << cfg.dump(2);
  try {
    ssmtune::train(ssmtune::load_experiment_config(config.string(), {}), {});
  } catch (const ssmtune::UsageError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("recomputing the mixers in backward trains every method to the same bits",
          "[train][recompute][methods][jamba][mamba2]") {
  const std::vector<fs::path> configs = ssmtune::test::method_configs();
  REQUIRE(configs.size() >= 19);
  for (const char* fixture : {"mamba-tiny", "jamba-tiny", "mamba2-tiny"}) {
    DYNAMIC_SECTION(fixture) {
      ssmtune::test::TempDir dir;
      const fs::path train_file = ssmtune::test::make_fixture_experiment(dir.path(), fixture);
      int trained = 0;
      for (const fs::path& method : configs) {
        const std::string name = method.stem().string();
        INFO(fixture << ", " << name);
        json cfg = ssmtune::test::method_experiment(method, dir.path(), train_file, 2);
        if (cfg["peft"].contains("lora")) cfg["peft"]["lora"]["dropout"] = 0.25;
        fs::path plain, recomputed;
        const std::string refused = run(cfg, dir.path(), name, "none", plain);
        REQUIRE(run(cfg, dir.path(), name, "mixers", recomputed) == refused);
        if (!refused.empty()) continue;  // refused alike (a method Jamba's layers do not take)
        ++trained;
        CHECK(ssmtune::test::trajectory(recomputed) == ssmtune::test::trajectory(plain));
        const auto want = saved_tensors(plain);
        CHECK(!want.empty());
        CHECK(saved_tensors(recomputed) == want);
      }
      CHECK(trained >= 15);
    }
  }
}
