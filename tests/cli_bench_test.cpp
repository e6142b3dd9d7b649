// ssmtune bench --peft: a PEFT method's whole optimizer step (train/train_step.h) timed on the
// shipped bench configs (configs/bench/lora-r8.json, full.json), the floor line
// (machine_rates.h), a bad --peft file refused as train refuses it, and --generate's decoding
// figures on each model kind (bench_generate.h). Only that the figures are there and
// well-formed: how fast is docs/benchmarks.md's business.
#include <catch2/catch.hpp>

#include <filesystem>
#include <regex>
#include <string>

#include "cli_run.h"
#include "io_test_util.h"

namespace fs = std::filesystem;
using ssmtune::test::run_cli;

namespace {

fs::path repo_file(const std::string& rel) {
  return fs::path(SSMTUNE_FIXTURES_DIR) / ".." / ".." / rel;
}

// The number after `label` in `text` (first match), or -1.
double number_after(const std::string& text, const std::string& label) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(label + " *([0-9.]+)"))) return -1;
  return std::stod(m[1]);
}

}  // namespace

TEST_CASE("ssmtune bench --peft times a method's optimizer step and reports the floor",
          "[cli][bench]") {
  const std::string model = (fs::path(SSMTUNE_FIXTURES_DIR) / "mamba-tiny").string();
  const std::string common = "bench --model " + model + " --batch 2 --seq-len 16 --steps 1 ";
  const auto lora = run_cli(common + "--peft " + repo_file("configs/bench/lora-r8.json").string());
  INFO(lora.output);
  REQUIRE(lora.exit_code == 0);
  CHECK_THAT(lora.output, Catch::Contains("forward + backward + AdamW"));
  CHECK_THAT(lora.output, Catch::Contains("lora: rank 8, alpha 16"));
  for (const char* module : {"in_proj", "x_proj", "dt_proj", "out_proj"})
    CHECK_THAT(lora.output, Catch::Contains(std::string(module) + ": "));
  CHECK_THAT(lora.output, Catch::Contains("optimizer"));  // AdamW's op in the profile
  CHECK(number_after(lora.output, "tokens/s") > 0);
  CHECK(number_after(lora.output, "GEMM") > 0);
  CHECK(number_after(lora.output, "step / floor") > 0);

  const auto full = run_cli(common + "--peft " + repo_file("configs/bench/full.json").string());
  INFO(full.output);
  REQUIRE(full.exit_code == 0);
  CHECK_THAT(full.output, Catch::Contains("full fine-tuning"));

  // training.recompute's step, with the base held in bf16 beside it.
  const auto recomputed =
      run_cli(common + "--recompute mixers --frozen-weights bf16 --peft " +
              repo_file("configs/bench/lora-r8.json").string());
  INFO(recomputed.output);
  REQUIRE(recomputed.exit_code == 0);
  CHECK_THAT(recomputed.output,
             Catch::Contains("(mixers recomputed) + AdamW") && Catch::Contains("frozen in bf16"));
  CHECK(number_after(recomputed.output, "tokens/s") > 0);
}

TEST_CASE("a bad bench --peft file is refused naming the file and field", "[cli][bench]") {
  ssmtune::test::TempDir tmp;
  const fs::path bad = tmp.path() / "bad.json";
  ssmtune::test::write_bytes(bad, R"({"peft": {"lora": {"rank": 0}}})");
  const std::string model = (fs::path(SSMTUNE_FIXTURES_DIR) / "mamba-tiny").string();
  const auto r = run_cli("bench --model " + model + " --steps 1 --peft " + bad.string());
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::Contains(bad.string()) && Catch::Contains("peft.lora.rank"));
  ssmtune::test::write_bytes(bad, R"({"peft": {"lorra": {}}})");
  const auto typo = run_cli("bench --model " + model + " --steps 1 --peft " + bad.string());
  CHECK(typo.exit_code == 2);
  CHECK_THAT(typo.output, Catch::Contains("lorra"));
}

TEST_CASE("ssmtune bench --generate times greedy decoding on each model kind, batch 1 only",
          "[cli][bench][decode]") {
  for (const char* fixture : {"mamba-tiny", "mamba2-tiny", "jamba-tiny"}) {
    const std::string model = (fs::path(SSMTUNE_FIXTURES_DIR) / fixture).string();
    const auto r = run_cli("bench --model " + model + " --seq-len 5 --generate 4 --steps 2");
    INFO(fixture << "\n" << r.output);
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.output, Catch::Contains("prompt 5 tokens, 4 new tokens (greedy): the prefill "
                                         "and 3 decode steps"));
    CHECK(number_after(r.output, "tokens/s") > 0);
    CHECK(number_after(r.output, "decode step   median") > 0);
    CHECK(number_after(r.output, "decode step / floor") > 0);
  }
  const std::string model = (fs::path(SSMTUNE_FIXTURES_DIR) / "mamba-tiny").string();
  const auto batch = run_cli("bench --model " + model + " --generate 4 --batch 2");
  CHECK(batch.exit_code == 2);
  CHECK_THAT(batch.output, Catch::Contains("--batch must be 1"));
  const auto peft = run_cli("bench --model " + model + " --generate 4 --peft " +
                            repo_file("configs/bench/lora-r8.json").string());
  CHECK(peft.exit_code != 0);
  CHECK_THAT(peft.output, Catch::Contains("--peft excludes --generate"));
}
