// Hostile or mistaken input through the binary: every problem is one line
// `error: <file or option>: <what was expected>`, a non-zero exit, no crash and no partial
// output. The models are made here with init_mamba_weights and the byte-level BPE tokenizer
// fixture (data_scripts/make_tokenizer_fixtures.py), as in train_experiment_fixture.h.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_run.h"
#include "data/tokenizer.h"
#include "io/finite_tensors.h"
#include "io/safetensors.h"
#include "model/mamba_init.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::read_file;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;
using ssmtune::test::q;

namespace {

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
  CHECK(r.exit_code == 2);  // the experiment config is the user's configuration
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

namespace {

// A model whose greedy continuation of any prompt is the token that decodes to one NUL byte:
// out_proj = 0 makes every layer add nothing, so the last hidden state is the input token's
// embedding, which is (1, 0, ..., 0) for every token; lm_head (untied) scores only the NUL
// token, sqrt(D) > 0 after the final RMSNorm, and every other token 0.
fs::path nul_model(const Experiment& e, std::int64_t& nul_id) {
  const fs::path base = e.dir / "model", model = e.dir / "nul-model";
  ssmtune::ModelConfig c = ssmtune::load_model_config(base.string());
  ssmtune::ModelWeights w = ssmtune::load_model_weights(base.string(), c);
  const auto tokenizer = ssmtune::load_tokenizer(base.string());
  nul_id = -1;
  for (std::int64_t id = 0; id < tokenizer->vocab_size() && nul_id < 0; ++id)
    if (tokenizer->decode({id}) == std::string(1, '\0')) nul_id = id;
  REQUIRE(nul_id >= 0);
  c.tie_word_embeddings = false;
  w.embedding = ssmtune::Tensor::zeros(w.embedding.shape(), ssmtune::DType::F32);
  w.lm_head = ssmtune::Tensor::zeros(w.embedding.shape(), ssmtune::DType::F32);
  for (std::int64_t v = 0; v < c.vocab_size; ++v) w.embedding.data<float>()[v * c.d_model] = 1;
  w.lm_head.data<float>()[nul_id * c.d_model] = 1;
  for (ssmtune::LayerWeights& layer : w.layers) layer.mamba.out_proj.fill_zero();
  ssmtune::write_mamba_model_dir(model.string(), c, w, /*overwrite=*/false,
                                 ssmtune::tokenizer_files_in(base.string()));
  return model;
}

}  // namespace

TEST_CASE("generate prints decoded bytes exactly, NULs included, as text, ids or json",
          "[cli][generate]") {
  const Experiment e;
  std::int64_t nul = -1;
  const fs::path model = nul_model(e, nul);
  const std::string args = "--quiet generate --model " + q(model) + " --max-new-tokens 3 ";
  auto r = run_cli(args + "--prompt 'Say'");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(r.output == std::string("Say\0\0\0\n", 7));
  // Two prompts: one result each, in order.
  r = run_cli(args + "--prompt 'Say' --prompt 'a b' --output ids");
  REQUIRE(r.exit_code == 0);
  const std::string ids = std::to_string(nul) + " " + std::to_string(nul) + " " +
                          std::to_string(nul) + "\n";
  CHECK(r.output == ids + ids);
  r = run_cli(args + "--prompt 'Say' --output json");
  REQUIRE(r.exit_code == 0);
  const nlohmann::json j = nlohmann::json::parse(r.output);
  CHECK(j["prompt"] == "Say");
  CHECK(j["ids"] == nlohmann::json::array({nul, nul, nul}));
  CHECK(j["text"] == std::string(3, '\0'));
  CHECK(j["prompt_tokens"].get<std::int64_t>() >= 1);
  CHECK(j["stop_reason"] == "length");
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  require_usage_error(args + "--prompt x --output xml", "--output");
}

namespace {

// A 1-step LoRA run of the fixture experiment: its adapter and the arguments that evaluate it.
struct TrainedAdapter {
  Experiment e{/*steps=*/1, /*checkpoint_every=*/0, /*eval_every=*/0};
  fs::path adapter = e.run_dir() / "adapter";
  TrainedAdapter() {
    const auto r = run_cli(e.train_args());
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
  }
  std::string eval_args() const {
    return "--quiet eval --model " + q(e.dir / "model") + " --adapter " + q(adapter) +
           " --data " + q(e.dir / "eval.jsonl");
  }
  std::string merge_args(const fs::path& out) const {
    return "--quiet merge-adapter --model " + q(e.dir / "model") + " --adapter " + q(adapter) +
           " --out " + q(out);
  }
};

// A failure of the whole command: exit 1, one line `error: <fragment>...`.
void require_one_line_error(const std::string& args, const std::string& start) {
  const auto r = run_cli(args);
  INFO(args << "\n" << r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::StartsWith("error: " + start));
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
}

}  // namespace

TEST_CASE("an adapter holding NaN or Inf is refused naming the file and tensor",
          "[cli][bad-input]") {
  TrainedAdapter t;
  const fs::path file = t.adapter / "adapter_model.safetensors";
  const std::string tensor = "base_model.model.backbone.layers.1.mixer.out_proj.lora_A.weight";
  ssmtune::test::poke_f32(file, tensor, 5, std::numeric_limits<float>::quiet_NaN());
  const std::string message = file.string() + ": tensor \"" + tensor +
                              "\" holds a non-finite value (NaN or Inf) at element 5";
  require_one_line_error(t.eval_args(), message);
  const fs::path merged = t.e.dir / "merged";
  require_one_line_error(t.merge_args(merged), message);
  CHECK(!fs::exists(merged));
  ssmtune::test::poke_f32(file, tensor, 5, -std::numeric_limits<float>::infinity());
  require_one_line_error(t.eval_args(), message);
  // The optimizer state of a checkpoint is read with the same check (--resume).
  Experiment e(/*steps=*/4, /*checkpoint_every=*/2, /*eval_every=*/0);
  REQUIRE(run_cli(e.train_args()).exit_code == 0);
  const fs::path optimizer = e.run_dir() / "checkpoint-2" / "optimizer.safetensors";
  std::string moment;  // the first moment the file holds
  // A named file: a range-for over a temporary's entries() reads them after the file is gone.
  const auto optimizer_file = ssmtune::SafetensorsFile::open(optimizer);
  for (const auto& entry : optimizer_file.entries())
    if (moment.empty() && entry.name.rfind("m.", 0) == 0) moment = entry.name;
  REQUIRE(!moment.empty());
  ssmtune::test::poke_f32(optimizer, moment, 0, std::numeric_limits<float>::infinity());
  fs::remove_all(e.run_dir() / "checkpoint-4");
  require_one_line_error(e.train_args("--resume"), optimizer.string() + ": tensor \"" + moment);
}

TEST_CASE("write_safetensors refuses NaN and Inf, naming the tensor, and keeps the old file",
          "[io][safetensors]") {
  ssmtune::test::TempDir dir;
  const fs::path path = dir / "m.safetensors";
  ssmtune::Tensor t = ssmtune::Tensor::zeros({4}, ssmtune::DType::F32);
  ssmtune::write_safetensors(path, {{"w", t}});
  const std::string before = read_file(path);
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity()}) {
    t.data<float>()[2] = bad;
    ssmtune::test::require_error(
        [&] {
          const ssmtune::Tensor ids = ssmtune::Tensor::zeros({2}, ssmtune::DType::I64);
          ssmtune::write_safetensors(path, {{"ok", ids}, {"w", t}});
        },
        {path.string() + ": tensor \"w\" holds a non-finite value (NaN or Inf) at element 2; "
                         "not writing it"});
    // In every float dtype.
    for (const auto dtype : {ssmtune::DType::F64, ssmtune::DType::F16, ssmtune::DType::BF16})
      ssmtune::test::require_error([&] { ssmtune::write_safetensors(path, {{"w", t.to(dtype)}}); },
                                   {"tensor \"w\" holds a non-finite value"});
    CHECK(read_file(path) == before);
  }
  for (const auto& f : fs::directory_iterator(dir.path()))
    CHECK(f.path().filename() == "m.safetensors");  // no temporary left
}

