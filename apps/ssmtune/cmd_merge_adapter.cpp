// ssmtune merge-adapter --model DIR --adapter DIR --out DIR: a complete Hugging Face model
// directory with the LoRA folded into the weights (W += s B A), tokenizer files copied, so
// transformers loads it without peft. Its logits equal the adapter model's (tests/).
#include <spdlog/spdlog.h>

#include "apps/ssmtune/commands.h"
#include "backend/backend.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "model/mamba_init.h"
#include "peft/merge.h"

namespace ssmtune {

namespace {

struct MergeArgs {
  std::string model, adapter, out;
  bool overwrite = false;
};

void run_merge(const MergeArgs& a) {
  check_model_dir_target(a.out, a.overwrite);  // fail before the work, not after
  std::unique_ptr<Backend> be = make_cpu_backend();
  const LoadedModel m = load_model_with_adapter(a.model, a.adapter, *be);
  if (const std::string why = m.unmergeable(); !why.empty())
    throw UsageError(a.adapter + ": cannot be merged: " + why +
                     "; use it with --adapter in eval or generate");
  // The base model's tokenizer files travel along (none if it ships without one).
  write_mamba_model_dir(a.out, m.cfg, m.weights, a.overwrite, tokenizer_files_in(a.model));
  spdlog::info("merged {} into {}: {}", a.adapter, a.model, a.out);
}

}  // namespace

void add_merge_adapter_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "merge-adapter",
      "Fold an adapter (LoRA, partial tuning, BitFit, SDT) into its base model and write a\n"
      "Hugging Face model directory (state methods, additional scan and parallel adapter, which\n"
      "no weight can hold, are refused).\n"
      "Example: ssmtune merge-adapter --model models/base --adapter runs/x/adapter --out merged");
  static MergeArgs a;
  cmd->add_option("--model", a.model, "base model directory")->required();
  cmd->add_option("--adapter", a.adapter,
                  "adapter directory (adapter_config.json + "
                  "adapter_model.safetensors)")
      ->required();
  cmd->add_option("--out", a.out, "model directory to write (its parent must exist)")->required();
  cmd->add_flag("--overwrite", a.overwrite, "replace an existing model directory at --out");
  cmd->callback([] { run_merge(a); });
}

}  // namespace ssmtune
