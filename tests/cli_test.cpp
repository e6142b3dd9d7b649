// The ssmtune binary as users run it: exit codes, one-line errors naming the file and field,
// and no partial output on bad input. Runs the built binary (SSMTUNE_BIN) in a shell.
#include <catch2/catch.hpp>

#include "cli_run.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;

namespace {

using Result = ssmtune::test::CliResult;
Result run(const std::string& args) { return ssmtune::test::run_cli(args); }

fs::path fixture(const std::string& model) { return fs::path(SSMTUNE_FIXTURES_DIR) / model; }

// A scratch copy of a fixture model that a test may break.
struct ModelCopy {
  fs::path dir;
  explicit ModelCopy(const std::string& model) {
    dir = fs::temp_directory_path() / ("ssmtune_cli_" + model + "_" + std::to_string(::getpid()) +
                                       "_" + std::to_string(counter()++));
    fs::remove_all(dir);
    fs::copy(fixture(model), dir, fs::copy_options::recursive);
  }
  ~ModelCopy() { fs::remove_all(dir); }
  static int& counter() {
    static int n = 0;
    return n;
  }
  void replace_in_config(const std::string& from, const std::string& to) const {
    std::ifstream in(dir / "config.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto pos = text.find(from);
    REQUIRE(pos != std::string::npos);
    text.replace(pos, from.size(), to);
    std::ofstream(dir / "config.json") << text;
  }
};

}  // namespace

TEST_CASE("ssmtune --version and --help exit 0", "[cli]") {
  Result r = run("--version");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::StartsWith("ssmtune 0."));
  r = run("info --help");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("Example: ssmtune info"));
}

TEST_CASE("ssmtune info reports sizes and the parameter count transformers reports", "[cli]") {
  // Totals are the numel sums of the fixtures' gradients (one per HF parameter).
  Result r = run("info " + fixture("mamba-odd").string());
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("d_model 20, d_inner 30, d_state 5, d_conv 3, dt_rank 3"));
  CHECK_THAT(r.output, Catch::Contains("untied embeddings"));
  CHECK_THAT(r.output, Catch::Contains("9,540"));
  r = run("info " + fixture("mamba-sharded-bf16").string());
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("4 shards, 32 tensors, stored as BF16"));
  CHECK_THAT(r.output, Catch::Contains("32,960"));
  // Jamba: the schedule and the counts by layer kind (15,860 is what transformers 4.44.2 sums
  // over JambaForCausalLM.from_pretrained(jamba-tiny).parameters()).
  r = run("info " + fixture("jamba-tiny").string());
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output,
             Catch::Contains("0 mamba+moe, 1 attention+mlp, 2 mamba+mlp, 3 attention+moe"));
  CHECK_THAT(r.output, Catch::Contains("15,860"));
}

TEST_CASE("usage errors exit 2 with a message", "[cli]") {
  Result r = run("info");
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::Contains("model_dir is required"));
  r = run("bench --model " + fixture("mamba-tiny").string() + " --batch 0");
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::Contains("--batch: Value 0 not in range"));
  r = run("bench");
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::Contains("give --model DIR or --config CONFIG.json"));
}

TEST_CASE("bad model files give one error line naming the file and field, exit 1", "[cli][bad-input]") {
  SECTION("missing directory") {
    Result r = run("info /nonexistent/model");
    CHECK(r.exit_code == 1);
    CHECK(r.output == "error: /nonexistent/model/config.json: cannot open: No such file or directory\n");
  }
  SECTION("truncated safetensors") {
    ModelCopy m("mamba-tiny");
    fs::resize_file(m.dir / "model.safetensors", 1000);
    Result r = run("info " + m.dir.string());
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::StartsWith("error: " + (m.dir / "model.safetensors").string() +
                                           ": header length"));
    CHECK_THAT(r.output, Catch::Contains("runs past the end of the file (1000 bytes)"));
  }
  SECTION("mistyped config field") {
    ModelCopy m("mamba-tiny");
    m.replace_in_config("\"state_size\": 8", "\"state_size\": \"8\"");
    Result r = run("info " + m.dir.string());
    CHECK(r.exit_code == 1);
    CHECK(r.output == "error: " + (m.dir / "config.json").string() +
                          ": field \"state_size\": expected a positive integer, got string \"8\"\n");
  }
  SECTION("missing config field") {
    ModelCopy m("mamba-tiny");
    m.replace_in_config("\"hidden_size\": 16,", "");
    Result r = run("info " + m.dir.string());
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("config.json"));
    CHECK_THAT(r.output, Catch::Contains("hidden_size"));
  }
  SECTION("tensor shapes that do not match the config") {
    ModelCopy m("mamba-tiny");
    m.replace_in_config("\"state_size\": 8", "\"state_size\": 4");
    Result r = run("info " + m.dir.string());
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("tensor \"backbone.layers.0.mixer.A_log\": expected shape "
                                         "(32, 4), found (32, 8)"));
  }
  SECTION("missing shard of a sharded checkpoint") {
    ModelCopy m("mamba-sharded-bf16");
    fs::remove(m.dir / "model-00002-of-00004.safetensors");
    Result r = run("info " + m.dir.string());
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("model-00002-of-00004.safetensors"));
  }
}
