// ssmtune train end to end through the binary: a run interrupted at any point (SIGKILL after a
// step, SIGKILL half way through a checkpoint, SIGTERM) and resumed gives bit-identical
// parameters and losses to the run that was never interrupted; bad input and failed writes give
// one clear error and leave no partial files. The model is made here with init_mamba_weights and
// the byte-level BPE tokenizer fixture (data_scripts/make_tokenizer_fixtures.py).
#include <signal.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli_run.h"
#include "io_test_util.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::read_file;
using ssmtune::test::trajectory;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void require_same_result(const fs::path& a, const fs::path& b) {
  const std::string adapter = "adapter/adapter_model.safetensors";
  REQUIRE(fs::exists(a / adapter));
  REQUIRE(fs::exists(b / adapter));
  CHECK(read_file(a / adapter) == read_file(b / adapter));  // bit-identical parameters
  const auto ta = trajectory(a), tb = trajectory(b);
  CHECK(ta.size() > 10);
  CHECK(ta == tb);  // the same losses, learning rates, gradient norms and eval losses
}

// popen's shell reports a child killed by SIGKILL as exit status 128 + 9 (or we see the signal).
bool was_killed(const ssmtune::test::CliResult& r) {
  return r.exit_code == -1 || r.exit_code == 137;
}

bool has_staging_leftovers(const fs::path& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.path().filename().string().find(".tmp") != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("a run killed after a step resumes bit-exactly", "[train][resume]") {
  Experiment straight, killed;
  REQUIRE(run_cli(straight.train_args()).exit_code == 0);
  for (const int kill_step : {5, 9}) {
    DYNAMIC_SECTION("SIGKILL after step " << kill_step) {
      fs::remove_all(killed.run_dir());
      const auto r = run_cli(killed.train_args(),
                             "SSMTUNE_FAULT_KILL_AFTER_STEP=" + std::to_string(kill_step));
      REQUIRE(was_killed(r));
      CHECK(!fs::exists(killed.run_dir() / "adapter"));
      // Starting again without --resume is refused: the directory holds a run.
      const auto again = run_cli(killed.train_args());
      CHECK(again.exit_code == 2);
      CHECK_THAT(again.output, Catch::Contains("--resume"));
      const auto resumed = run_cli(killed.train_args("--resume"));
      INFO(resumed.output);
      REQUIRE(resumed.exit_code == 0);
      require_same_result(straight.run_dir(), killed.run_dir());
    }
  }
}

TEST_CASE("a run killed while writing a checkpoint resumes from the previous one",
          "[train][resume]") {
  Experiment straight, killed;
  REQUIRE(run_cli(straight.train_args()).exit_code == 0);
  const auto r = run_cli(killed.train_args(), "SSMTUNE_FAULT_KILL_IN_CHECKPOINT=6");
  REQUIRE(was_killed(r));
  CHECK(fs::exists(killed.run_dir() / "checkpoint-3"));
  CHECK(!fs::exists(killed.run_dir() / "checkpoint-6"));  // never half-written
  const auto resumed = run_cli(killed.train_args("--resume"));
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK_THAT(resumed.output, !Catch::Contains("error"));
  CHECK(!has_staging_leftovers(killed.run_dir()));
  require_same_result(straight.run_dir(), killed.run_dir());
}

TEST_CASE("SIGTERM writes a checkpoint, exits 143, and the run resumes bit-exactly",
          "[train][resume]") {
  Experiment straight(120, 10, 60), stopped(120, 10, 60);
  REQUIRE(run_cli(straight.train_args()).exit_code == 0);

  const pid_t pid = ssmtune::test::spawn_cli({"--quiet", "train", stopped.config.string()});
  // Signal once training has visibly started (its first checkpoint exists).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(stopped.run_dir() / "checkpoint-10") &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  REQUIRE(kill(pid, SIGTERM) == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 128 + SIGTERM);
  CHECK(!fs::exists(stopped.run_dir() / "adapter"));  // stopped before the end

  const auto resumed = run_cli(stopped.train_args("--resume"));
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  require_same_result(straight.run_dir(), stopped.run_dir());
}

TEST_CASE("resume refuses a corrupted checkpoint or a changed config, naming the file",
          "[train][resume][bad-input]") {
  Experiment e;
  REQUIRE(was_killed(run_cli(e.train_args(), "SSMTUNE_FAULT_KILL_AFTER_STEP=7")));
  const fs::path ckpt = e.run_dir() / "checkpoint-6";
  REQUIRE(fs::exists(ckpt));

  SECTION("truncated optimizer state") {
    fs::resize_file(ckpt / "optimizer.safetensors", 100);
    const auto r = run_cli(e.train_args("--resume"));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("checkpoint-6/optimizer.safetensors"));
  }
  SECTION("malformed trainer state") {
    std::ofstream(ckpt / "trainer_state.json") << "{\"step\": 6, \"data_epoch\": ";
    const auto r = run_cli(e.train_args("--resume"));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("checkpoint-6/trainer_state.json"));
  }
  SECTION("adapter tensor of the wrong shape") {
    fs::copy_file(
        fs::path(SSMTUNE_FIXTURES_DIR) / "peft-lora" / "adapter_init" / "adapter_model.safetensors",
        ckpt / "adapter_model.safetensors", fs::copy_options::overwrite_existing);
    const auto r = run_cli(e.train_args("--resume"));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("checkpoint-6/adapter_model.safetensors"));
  }
  SECTION("a different learning rate") {
    const auto r = run_cli(e.train_args("--resume --set optimizer.lr=0.1"));
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("another config"));
  }
  CHECK(!fs::exists(e.run_dir() / "adapter"));
}

TEST_CASE("train reports bad input and failed writes in one line and leaves no partial files",
          "[train][bad-input]") {
  Experiment e;
  SECTION("malformed JSONL line") {
    std::ofstream(e.dir / "train.jsonl", std::ios::app)
        << "{\"prompt\": \"x\", \"completion\": 3}\n";
    const auto r = run_cli(e.train_args());
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("train.jsonl:49") && Catch::Contains("completion"));
  }
  SECTION("empty dataset") {
    std::ofstream(e.dir / "train.jsonl", std::ios::trunc) << "\n";
    const auto r = run_cli(e.train_args());
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("train.jsonl"));
  }
  SECTION("example longer than max_length") {
    const auto r = run_cli(e.train_args("--set data.max_length=4"));
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("max_length"));
  }
  SECTION("config error") {
    const auto r = run_cli(e.train_args("--set optimizer.lrr=1"));
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("did you mean \"optimizer.lr\""));
  }
  SECTION("LoRA target that matches nothing") {
    const auto r = run_cli(e.train_args("--set peft.lora.targets='[\"layers.9.in_proj\"]'"));
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("matches no module"));
  }
  SECTION("unwritable output directory") {
    const auto r = run_cli(e.train_args("--out /proc/ssmtune-run"));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("/proc/ssmtune-run"));
  }
  SECTION("disk full while writing (file size limit)") {
    // RLIMIT_FSIZE with SIGXFSZ ignored makes writes past the limit fail with EFBIG, as a full
    // disk fails them with ENOSPC: the writer must report it and remove its temporary files.
    const auto r = run_cli(e.train_args(), "trap '' XFSZ; ulimit -f 8;");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::StartsWith("error: "));
    if (fs::exists(e.run_dir())) {
      CHECK(!has_staging_leftovers(e.run_dir()));
      CHECK(!fs::exists(e.run_dir() / "adapter"));
    }
  }
}
