// ssmtune train options end to end through the binary: gradient accumulation, full
// fine-tuning (and its resume), early stopping, init_from, and the exact_match metric.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "io/safetensors.h"
#include "test_compare.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::read_file;
using ssmtune::test::run_cli;
using ssmtune::testing::require_close;
namespace fs = std::filesystem;
using ssmtune::test::q;

namespace {

void train_ok(const Experiment& e, const std::string& extra) {
  const auto r = run_cli(e.train_args(extra));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
}

nlohmann::json summary(const fs::path& run) {
  return nlohmann::json::parse(read_file(run / "summary.json"));
}

// Every tensor of two adapter files within rtol of the second's largest entry.
void require_adapters_close(const fs::path& a, const fs::path& b, double rtol) {
  const auto fa = ssmtune::SafetensorsFile::open(a / "adapter_model.safetensors");
  const auto fb = ssmtune::SafetensorsFile::open(b / "adapter_model.safetensors");
  REQUIRE(fa.entries().size() == fb.entries().size());
  for (const auto& entry : fb.entries())
    require_close(entry.name, fa.tensor(entry.name), fb.tensor(entry.name), rtol, 1e-12);
}

}  // namespace

TEST_CASE("two micro-batches of 2 accumulate to the step one batch of 4 takes",
          "[train][accumulation]") {
  Experiment one, two;
  // No shuffling or dropout, so both runs see the same examples in the same order.
  const std::string common =
      "--set data.shuffle=false --set peft.lora.dropout=0 --set training.steps=4 ";
  train_ok(one, common + "--set training.batch_size=4 --set training.grad_accum=1");
  train_ok(two, common + "--set training.batch_size=2 --set training.grad_accum=2");
  // float32: the same sums in another order (token-weighted over the step in both runs).
  require_adapters_close(one.run_dir() / "adapter", two.run_dir() / "adapter", 1e-4);
  // Other batches give other numbers, so the comparison above can fail.
  Experiment shuffled;
  train_ok(shuffled, common + "--set data.shuffle=true --set training.batch_size=4");
  CHECK(read_file(one.run_dir() / "adapter" / "adapter_model.safetensors") !=
        read_file(shuffled.run_dir() / "adapter" / "adapter_model.safetensors"));
}

TEST_CASE("full fine-tuning writes a model directory and resumes bit-exactly", "[train][full]") {
  Experiment straight, killed;
  const std::string full = "--set 'peft={\"full\": true}' --set optimizer.lr=1e-3 ";
  train_ok(straight, full);
  const fs::path model = straight.run_dir() / "model";
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    CHECK(fs::exists(model / f));
  CHECK(!fs::exists(straight.run_dir() / "adapter"));
  const auto s = summary(straight.run_dir());
  CHECK(s["trainable_parameters"] == s["total_parameters"]);  // every base tensor trains
  CHECK(run_cli("info " + q(model)).exit_code == 0);
  // The weights moved.
  CHECK(read_file(model / "model.safetensors") !=
        read_file(straight.dir / "model" / "model.safetensors"));

  const auto r = run_cli(killed.train_args(full), "SSMTUNE_FAULT_KILL_AFTER_STEP=7");
  REQUIRE((r.exit_code == -1 || r.exit_code == 137));
  train_ok(killed, full + "--resume");
  CHECK(read_file(killed.run_dir() / "model" / "model.safetensors") ==
        read_file(model / "model.safetensors"));
}

TEST_CASE("early stopping ends a run whose eval metric stops improving", "[train][early-stop]") {
  Experiment e(40, 0, 4);
  // min_delta is larger than any change: after the first eval nothing counts as improvement,
  // so with patience 2 the run stops at the third eval (step 12).
  train_ok(e, "--set eval.early_stopping.patience=2 --set eval.early_stopping.min_delta=100");
  const auto s = summary(e.run_dir());
  CHECK(s["stopped_early"] == true);
  CHECK(s["steps"] == 12);
  CHECK(fs::exists(e.run_dir() / "adapter"));
  Experiment normal(40, 0, 4);
  train_ok(normal, "--set eval.early_stopping.patience=2");
  CHECK(summary(normal.run_dir())["steps"].get<std::int64_t>() > 12);
}

