#include "train/trainer.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>

#include "backend/backend.h"
#include "core/error.h"
#include "data/batcher.h"
#include "data/jsonl_dataset.h"
#include "data/tokenizer.h"
#include "io/atomic_file.h"
#include "io/finite_tensors.h"
#include "io/json_file.h"
#include "io/run_lock.h"
#include "io/staged_dir.h"
#include "model/mamba_init.h"
#include "model/model_dir.h"
#include "model/causal_lm.h"
#include "model/weight_storage.h"
#include "peft/lora_adapter_io.h"
#include "peft/merge.h"
#include "peft/peft_model.h"
#include "peft/sdt.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "io/fault_injection.h"
#include "train/interrupt.h"
#include "train/metrics_log.h"
#include "train/schedule.h"
#include "train/train_step.h"

namespace fs = std::filesystem;

namespace ssmtune {

namespace {

using Clock = std::chrono::steady_clock;

// Lower is better for losses, higher for the rest.
bool improves(const std::string& metric, double value, double best, double min_delta) {
  if (metric == "loss" || metric == "perplexity") return value < best - min_delta;
  return value > best + min_delta;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = long(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  return buf;
}

std::string metrics_text(const std::map<std::string, double>& m) {
  std::string s;
  for (const auto& [k, v] : m) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%s %.4f", s.empty() ? "" : ", ", k.c_str(), v);
    s += buf;
  }
  return s;
}

// Refuses to start a fresh run on top of another run's files.
void check_fresh_output_dir(const fs::path& out) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return;
  if (!fs::is_directory(out, ec))
    throw UsageError("output_dir " + out.string() + " exists and is not a directory");
  const bool has_run = !list_checkpoints(out).empty() || fs::exists(out / "metrics.jsonl") ||
                       fs::exists(out / "adapter") || fs::exists(out / "model");
  if (has_run)
    throw UsageError("output_dir " + out.string() +
                     " already holds a run; pass --resume to continue it, or choose another "
                     "output_dir (--set output_dir=...)");
}

// SDT's selection: one line per layer on the log, the whole of it in
// <output_dir>/sdt_selection.json.
// `selection` has one entry per Mamba layer (sdt.h).
void report_sdt_selection(const ModelConfig& mcfg, const std::vector<SdtLayerSelection>& selection,
                          const fs::path& out) {
  const nlohmann::json json = sdt_selection_json(mcfg, selection);
  spdlog::info("sdt: warmup done; selected per layer ({}):",
               mcfg.is_mamba2() ? "heads: B/C states kept" : "channels: A_log states kept");
  for (std::size_t i = 0; i < selection.size(); ++i) {
    std::string line;
    for (std::size_t j = 0; j < selection[i].channels.size(); ++j) {
      line += (j ? " " : "") + std::to_string(selection[i].channels[j]) + ":";
      for (std::size_t k = 0; k < selection[i].states[j].size(); ++k)
        line += (k ? "," : "") + std::to_string(selection[i].states[j][k]);
    }
    spdlog::info("  layer {}: {}", json["layers"][i]["layer"].get<std::int64_t>(), line);
  }
  write_file_atomic(out / "sdt_selection.json", json.dump(1) + "\n");
}

// An lr large enough makes the weights Inf or NaN while the step's loss and gradient are still
// finite; the next step's loss would show it only after a checkpoint had saved them. Checked
// before anything holding the weights is written, so the last good checkpoint stays the newest.
void check_trainables_finite(PeftModel& peft, std::int64_t step) {
  for (const TrainableParam& p : peft.trainables()) {
    const std::int64_t bad = first_non_finite(p.value.host_readable());
    if (bad >= 0)
      throw Error("training diverged at step " + std::to_string(step) + ": trainable tensor " +
                  quote_str(p.name) + " holds a non-finite value (NaN or Inf) at element " +
                  std::to_string(bad) + " after the update; lower optimizer.lr");
  }
}

void make_output_dir(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out))
    throw Error("output_dir " + out.string() +
                ": cannot create it: " + (ec ? ec.message() : "not a directory"));
}

}  // namespace

