// What the fuzz targets found (tests/fuzz, docs/reliability.md "Fuzzing"), kept fixed in the
// g++ suite. Each input is also kept under tests/fuzz/regressions/<target>/, which .ci/fuzz
// replays through the target.
#include <catch2/catch.hpp>
#include <fstream>
#include <string>

#include "io_test_util.h"
#include "model/model_config.h"

namespace {

const std::string kRegressions = std::string(SSMTUNE_FIXTURES_DIR) + "/../fuzz/regressions";

}  // namespace

TEST_CASE("a check on a defaulted field of config.json that is absent is an Error naming it",
          "[model][config][fuzz]") {
  // fuzz_config_json: a Jamba config without num_attention_heads (default 32) and hidden_size
  // 61 failed the divisor check, whose message read the absent field: an uncaught
  // nlohmann::json out_of_range instead of ssmtune::Error.
  ssmtune::test::TempDir dir;
  std::filesystem::copy_file(
      kRegressions + "/config_json/jamba-absent-num-attention-heads.json", dir / "config.json");
  try {
    (void)ssmtune::load_model_config(dir.path().string());
    FAIL("the config loaded");
  } catch (const ssmtune::Error& e) {
    const std::string what = e.what();
    CHECK(what.find("config.json: field \"num_attention_heads\"") != std::string::npos);
    CHECK(what.find("a divisor of hidden_size = 61") != std::string::npos);
    CHECK(what.find("the field is absent") != std::string::npos);
  }
}