TEST_CASE("init_from starts a run from a trained adapter", "[train][init-from]") {
  Experiment first, second;
  train_ok(first, "");
  const fs::path adapter = first.run_dir() / "adapter";
  // One step at a learning rate so small that the adapter cannot move measurably.
  train_ok(second, "--set peft.init_from=" + q(adapter) +
                       " --set training.steps=1 --set optimizer.lr=1e-12 --set schedule.type="
                       "constant --set optimizer.weight_decay=0");
  require_adapters_close(second.run_dir() / "adapter", adapter, 1e-6);
  // Without init_from the same run starts from a fresh LoRA (B = 0): far from the trained one.
  Experiment fresh;
  train_ok(fresh, "--set training.steps=1 --set optimizer.lr=1e-12 --set schedule.type=constant");
  const auto a =
      ssmtune::SafetensorsFile::open(fresh.run_dir() / "adapter" / "adapter_model.safetensors");
  const auto b = ssmtune::SafetensorsFile::open(adapter / "adapter_model.safetensors");
  double max_b = 0;
  const std::string name = "base_model.model.backbone.layers.0.mixer.out_proj.lora_B.weight";
  const auto fresh_b = a.tensor(name).to(ssmtune::DType::F64);
  for (std::int64_t i = 0; i < fresh_b.numel(); ++i)
    max_b = std::max(max_b, std::fabs(fresh_b.data<double>()[i]));
  CHECK(max_b < 1e-9);
  CHECK(b.contains(name));
}

TEST_CASE("exact_match is 1 for completions equal to the greedy generation", "[train][eval]") {
  Experiment e;
  const fs::path model = e.dir / "model";
  // What the model generates greedily from each prompt, 4 tokens.
  std::ofstream data(e.dir / "em.jsonl");
  for (const char* prompt : {"Say alpha", "Say red"}) {
    const auto g = run_cli("--quiet generate --model " + q(model) + " --prompt '" + prompt +
                           "' --max-new-tokens 4");
    REQUIRE(g.exit_code == 0);
    std::string continuation = g.output.substr(std::string(prompt).size());
    continuation.pop_back();  // the newline generate prints at the end
    data << nlohmann::json{{"prompt", prompt}, {"completion", continuation}}.dump() << "\n";
  }
  data << nlohmann::json{{"prompt", "Say green"}, {"completion", " certainly not this"}}.dump()
       << "\n";
  data.close();
  const auto r = run_cli("--quiet eval --json --model " + q(model) + " --data " +
                         q(e.dir / "em.jsonl") + " --metrics exact_match --max-new-tokens 4");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.output)["metrics"]["exact_match"].get<double>() ==
        Approx(2.0 / 3.0));
}

TEST_CASE("configs/sweep.sh runs a grid, skips finished runs and tabulates them",
          "[train][sweep]") {
  Experiment e;
  const fs::path script =
      fs::path(SSMTUNE_FIXTURES_DIR).parent_path().parent_path() / "configs" / "sweep.sh";
  const fs::path out = e.dir / "sweep";
  const std::string cmd = "SSMTUNE='" + std::string(SSMTUNE_BIN) +
                          "' METHODS='lora-out full' RANKS='2 4' LRS='1e-3' "
                          "EXTRA='--set training.steps=2 --set eval.every=0' bash " +
                          q(script) + " " + q(e.config) + " " + q(out) + " 2>&1";
  auto run = [&] {
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    std::string text;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, p)) text += buf;
    REQUIRE(pclose(p) == 0);
    return text;
  };
  run();
  // Two LoRA ranks and one full fine-tuning run (full has no rank), plus the header.
  const std::string table = read_file(out / "results.tsv");
  CHECK(std::count(table.begin(), table.end(), '\n') == 4);
  CHECK_THAT(table, Catch::Contains("lora-out-r2-lr1e-3") && Catch::Contains("full-lr1e-3"));
  const std::string again = run();
  CHECK_THAT(again, Catch::Contains("done already: lora-out-r4-lr1e-3"));
}

