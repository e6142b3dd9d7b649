// ssmtune train CONFIG: fine-tune as the experiment config says (lib/train/trainer.h), with
// --set overrides for sweeps, --resume after a crash or Ctrl-C, and a summary at the end.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>

#include "apps/ssmtune/commands.h"
#include "apps/ssmtune/format.h"
#include "core/error.h"
#include "train/experiment_config.h"
#include "train/trainer.h"

namespace ssmtune {

namespace {

struct TrainArgs {
  std::string config;
  // --set, --out and --device as config overrides, in the order given: a later one wins.
  std::vector<std::string> overrides;
  bool resume = false;
  std::string resume_from;
};

void run_train(const TrainArgs& a) {
  const ExperimentConfig cfg = load_experiment_config(a.config, a.overrides);
  TrainOptions opts;
  opts.resume = a.resume;
  opts.resume_from = a.resume_from;
  opts.progress_line = ::isatty(2) && spdlog::get_level() <= spdlog::level::info;
  const TrainResult r = train(cfg, opts);
  if (r.interrupted)
    throw Error("interrupted by signal " + std::to_string(r.signal) + " at step " +
                    std::to_string(r.steps) + " of " + std::to_string(r.total_steps) +
                    "; a checkpoint was written; continue with: ssmtune train " + a.config +
                    " --resume",
                128 + r.signal);
  const std::string speed =
      r.tokens_per_s > 0 ? ", " + with_commas(std::int64_t(r.tokens_per_s)) + " tokens/s" : "";
  std::printf("done: %lld/%lld steps%s, train loss %.4f%s, %s trainable parameters\n",
              (long long)r.steps, (long long)r.total_steps,
              r.stopped_early ? " (stopped early)" : "", r.last_loss, speed.c_str(),
              with_commas(r.n_trainable).c_str());
  if (!r.eval.empty()) {
    std::printf("eval:");
    for (const auto& [k, v] : r.eval) std::printf(" %s %.4f", k.c_str(), v);
    std::printf("\n");
  }
  std::printf("output: %s\n", r.output_dir.c_str());
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "train",
      "Fine-tune a model as an experiment config says (docs/config.md).\n"
      "Example: ssmtune train configs/quickstart.json --set peft.lora.rank=16 --out runs/r16");
  static TrainArgs a;
  cmd->add_option("config", a.config, "experiment config (JSON)")->required();
  // Each occurrence is appended as it is parsed (trigger_on_parse), so the three options keep
  // their command-line order between them (docs/config.md: a later override wins).
  const auto override_of = [](std::string key) {
    return [key](const std::string& value) {
      a.overrides.push_back(key + "=" + nlohmann::json(value).dump());
    };
  };
  cmd->add_option_function<std::vector<std::string>>(
         "--set",
         [](const std::vector<std::string>& sets) {
           a.overrides.insert(a.overrides.end(), sets.begin(), sets.end());
         },
         "override a config key: key.path=value (repeatable)")
      ->trigger_on_parse();
  cmd->add_option_function<std::string>("--out", override_of("output_dir"),
                                        "output directory (same as --set output_dir=DIR)")
      ->trigger_on_parse();
  cmd->add_option_function<std::string>(
         "--device", override_of("training.device"),
         "cpu or cuda: where to train (same as --set training.device=...)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->trigger_on_parse();
  cmd->add_flag("--resume", a.resume,
                "continue from the newest checkpoint in the output directory");
  cmd->add_option("--resume-from", a.resume_from, "continue from this checkpoint directory");
  cmd->callback([] { run_train(a); });
}

}  // namespace ssmtune
