#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json_fields.h"
#include "io/json_file.h"
#include "io/staged_dir.h"
#include "peft/peft_model.h"
#include "train/adamw.h"
#include "io/fault_injection.h"

namespace fs = std::filesystem;

namespace ssmtune {

namespace {

nlohmann::json state_to_json(const TrainerState& s) {
  // RNG words as decimal strings: JSON numbers are doubles to many readers.
  nlohmann::json rng = nlohmann::json::array();
  for (std::uint64_t w : s.dropout_rng) rng.push_back(std::to_string(w));
  return {{"step", s.step},
          {"data_epoch", s.data_epoch},
          {"data_index", s.data_index},
          {"dropout_rng", rng},
          {"config_hash", s.config_hash},
          {"tokens_seen", s.tokens_seen},
          {"last_loss", s.last_loss},
          {"elapsed_s", s.elapsed_s},
          {"best_metric", s.best_metric},
          {"has_best", s.has_best},
          {"evals_without_improvement", s.evals_without_improvement},
          {"optimizer_start_step", s.optimizer_start_step}};
}

TrainerState state_from_json(const nlohmann::json& j, const std::string& file) {
  const JsonFields f(j, file);
  TrainerState s;
  auto need_int = [&](const char* key) {
    const auto v = f.get_int(key, 0, INT64_MAX);
    if (!v) throw Error(f.where(key) + ": missing");
    return *v;
  };
  s.step = need_int("step");
  s.data_epoch = need_int("data_epoch");
  s.data_index = need_int("data_index");
  s.tokens_seen = need_int("tokens_seen");
  s.evals_without_improvement = need_int("evals_without_improvement");
  s.optimizer_start_step = f.get_int("optimizer_start_step", 0, s.step).value_or(0);
  s.config_hash = f.get_string("config_hash").value_or("");
  s.elapsed_s = f.get_number("elapsed_s").value_or(0);
  s.last_loss = f.get_number("last_loss").value_or(0);
  s.best_metric = f.get_number("best_metric").value_or(0);
  s.has_best = f.get_bool("has_best").value_or(false);
  if (!f.has("dropout_rng") || !f.raw("dropout_rng").is_array() || f.raw("dropout_rng").size() != 4)
    throw Error(f.where("dropout_rng") + ": expected an array of 4 decimal strings");
  for (std::size_t i = 0; i < 4; ++i) {
    const nlohmann::json& w = f.raw("dropout_rng")[i];
    const std::string text = w.is_string() ? w.get<std::string>() : "";
    if (text.empty() || text.size() > 20 ||
        text.find_first_not_of("0123456789") != std::string::npos)
      throw Error(f.where("dropout_rng") + ": expected an array of 4 decimal strings");
    s.dropout_rng[i] = std::stoull(text);
  }
  return s;
}

}  // namespace

std::vector<fs::path> list_checkpoints(const fs::path& output_dir) {
  static const std::regex name_re("checkpoint-([0-9]{1,15})");
  std::vector<std::pair<std::int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (e.is_directory(ec) && std::regex_match(name, m, name_re))
      found.push_back({std::stoll(m[1]), e.path()});
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [step, path] : found) out.push_back(path);
  return out;
}

fs::path write_checkpoint(const fs::path& output_dir, const TrainerState& state,
                          const PeftModel& peft, const AdamW& optimizer,
                          const std::string& base_model, std::int64_t keep) {
  const fs::path final_dir = output_dir / ("checkpoint-" + std::to_string(state.step));
  {
    StagedDir staged(final_dir, /*replace=*/true);
    peft.save(staged.path(), base_model, {{"ssmtune.step", std::to_string(state.step)}});
    kill_point("checkpoint: parameters written");
    optimizer.save(staged.path() / "optimizer.safetensors");
    fault_point("SSMTUNE_FAULT_KILL_IN_CHECKPOINT", state.step);
    // Written last: a checkpoint is only read when its state file exists and parses.
    write_file_atomic(staged.path() / "trainer_state.json", state_to_json(state).dump(2) + "\n");
    staged.commit();
  }
  if (keep > 0) {
    const std::vector<fs::path> all = list_checkpoints(output_dir);
    for (std::size_t i = 0; i + std::size_t(keep) < all.size(); ++i) {
      // Renamed to a staging name first, so a kill during the removal leaves a leftover the
      // next run removes (remove_stale_staging), never a checkpoint-N missing some files.
      fs::path doomed = all[i];
      doomed += ".pruned.tmp." + std::to_string(::getpid()) + "." + std::to_string(i);
      std::error_code ec;
      fs::rename(all[i], doomed, ec);
      if (ec) doomed = all[i];
      kill_point("checkpoint: an old one renamed for removal");
      fs::remove_all(doomed, ec);
    }
  }
  return final_dir;
}

TrainerState read_checkpoint(const fs::path& dir, PeftModel& peft, AdamW& optimizer) {
  const fs::path state_file = dir / "trainer_state.json";
  const TrainerState s = state_from_json(read_json_file(state_file), state_file.string());
  peft.load(dir);
  optimizer.load(dir / "optimizer.safetensors");
  if (optimizer.steps_taken() != s.step - s.optimizer_start_step)
    throw Error((dir / "optimizer.safetensors").string() + ": step " +
                std::to_string(optimizer.steps_taken()) + " does not match " + state_file.string() +
                "'s step " + std::to_string(s.step) + " (optimizer started at step " +
                std::to_string(s.optimizer_start_step) + ")");
  return s;
}

}  // namespace ssmtune