namespace {

// A run of methods that no weight can hold (`peft`, a --set of the whole section; `files`, the
// adapter files it writes) trains, resumes bit-exactly after a SIGKILL, evaluates and generates
// with --adapter the numbers its own final eval saw, and merge-adapter refuses it.
void check_unmergeable_methods(const std::string& peft, const std::vector<std::string>& files) {
  Experiment straight, killed;
  train_ok(straight, peft);
  const fs::path adapter = straight.run_dir() / "adapter";
  for (const std::string& f : files) CHECK(fs::exists(adapter / f));
  const auto r = run_cli(killed.train_args(peft), "SSMTUNE_FAULT_KILL_AFTER_STEP=5");
  REQUIRE((r.exit_code == -1 || r.exit_code == 137));
  train_ok(killed, peft + "--resume");
  for (const std::string& f : files)
    CHECK(read_file(killed.run_dir() / "adapter" / f) == read_file(adapter / f));

  const fs::path model = straight.dir / "model";
  const auto base = run_cli("--quiet eval --json --model " + q(model) + " --data " +
                            q(straight.dir / "eval.jsonl"));
  const auto tuned = run_cli("--quiet eval --json --model " + q(model) + " --adapter " +
                             q(adapter) + " --data " + q(straight.dir / "eval.jsonl"));
  REQUIRE(tuned.exit_code == 0);
  CHECK(nlohmann::json::parse(tuned.output)["metrics"]["loss"].get<double>() !=
        Approx(nlohmann::json::parse(base.output)["metrics"]["loss"].get<double>()));
  // The run's own final eval (hooks in training) equals eval --adapter (hooks loaded from disk).
  CHECK(nlohmann::json::parse(tuned.output)["metrics"]["loss"].get<double>() ==
        Approx(summary(straight.run_dir())["eval"]["loss"].get<double>()).epsilon(1e-5));
  CHECK(run_cli("--quiet generate --model " + q(model) + " --adapter " + q(adapter) +
                " --prompt 'Say red' --max-new-tokens 3")
            .exit_code == 0);
  const auto merge = run_cli("merge-adapter --model " + q(model) + " --adapter " + q(adapter) +
                             " --out " + q(straight.dir / "merged"));
  CHECK(merge.exit_code == 2);
  CHECK_THAT(merge.output, Catch::Contains("cannot be merged"));
  CHECK(!fs::exists(straight.dir / "merged"));
}

}  // namespace

TEST_CASE("state tuning trains, resumes bit-exactly, evaluates and generates; merge refuses it",
          "[train][state]") {
  check_unmergeable_methods(
      "--set 'peft={\"initial_state\": true, \"state_offset\": \"h\", \"lora\": {\"targets\": "
      "[\"out_proj\"]}}' ",
      {"ssmtune_state.safetensors", "adapter_model.safetensors"});
}

TEST_CASE("parallel adapter and additional scan train, resume, evaluate, generate; merge refuses",
          "[train][modules]") {
  // Dropout in the parallel adapter: its masks come from the checkpointed generator.
  check_unmergeable_methods(
      "--set 'peft={\"parallel_adapter\": {\"rank\": 4, \"dropout\": 0.2}, "
      "\"additional_scan\": {\"states\": 4}, \"lora\": {\"targets\": [\"in_proj\"]}}' ",
      {"ssmtune_parallel_adapter.safetensors", "ssmtune_additional_scan.safetensors",
       "adapter_model.safetensors"});
}

TEST_CASE("prompt, prefix and affix tuning train, resume, evaluate, generate; merge refuses",
          "[train][virtual]") {
  check_unmergeable_methods(
      "--set 'peft={\"prompt\": {\"tokens\": 3, \"init_text\": \"Say red\"}, "
      "\"prefix\": {\"tokens\": 2}, \"affix\": {}, \"initial_state\": true, "
      "\"initial_conv_state\": true}' ",
      {"ssmtune_virtual_tokens.safetensors", "ssmtune_state.safetensors"});
}

TEST_CASE("a state-only adapter (no LoRA) is found by eval CONFIG and described by info",
          "[train][state]") {
  Experiment e;
  train_ok(e, "--set 'peft={\"state_offset\": \"y\"}'");
  const fs::path adapter = e.run_dir() / "adapter";
  REQUIRE(fs::exists(adapter / "ssmtune_state.safetensors"));
  CHECK(!fs::exists(adapter / "adapter_config.json"));
  const auto info = run_cli("info " + q(adapter));
  CHECK(info.exit_code == 0);
  CHECK_THAT(info.output, Catch::Contains("\"state_offset\":\"y\"") &&
                              Catch::Contains("2 tensors, 128 parameters"));
  // eval CONFIG evaluates what the run produced: the same loss as its own final eval.
  const auto r = run_cli("--quiet eval --json " + q(e.config));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.output)["adapter"] == adapter.string());
  CHECK(nlohmann::json::parse(r.output)["metrics"]["loss"].get<double>() ==
        Approx(summary(e.run_dir())["eval"]["loss"].get<double>()).epsilon(1e-5));
}
