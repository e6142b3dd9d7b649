// ssmtune merge-adapter --model DIR --adapter DIR --out DIR: a complete Hugging Face model
// directory with the adapter folded into the weights (LoRA: W += s B A), in the base model's
// dtypes and sharding, its tokenizer and generation config copied, so transformers loads it
// without peft. Its logits equal the adapter model's up to the stored dtype's rounding (tests/).
#include <spdlog/spdlog.h>

#include <filesystem>
#include <optional>

#include "apps/ssmtune/commands.h"
#include "backend/backend.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "io/run_lock.h"
#include "model/model_dir.h"
#include "model/model_dir_as_base.h"
#include "peft/merge.h"

namespace ssmtune {

namespace {

struct MergeArgs {
  std::string model, adapter, out;
  bool overwrite = false;
};

void run_merge(const MergeArgs& a) {
  // Writing into a run's output directory (runs/x/merged): hold the run's lock, so a live
  // train there refuses this, and this run refuses to start while it is live (io/run_lock.h).
  std::optional<RunLock> lock;
  std::filesystem::path out = std::filesystem::absolute(a.out);
  if (!out.has_filename()) out = out.parent_path();  // "runs/x/merged/"
  const std::filesystem::path parent = out.parent_path();
  std::error_code ec;
  if (std::filesystem::is_regular_file(parent / kRunLockFile, ec)) lock.emplace(parent);
  check_model_dir_target(a.out, a.overwrite);  // fail before the work, not after
  std::unique_ptr<Backend> be = make_cpu_backend();
  const LoadedModel m = load_model_with_adapter(a.model, a.adapter, *be);
  if (const std::string why = m.unmergeable(); !why.empty())
    throw UsageError(a.adapter + ": cannot be merged: " + why +
                     "; use it with --adapter in eval or generate");
  // The base model's tokenizer files and generation defaults travel along (those it has).
  std::vector<std::filesystem::path> extra = tokenizer_files_in(a.model);
  const std::filesystem::path generation =
      std::filesystem::path(a.model) / "generation_config.json";
  if (std::filesystem::exists(generation)) extra.push_back(generation);
  // The weights merged in float32, each rounded once to the dtype the base stores it in.
  const WrittenModelDir w =
      write_model_dir_as_base(a.out, a.model, m.cfg, m.weights, a.overwrite, extra);
  spdlog::info("merged {} into {}: {} ({} weight file{}, {} of {} tensors changed)", a.adapter,
               a.model, a.out, w.files, w.files == 1 ? "" : "s", w.changed, w.tensors);
}

}  // namespace

void add_merge_adapter_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "merge-adapter",
      "Fold an adapter (LoRA, partial tuning, BitFit, SDT) into its base model and write a\n"
      "Hugging Face model directory in the base's dtypes and sharding (state methods, additional\n"
      "scan and parallel adapter, which no weight can hold, are refused).\n"
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