TrainResult train(const ExperimentConfig& cfg, const TrainOptions& opts) {
  if (cfg.data.train.empty())
    throw UsageError(cfg.source + ": field \"data.train\": required by ssmtune train");
  if (cfg.training.threads > 0) omp_set_num_threads(int(cfg.training.threads));
  const fs::path out = cfg.output_dir;
  const bool resuming = opts.resume || !opts.resume_from.empty();
  // One run per output directory (io/run_lock.h), held to the end: taken before anything in it
  // is read, so a second run into it, or --resume of a live run, is refused naming the holder.
  std::optional<RunLock> lock;
  std::error_code ec;
  if (fs::is_directory(out, ec)) lock.emplace(out);
  if (!resuming) check_fresh_output_dir(out);

  // Everything that reads input comes first, so a bad file fails before anything is written.
  const ModelConfig mcfg = load_model_config(cfg.model);
  // Frozen base weights in bf16 when asked; PeftModel holds the ones it trains in fp32.
  ModelWeights weights = load_model_weights(
      cfg.model, mcfg,
      frozen_weights_dtype(cfg.training.frozen_weights, cfg.source + ": training.frozen_weights"));
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(cfg.model);
  if (tokenizer->vocab_size() > mcfg.vocab_size)
    throw Error(tokenizer->source() + ": the tokenizer has " +
                std::to_string(tokenizer->vocab_size()) + " tokens but the model's vocab_size is " +
                std::to_string(mcfg.vocab_size));
  const Dataset train_set = load_jsonl_dataset(cfg.data.train, cfg.data, *tokenizer);
  Dataset eval_set;
  const bool has_eval = !cfg.data.eval.empty();
  if (has_eval) {
    eval_set = load_jsonl_dataset(cfg.data.eval, cfg.data, *tokenizer, train_set.class_names);
    check_metrics_fit(cfg.eval.metrics, eval_set);
  }
  if (train_set.n_truncated)
    spdlog::warn("{}: {} examples truncated to max_length {}", train_set.path,
                 train_set.n_truncated, cfg.data.max_length);

  std::unique_ptr<Backend> be =
      opts.make_backend ? opts.make_backend()
                        : make_backend(cfg.training.device, cfg.training.matmul);
  PeftConfig peft_cfg = cfg.peft;
  const std::string& init_text = peft_cfg.virtual_tokens.prompt_init_text;
  if (!init_text.empty()) {  // prompt tuning starts from this text's embeddings
    peft_cfg.virtual_tokens.prompt_init_ids = tokenizer->encode(init_text);
    if (peft_cfg.virtual_tokens.prompt_init_ids.empty())
      throw UsageError(cfg.source + ": field \"peft.prompt.init_text\": the text has no tokens");
  }
  PeftModel peft(mcfg, weights, peft_cfg, *be, cfg.seed);
  // SDT trains another set after its warmup: n_trainable follows the current phase.
  std::int64_t n_trainable = peft.n_trainable();
  const std::int64_t n_trainable_at_start = n_trainable;
  std::int64_t n_total = 0;
  for_each_param(mcfg, weights, [&](const std::string&, Tensor& t) { n_total += t.numel(); });
  for (const std::string& line : peft.summary()) spdlog::info("{}", line);
  if (peft.lora())
    for (const LoraTerm& t : peft.lora()->terms())
      spdlog::debug("  LoRA {} on {} rows [{}, {})", t.name, t.module, t.row0, t.row0 + t.rows);
  spdlog::info("trainable parameters: {} of {} ({:.4f}%)", n_trainable, n_total,
               100.0 * double(n_trainable) / double(n_total));
  spdlog::info("base weights held: {:.1f} MB (frozen weights {})",
               double(held_param_bytes(mcfg, weights)) / 1e6, cfg.training.frozen_weights);

  CausalLM lm(mcfg, peft.weights(), *be, cfg.training.scan_chunk);
  lm.set_recompute_mixers(cfg.training.recompute == "mixers");
  lm.set_hook(peft.hook());
  lm.set_scan_hook(peft.scan_hook());
  lm.set_input_hook(peft.input_hook());
  AdamW optimizer(cfg.optimizer, peft.trainables(), *be);
  EpochSampler sampler(std::int64_t(train_set.examples.size()), cfg.seed, cfg.data.shuffle);
  Rng dropout_rng = Rng::for_stream(cfg.seed, stream_id("dropout"));

  const std::int64_t per_epoch =
      (sampler.size() + cfg.training.batch_size - 1) / cfg.training.batch_size;  // micro-batches
  const std::int64_t total_steps =
      cfg.training.steps > 0
          ? cfg.training.steps
          : std::max<std::int64_t>(1,
                                   (cfg.training.epochs * per_epoch + cfg.training.grad_accum - 1) /
                                       cfg.training.grad_accum);

  if (peft.sdt_warming_up() && peft.sdt_warmup_steps() >= total_steps)
    throw UsageError(cfg.source + ": field \"peft.sdt.warmup_steps\": " +
                     std::to_string(peft.sdt_warmup_steps()) + " leaves no step of the " +
                     std::to_string(total_steps) + " for SDT's masked training");

  // Resume: the newest complete checkpoint (or the one named) restores every bit of state.
  TrainerState state;
  state.config_hash = experiment_config_hash(cfg);
  if (resuming) {
    fs::path ckpt = opts.resume_from;
    if (ckpt.empty()) {
      const std::vector<fs::path> all = list_checkpoints(out);
      if (!all.empty()) ckpt = all.back();
    }
    if (ckpt.empty()) {
      spdlog::info("no checkpoint in {}: starting from step 0", out.string());
    } else {
      const std::string hash = state.config_hash;
      state = read_checkpoint(ckpt, peft, optimizer);
      if (state.config_hash != hash)
        throw UsageError(ckpt.string() + " was written by a run with another config (hash " +
                         state.config_hash + ", this config " + hash +
                         "); resume with the config it was trained with");
      sampler.set_position({state.data_epoch, state.data_index});
      dropout_rng.set_state(state.dropout_rng);
      spdlog::info("resuming from {} (step {} of {})", ckpt.string(), state.step, total_steps);
      if (!peft.sdt_selection().empty()) {  // resumed in SDT's masked training
        for (const std::string& line : peft.summary()) spdlog::info("{}", line);
        n_trainable = peft.n_trainable();
      }
    }
  }
  make_output_dir(out);
  if (!lock) lock.emplace(out);
  remove_stale_staging(out);
  if (cfg.peft.full) remove_model_dir_leftovers((out / "model").string());
  write_file_atomic(out / "experiment.json",
                    cfg.json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  // A resumed run rewrites what came after its checkpoint; one with nothing to resume from
  // starts its metrics afresh.
  if (resuming && state.step == 0) fs::remove(out / "metrics.jsonl");
  MetricsLog metrics(out / "metrics.jsonl", resuming && state.step > 0 ? state.step : -1);

  const std::string base_model = fs::absolute(cfg.model).lexically_normal().string();
  auto save_checkpoint = [&] {
    check_trainables_finite(peft, state.step);
    const auto pos = sampler.position();
    state.data_epoch = pos.epoch;
    state.data_index = pos.index;
    state.dropout_rng = dropout_rng.state();
    const fs::path p =
        write_checkpoint(out, state, peft, optimizer, base_model, cfg.checkpoint.keep);
    spdlog::info("checkpoint {}", p.string());
  };
  EvalInputs eval_in{lm,
                     *tokenizer,
                     *be,
                     [&] { return peft.merged(); },
                     peft.scan_hook(),
                     peft.unmerged_hook(),
                     peft.input_hook()};
  // log_row false: the row is in metrics.jsonl already (a resumed run that was complete).
  auto run_eval = [&](bool log_row = true) {
    peft.set_training(false, nullptr);
    const EvalResult r = evaluate(eval_in, eval_set, cfg.eval);
    if (log_row)
      metrics.write({{"step", state.step}, {"eval", r.metrics}, {"eval_examples", r.n_examples}});
    spdlog::info("eval step {}: {}", state.step, metrics_text(r.metrics));
    return r;
  };

  TrainResult result;
  result.total_steps = total_steps;
  result.n_trainable = n_trainable;
  result.output_dir = out.string();
  InterruptGuard interrupts;
  const auto started = Clock::now();
  const double elapsed_before = state.elapsed_s;
  std::int64_t tokens_this_process = 0, steps_this_process = 0;
  double train_s = 0;  // time in training steps only (not eval or checkpoints): tokens/s
  std::map<std::string, double> last_eval;
  // A run resumed from the final checkpoint of one that stopped early stays stopped.
  const EarlyStoppingConfig& early = cfg.eval.early_stopping;
  bool stop_early = early.patience > 0 && state.evals_without_improvement >= early.patience;

  // The baseline: what the model scores before any training (fresh runs only).
  if (has_eval && cfg.eval.every > 0 && state.step == 0) run_eval();

  while (state.step < total_steps && !stop_early) {
    const auto step_start = Clock::now();
    const TransferCounts moved_before = tensor_transfers();
    peft.set_training(true, &dropout_rng);
    // Draw the step's micro-batches first: every token of the step weighs the same.
    std::vector<Batch> micro;
    std::int64_t step_inputs = 0;  // tokens run (no padding)
    for (std::int64_t a = 0; a < cfg.training.grad_accum; ++a) {
      micro.push_back(
          make_batch(train_set, sampler.next(cfg.training.batch_size), tokenizer->pad_id()));
      for (const std::int64_t i : micro.back().example_indices)
        step_inputs += std::int64_t(train_set.examples[i].input_ids.size());
    }
    // SDT's two phases each run the schedule over their own steps (docs/methods.md).
    const std::int64_t phase_steps =
        peft.sdt_warming_up() ? peft.sdt_warmup_steps() : total_steps - state.optimizer_start_step;
    const double lr = scheduled_lr(cfg.schedule, cfg.optimizer.lr,
                                   state.step - state.optimizer_start_step, phase_steps);
    const StepResult step = train_step(lm, peft, optimizer, micro, lr,
                                       cfg.optimizer.grad_clip, state.step + 1);
    const double loss = step.loss, grad_norm = step.grad_norm;
    const std::int64_t step_tokens = step.loss_tokens;
    // On a GPU a step reads no tensor back, only its scalars; what it moves to the device
    // after the first step (which moves the weights and adapters there) is what the host makes
    // fresh each step: the LoRA dropout masks of the host RNG. SDT's switch below reads
    // gradients on purpose.
    if (steps_this_process > 0) {
      const TransferCounts moved = tensor_transfers();
      result.step_moves_to_host += moved.to_host - moved_before.to_host;
      result.step_moves_to_device += moved.to_device - moved_before.to_device;
    }
    state.step += 1;
    if (peft.sdt_warming_up() && state.step == peft.sdt_warmup_steps()) {
      if (opts.progress_line) std::fprintf(stderr, "\n");
      report_sdt_selection(mcfg, peft.end_sdt_warmup(), out);
      for (const std::string& line : peft.summary()) spdlog::info("{}", line);
      n_trainable = peft.n_trainable();
      spdlog::info("trainable parameters: {} of {} ({:.4f}%)", n_trainable, n_total,
                   100.0 * double(n_trainable) / double(n_total));
      optimizer.reset();
      state.optimizer_start_step = state.step;
    }
    steps_this_process += 1;
    state.tokens_seen += step_tokens;
    tokens_this_process += step_inputs;
    state.last_loss = loss;

    const double now_s = std::chrono::duration<double>(Clock::now() - started).count();
    state.elapsed_s = elapsed_before + now_s;
    const double step_s = std::chrono::duration<double>(Clock::now() - step_start).count();
    train_s += step_s;
    const double tokens_per_s = train_s > 0 ? double(tokens_this_process) / train_s : 0.0;
    if (state.step % cfg.training.log_every == 0 || state.step == total_steps) {
      const auto pos = sampler.position();
      nlohmann::json row = {{"step", state.step},
                            {"epoch", double(pos.epoch) + double(pos.index) / double(sampler.size())},
                            {"loss", loss},
                            {"lr", lr},
                            {"grad_norm", grad_norm},
                            {"tokens", step_inputs},
                            {"loss_tokens", step_tokens},
                            {"tokens_per_s", tokens_per_s},
                            {"step_s", step_s},
                            {"elapsed_s", state.elapsed_s}};
      // Models with experts: the router load-balancing loss, apart from the LM loss (it is in
      // the objective only when the model's output_router_logits asks for it).
      if (lm.config().n_experts > 1 && lm.config().is_jamba()) {
        row["aux_loss"] = step.aux_loss;
        row["aux_loss_coef"] = lm.router_aux_coef();
      }
      metrics.write(row);
      const double eta = now_s / double(steps_this_process) * double(total_steps - state.step);
      if (opts.progress_line) {
        std::fprintf(stderr, "\rstep %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s   ",
                     (long long)state.step, (long long)total_steps, loss, lr, tokens_per_s,
                     format_duration(eta).c_str());
        std::fflush(stderr);
      } else {
        spdlog::info("step {}/{} loss {:.4f} lr {:.3g} grad_norm {:.3g} {:.0f} tok/s", state.step,
                     total_steps, loss, lr, grad_norm, tokens_per_s);
      }
    }
    fault_point("SSMTUNE_FAULT_KILL_AFTER_STEP", state.step);
    kill_point("step: done");
    const bool last = state.step == total_steps;
    if (has_eval && cfg.eval.every > 0 && state.step % cfg.eval.every == 0 && !last) {
      if (opts.progress_line) std::fprintf(stderr, "\n");
      last_eval = run_eval().metrics;
      const EarlyStoppingConfig& es = early;
      if (es.patience > 0) {
        const auto it = last_eval.find(es.metric);
        if (it == last_eval.end())
          throw UsageError("eval.early_stopping.metric \"" + es.metric +
                           "\" is not one of eval.metrics");
        if (!state.has_best || improves(es.metric, it->second, state.best_metric, es.min_delta)) {
          state.best_metric = it->second;
          state.has_best = true;
          state.evals_without_improvement = 0;
        } else if (++state.evals_without_improvement >= es.patience) {
          spdlog::info("early stopping: {} has not improved for {} evaluations", es.metric,
                       es.patience);
          stop_early = true;
        }
      }
    }
    if (cfg.checkpoint.every > 0 && state.step % cfg.checkpoint.every == 0 && !last)
      save_checkpoint();
    // At the last step a signal lets the run finish: its final checkpoint must come after the
    // final evaluation's row (below).
    if (const int sig = last ? 0 : InterruptGuard::pending()) {
      if (opts.progress_line) std::fprintf(stderr, "\n");
      if (cfg.checkpoint.every == 0 || state.step % cfg.checkpoint.every != 0) save_checkpoint();
      spdlog::warn("interrupted by signal {} at step {}; resume with --resume", sig, state.step);
      result.interrupted = true;
      result.signal = sig;
      result.steps = state.step;
      return result;
    }
  }
  if (opts.progress_line) std::fprintf(stderr, "\n");
  result.stopped_early = stop_early;
  result.steps = state.step;

  // The end: final evaluation, final checkpoint, the adapter / model, the summary. The
  // evaluation's row comes before the checkpoint, so a run resumed from the final checkpoint
  // (nothing left to train) finds it in metrics.jsonl and evaluates again without a second row.
  const bool was_complete = steps_this_process == 0;
  check_trainables_finite(peft, state.step);
  if (has_eval) last_eval = run_eval(/*log_row=*/!was_complete).metrics;
  kill_point("end: final evaluation done");
  save_checkpoint();
  result.eval = last_eval;
  if (cfg.peft.full) {  // a complete model directory, any LoRA merged in
    const LoadedModel merged = peft.merged();
    write_mamba_model_dir((out / "model").string(), merged.cfg, merged.weights, /*overwrite=*/true,
                          tokenizer_files_in(cfg.model));
    spdlog::info("model: {}", (out / "model").string());
  }
  // The adapter: every method's files (LoRA unless merged into model/ above).
  {
    StagedDir adapter(out / "adapter", /*replace=*/true);
    const std::map<std::string, std::string> meta{{"ssmtune.step", std::to_string(state.step)}};
    if (peft.save_adapter(adapter.path(), base_model, meta)) {
      adapter.commit();
      spdlog::info("adapter: {}", (out / "adapter").string());
    }
  }
  if (be->device() != Device::CPU)
    spdlog::info("{}: inside the steps after the first, {} tensors moved to the host, {} to the "
                 "device",
                 be->name(), result.step_moves_to_host, result.step_moves_to_device);
  result.last_loss = state.last_loss;
  result.n_trainable = n_trainable;
  if (was_complete)
    spdlog::info("the run was already complete at step {}: re-evaluated and rewrote its outputs",
                 state.step);
  result.tokens_per_s = train_s > 0 ? double(tokens_this_process) / train_s : 0.0;
  nlohmann::json summary = {{"steps", result.steps},
                            {"total_steps", total_steps},
                            {"last_loss", result.last_loss},
                            {"eval", last_eval},
                            {"tokens_per_s", result.tokens_per_s},
                            {"trainable_parameters", n_trainable},
                            {"trainable_parameters_at_start", n_trainable_at_start},
                            {"total_parameters", n_total},
                            {"stopped_early", stop_early},
                            {"elapsed_s", state.elapsed_s}};
  write_file_atomic(out / "summary.json", summary.dump(2) + "\n");
  kill_point("end: summary written");
  return result;
}

}  // namespace ssmtune
