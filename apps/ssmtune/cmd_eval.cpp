// ssmtune eval: loss, perplexity, accuracy (classification) and exact match (generation) of a
// model with an optional adapter on a JSONL dataset, either as an experiment config says or
// from flags alone.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>

#include "apps/ssmtune/commands.h"
#include "apps/ssmtune/option_checks.h"
#include "backend/backend.h"
#include "data/jsonl_dataset.h"
#include "data/tokenizer.h"
#include "model/causal_lm.h"
#include "model/weight_storage.h"
#include "peft/lora_adapter_io.h"
#include "peft/merge.h"
#include "train/evaluate.h"
#include "train/experiment_config.h"

namespace fs = std::filesystem;

namespace ssmtune {

namespace {

struct EvalArgs {
  std::string config;
  std::vector<std::string> overrides;
  std::string model, adapter, data;
  std::vector<std::string> metrics;
  std::int64_t batch_size = 8, max_length = 0, max_examples = 0, max_new_tokens = 0;
  std::string format;
  std::string device = "cpu";
  std::string frozen_weights;  // "fp32" or "bf16"; empty: the config's, else fp32
  bool json = false;
};

void run_eval(const EvalArgs& a) {
  std::string model = a.model, adapter = a.adapter, data = a.data;
  DataConfig data_cfg;
  EvalConfig eval_cfg;
  std::string classes_from;  // the training set whose class names the eval set uses, or ""
  DataConfig classes_cfg;    // how that set is read: the config's data section
  std::string frozen_weights = a.frozen_weights.empty() ? "fp32" : a.frozen_weights;
  if (!a.config.empty()) {
    const ExperimentConfig cfg = load_experiment_config(a.config, a.overrides);
    if (a.frozen_weights.empty()) frozen_weights = cfg.training.frozen_weights;
    if (model.empty()) model = cfg.model;
    data_cfg = cfg.data;
    eval_cfg = cfg.eval;
    if (data.empty()) data = cfg.data.eval;
    if (data.empty())
      throw UsageError(cfg.source +
                       ": field \"data.eval\": needed by ssmtune eval (or pass --data)");
    // What the run produced, unless told otherwise.
    if (adapter.empty() && a.model.empty()) {
      const fs::path out = cfg.output_dir;
      if (is_adapter_dir(out / "adapter")) {  // LoRA and/or state methods
        adapter = (out / "adapter").string();
      } else if (fs::exists(out / "model" / "config.json")) {
        model = (out / "model").string();
      }
    }
    // Classification is scored against the training set's classes (as during training).
    if (cfg.data.labels.empty()) {
      classes_from = cfg.data.train;
      classes_cfg = cfg.data;
    }
  } else if (model.empty() || data.empty()) {
    throw UsageError("ssmtune eval needs an experiment config, or --model and --data");
  }
  if (!a.metrics.empty()) eval_cfg.metrics = a.metrics;
  eval_cfg.batch_size = a.batch_size;
  if (a.max_examples > 0) eval_cfg.max_examples = a.max_examples;
  if (a.max_new_tokens > 0) eval_cfg.max_new_tokens = a.max_new_tokens;
  if (a.max_length > 0) data_cfg.max_length = a.max_length;
  if (!a.format.empty())
    data_cfg.format = a.format == "text"                ? DataFormat::Text
                      : a.format == "prompt_completion" ? DataFormat::PromptCompletion
                      : a.format == "tokens"            ? DataFormat::Tokens
                      : a.format == "classification"    ? DataFormat::Classification
                                                        : DataFormat::Auto;

  std::unique_ptr<Backend> be = make_backend(a.device);
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(model);
  std::vector<std::string> class_names;
  const bool may_classify =
      data_cfg.format == DataFormat::Classification || data_cfg.format == DataFormat::Auto;
  if (may_classify && !classes_from.empty())
    class_names = load_jsonl_dataset(classes_from, classes_cfg, *tokenizer).class_names;
  const Dataset ds = load_jsonl_dataset(data, data_cfg, *tokenizer, class_names);
  const LoadedModel m = load_model_with_adapter(
      model, adapter, *be, frozen_weights_dtype(frozen_weights, "--frozen-weights"));
  CausalLM lm(m.cfg, m.weights, *be);
  lm.set_scan_hook(m.scan_hook());
  lm.set_hook(m.hook());
  lm.set_input_hook(m.input_hook());
  EvalInputs in{lm, *tokenizer, *be, [&] { return m; }, m.scan_hook(), m.hook(), m.input_hook()};
  const EvalResult r = evaluate(in, ds, eval_cfg);

  if (a.json) {
    nlohmann::json j = {{"model", model},           {"adapter", adapter},   {"data", data},
                        {"examples", r.n_examples}, {"tokens", r.n_tokens}, {"metrics", r.metrics}};
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("model    %s%s%s\n", model.c_str(), adapter.empty() ? "" : " + ", adapter.c_str());
  std::printf("data     %s (%lld examples, %lld loss tokens)\n", data.c_str(),
              (long long)r.n_examples, (long long)r.n_tokens);
  for (const auto& [k, v] : r.metrics) std::printf("%-12s %.4f\n", k.c_str(), v);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "eval",
      "Evaluate a model (and adapter) on a JSONL dataset.\n"
      "Examples: ssmtune eval configs/quickstart.json\n"
      "          ssmtune eval --model DIR --adapter runs/x/adapter --data eval.jsonl "
      "--metrics loss,accuracy");
  static EvalArgs a;
  cmd->add_option("config", a.config,
                  "experiment config: its eval set and metrics, on what the run produced "
                  "(<output_dir>/adapter or /model) when that exists, else the base model");
  cmd->add_option("--set", a.overrides, "override a config key: key.path=value (repeatable)");
  cmd->add_option("--model", a.model, "model directory");
  cmd->add_option("--adapter", a.adapter, "LoRA adapter directory");
  cmd->add_option("--data", a.data, "JSONL dataset");
  cmd->add_option("--metrics", a.metrics, "loss, perplexity, accuracy, exact_match")
      ->delimiter(',')
      ->check(CLI::IsMember({"loss", "perplexity", "accuracy", "exact_match"}));
  cmd->add_option("--format", a.format, "dataset format (default: auto)")
      ->check(CLI::IsMember({"auto", "text", "prompt_completion", "tokens", "classification"}));
  cmd->add_option("--batch-size", a.batch_size, "examples per forward pass")
      ->check(CLI::Range(1, 1 << 16));
  // 0 stands for "not given" below, so a given value must be positive (the config's ranges).
  cmd->add_option("--max-length", a.max_length, "tokens per example (default: config or 256)")
      ->check(CLI::Range(std::int64_t(2), kMaxOptionSize));
  cmd->add_option("--max-examples", a.max_examples, "evaluate only the first N examples")
      ->check(CLI::Range(std::int64_t(1), kMaxOptionCount));
  cmd->add_option("--max-new-tokens", a.max_new_tokens, "generation length for exact_match")
      ->check(CLI::Range(std::int64_t(1), kMaxOptionSize));
  cmd->add_option("--device", a.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--frozen-weights", a.frozen_weights,
                  "hold the base weights in fp32 or bf16 (half the memory; fp32 math); "
                  "default: the config's training.frozen_weights, else fp32")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_flag("--json", a.json, "print one JSON object");
  cmd->callback([] { run_eval(a); });
}

}  // namespace ssmtune
