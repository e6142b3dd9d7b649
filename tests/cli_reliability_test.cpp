// Hostile or mistaken input through the binary: every problem is one line
// `error: <file or option>: <what was expected>`, a non-zero exit, no crash and no partial
// output. The models are made here with init_mamba_weights and the byte-level BPE tokenizer
// fixture (data_scripts/make_tokenizer_fixtures.py), as in train_experiment_fixture.h.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_run.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::read_file;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;

namespace {

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

std::string fixture(const std::string& name) {
  return q(fs::path(SSMTUNE_FIXTURES_DIR) / name);
}

// `text` with its first `from` replaced by `to`; the text must hold `from`.
std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const auto pos = text.find(from);
  REQUIRE(pos != std::string::npos);
  return text.replace(pos, from.size(), to);
}

// A usage error: exit 2 and exactly one line, `error: ...` holding `fragment`.
void require_usage_error(const std::string& args, const std::string& fragment) {
  const auto r = run_cli(args);
  INFO(args << "\n" << r.output);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::StartsWith("error: ") && Catch::Contains(fragment));
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  CHECK(r.output.back() == '\n');
}

}  // namespace

TEST_CASE("a number too large for a double in a JSON input names the file, line and column",
          "[cli][bad-input]") {
  Experiment e;
  const std::string config = read_file(e.config);
  const std::string overflowing = replaced(config, "\"lr\":", "\"lr\": 1e999, \"x\":");
  std::ofstream(e.config) << overflowing;
  auto r = run_cli(e.train_args());
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Matches("error: " + e.config.string() +
                                      ":[0-9]+:[0-9]+: invalid JSON: number overflow parsing "
                                      "'1e999'\n"));
  CHECK(!fs::exists(e.run_dir()));
  // A model's config.json.
  std::ofstream(e.config) << config;
  const fs::path model_config = e.dir / "model" / "config.json";
  const std::string model_text = replaced(read_file(model_config), "\"layer_norm_epsilon\"",
                                          "\"x\": -1e999, \"layer_norm_epsilon\"");
  std::ofstream(model_config) << model_text;
  r = run_cli("info " + q(e.dir / "model"));
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::StartsWith("error: " + model_config.string() + ":") &&
                           Catch::Contains(": invalid JSON: number overflow parsing '-1e999'"));
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
}

TEST_CASE("numeric options refuse values out of their range, naming the option",
          "[cli][bad-input]") {
  const std::string eval = "eval --model " + fixture("mamba-tiny") + " --data x.jsonl ";
  const std::string generate = "generate --model " + fixture("mamba-tiny") + " --prompt a ";
  const std::string bench = "bench --model " + fixture("mamba-tiny");
  const std::pair<std::string, std::string> cases[] = {
      {eval + "--max-length 0", "--max-length: Value 0 not in range"},
      {eval + "--max-length -5", "--max-length: Value -5 not in range"},
      {eval + "--max-examples -1", "--max-examples: Value -1 not in range"},
      {eval + "--max-examples 0", "--max-examples: Value 0 not in range"},
      {eval + "--max-new-tokens 0", "--max-new-tokens: Value 0 not in range"},
      {eval + "--batch-size 0", "--batch-size: Value 0 not in range"},
      {generate + "--max-new-tokens 0", "--max-new-tokens: Value 0 not in range"},
      {generate + "--max-new-tokens -3", "--max-new-tokens: Value -3 not in"},
      {generate + "--temperature -1", "--temperature: expected a finite number >= 0"},
      {generate + "--temperature nan", "--temperature: expected a finite number"},
      {generate + "--temperature inf", "--temperature: expected a finite number"},
      {generate + "--top-p 0", "--top-p: expected a finite number in (0, 1]"},
      {generate + "--top-p 1.5", "--top-p: expected a finite number in (0, 1]"},
      {generate + "--top-k -1", "--top-k: Value -1 not in range"},
      {generate + "--seed -1", "--seed: expected a non-negative integer"},
      {"init sizes.json --out x --seed -1", "--seed: expected a non-negative integer"},
      {bench + " --seed -2", "--seed: expected a non-negative integer"},
      {bench + " --steps 0", "--steps: Value 0 not in range"},
  };
  for (const auto& [args, fragment] : cases) require_usage_error(args, fragment);
}

TEST_CASE("usage errors are one line naming the unknown subcommand or option, exit 2", "[cli]") {
  const std::string subcommands =
      "(expected one of: info, bench, init, train, eval, generate, merge-adapter)";
  auto r = run_cli("frobnicate --x");
  CHECK(r.exit_code == 2);
  CHECK(r.output == "error: unknown subcommand \"frobnicate\" " + subcommands +
                        " (see ssmtune --help)\n");
  require_usage_error("", "a subcommand is required (one of: info, bench, init, train, eval");
  require_usage_error("--bogus info x", "--bogus");
  require_usage_error("--bogus", "unknown option \"--bogus\"");
  require_usage_error("eval --bogus 3", "--bogus");
  require_usage_error("eval --bogus 3", "(see ssmtune eval --help)");
  require_usage_error("info", "model_dir is required");
  require_usage_error("generate --model m", "--prompt is required");
  require_usage_error("eval --max-length abc", "--max-length");
  require_usage_error("--log-level loud info x", "--log-level");
  // --help and --version still print and exit 0.
  CHECK(run_cli("generate --help").exit_code == 0);
  CHECK(run_cli("--version").exit_code == 0);
}

TEST_CASE("train's --out, --set and --device apply in the order given: a later one wins",
          "[cli][config]") {
  Experiment e(/*steps=*/1, /*checkpoint_every=*/0, /*eval_every=*/0);
  const fs::path a = e.dir / "A", b = e.dir / "B";
  auto r = run_cli(e.train_args("--out " + q(a) + " --set output_dir=" + q(b)));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(fs::exists(b / "adapter"));
  CHECK(!fs::exists(a));
  fs::remove_all(b);
  r = run_cli(e.train_args("--set output_dir=" + q(b) + " --out " + q(a)));
  REQUIRE(r.exit_code == 0);
  CHECK(fs::exists(a / "adapter"));
  CHECK(!fs::exists(b));
  // --device too: the later training.device wins (cuda first, cpu last: runs on the CPU).
  r = run_cli(e.train_args("--device cuda --set training.device=cpu --out " + q(b)));
  CHECK(r.exit_code == 0);
  CHECK(nlohmann::json::parse(read_file(b / "experiment.json"))["training"]["device"] == "cpu");
}