TEST_CASE("adapter_config.json's target_modules must agree with the tensors present",
          "[cli][bad-input]") {
  TrainedAdapter t;
  const fs::path config = t.adapter / "adapter_config.json";
  const std::string file = config.string();
  const nlohmann::json original = nlohmann::json::parse(read_file(config));
  const auto with_targets = [&](const nlohmann::json& targets) {
    nlohmann::json j = original;
    j["target_modules"] = targets;
    std::ofstream(config) << j.dump(2);
  };
  const std::string st = (t.adapter / "adapter_model.safetensors").string();
  // A module with tensors that no target names.
  nlohmann::json fewer = original["target_modules"];
  const std::string dropped = fewer.back();
  fewer.erase(fewer.size() - 1);
  with_targets(fewer);
  require_one_line_error(t.eval_args(), file + ": field \"target_modules\": no entry matches "
                                               "module \"" + dropped + "\", which has LoRA "
                                               "tensors in " + st);
  // A target without tensors.
  nlohmann::json more = original["target_modules"];
  more.push_back("dt_proj");
  with_targets(more);
  require_one_line_error(t.eval_args(), file + ": field \"target_modules\": \"dt_proj\" matches "
                                               "no module with LoRA tensors in " + st);
  const fs::path merged = t.e.dir / "merged";
  require_one_line_error(t.merge_args(merged), file + ": field \"target_modules\"");
  CHECK(!fs::exists(merged));
  with_targets(nlohmann::json::array());
  require_one_line_error(t.eval_args(), file + ": field \"target_modules\": no entry matches");
  with_targets(3);
  require_one_line_error(t.eval_args(), file + ": field \"target_modules\": expected a list");
  // PEFT's short names (suffixes of the module names) that cover every module are fine.
  with_targets({"in_proj", "x_proj", "out_proj"});
  CHECK(run_cli(t.eval_args()).exit_code == 0);
}

TEST_CASE("training that diverges stops naming the step, keeps the last good checkpoint and "
          "writes no NaN",
          "[cli][train]") {
  // With lr 1e30 the first update makes the LoRA matrices ~1e30: finite, and the step-1
  // checkpoint saves them; step 2's product B A overflows float32, so its loss is not finite.
  Experiment e(/*steps=*/6, /*checkpoint_every=*/1, /*eval_every=*/0);
  auto r = run_cli(e.train_args("--set optimizer.lr=1e30 --set optimizer.grad_clip=0"));
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("error: training diverged at step "));
  CHECK_THAT(r.output, !Catch::Contains("-nan"));  // "nan", not std::to_string's "-nan"
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  CHECK(!fs::exists(e.run_dir() / "adapter"));
  CHECK(!fs::exists(e.run_dir() / "summary.json"));
  // Every file written holds finite values only.
  int checkpoints = 0;
  for (const auto& f : fs::recursive_directory_iterator(e.run_dir())) {
    if (f.path().filename() == "adapter_config.json") ++checkpoints;
    if (f.path().extension() == ".safetensors")
      CHECK_NOTHROW(ssmtune::check_finite_tensors(ssmtune::SafetensorsFile::open(f.path())));
  }
  CHECK(checkpoints >= 1);
  // An lr so large that an update overflows float32: the loss that step was finite, so it is the
  // weights that are caught, before the checkpoint of that step is written.
  fs::remove_all(e.run_dir());
  r = run_cli(e.train_args("--set optimizer.lr=1e39 --set optimizer.grad_clip=0"));
  CHECK(r.exit_code == 1);
  const std::string prefix = "error: training diverged at step ";
  REQUIRE_THAT(r.output, Catch::StartsWith(prefix) && Catch::Contains("holds a non-finite value"));
  const std::size_t colon = r.output.find(':', prefix.size());
  const std::string step = r.output.substr(prefix.size(), colon - prefix.size());
  CHECK(!fs::exists(e.run_dir() / ("checkpoint-" + step)));
  CHECK(!fs::exists(e.run_dir() / "adapter"));
}

TEST_CASE("a LoRA rank or other size too large for memory is refused naming the key and sizes",
          "[cli][train]") {
  // ulimit -v caps the address space at 2 GB: the sizes below need 11 GB and 3.2 GB with their
  // gradients and AdamW's moments; the run stops before allocating them or writing anything.
  Experiment e(/*steps=*/1, /*checkpoint_every=*/0, /*eval_every=*/0);
  const std::string limit = "ulimit -v 2000000;";
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer reserves terabytes of shadow address space at start, so no process of the
  // sanitizer build starts under ulimit -v (docs/reliability.md "Sanitizers"): only the run
  // that fits is checked there; the Release build checks the refusals.
  WARN("sanitizer build: the refusals under ulimit -v are checked by the Release build only");
  CHECK(run_cli(e.train_args("--set peft.lora.rank=64")).exit_code == 0);
  return;
#endif
  auto r = run_cli(e.train_args("--set peft.lora.rank=1048576"), limit);
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::StartsWith("error: peft.lora.rank = 1048576 on 6 modules: "
                                         "687865856 trainable parameters need 11.0 GB with "
                                         "their gradients and AdamW state; ") &&
                           Catch::EndsWith(" GB of memory is available\n"));
  r = run_cli(e.train_args("--set peft.parallel_adapter.rank=1048576"), limit);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::StartsWith("error: peft.parallel_adapter.rank = 1048576: "));
  CHECK(!fs::exists(e.run_dir()));
  // The same rank where it fits trains.
  CHECK(run_cli(e.train_args("--set peft.lora.rank=64"), limit).exit_code == 0);
}

TEST_CASE("one run per output directory: a second run, or --resume of a live one, is refused",
          "[cli][train]") {
  Experiment e(/*steps=*/2, /*checkpoint_every=*/1, /*eval_every=*/0);
  REQUIRE(run_cli(e.train_args()).exit_code == 0);
  // This process holds the run's lock as a live run does (io/run_lock.h), its pid in the file.
  const fs::path lock_file = e.run_dir() / ".ssmtune.lock";
  const int fd = ::open(lock_file.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
  const std::string pid = std::to_string(::getpid());
  REQUIRE(::ftruncate(fd, 0) == 0);
  REQUIRE(::pwrite(fd, pid.data(), pid.size(), 0) == ssize_t(pid.size()));
  const std::string refused = "error: " + e.run_dir().string() + ": another ssmtune run (pid " +
                              pid + ") is using this output directory; wait for it to end or "
                              "choose another output_dir\n";
  for (const std::string& args : {std::string("--resume"), std::string()}) {
    const auto r = run_cli(e.train_args(args));
    CHECK(r.exit_code == 1);
    CHECK(r.output == refused);
  }
  // merge-adapter writing into the run's directory takes the same lock.
  const fs::path merged = e.run_dir() / "merged";
  const auto m = run_cli("merge-adapter --model " + q(e.dir / "model") + " --adapter " +
                         q(e.run_dir() / "adapter") + " --out " + q(merged));
  CHECK(m.exit_code == 1);
  CHECK(m.output == refused);
  CHECK(!fs::exists(merged));
  // Staging directories: a live process's (this one's) stays, a dead one's is removed.
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  REQUIRE(::waitpid(dead, nullptr, 0) == dead);
  const fs::path live_staging = e.run_dir() / ("checkpoint-9.tmp." + pid + ".0");
  const fs::path dead_staging = e.run_dir() / ("checkpoint-9.tmp." + std::to_string(dead) + ".0");
  fs::create_directory(live_staging);
  fs::create_directory(dead_staging);
  ::close(fd);  // the live run ends
  const auto r = run_cli(e.train_args("--resume"));
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(fs::exists(live_staging));
  CHECK(!fs::exists(dead_staging));
}
