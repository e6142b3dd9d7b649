// The experiment config: one JSON file that says what `ssmtune train` / `eval` do
// (docs/architecture.md "The job"). Every key, its type, range and default is documented in
// docs/config.md; this header is the C++ side of that page. Unknown keys are errors that name the
// closest valid key; `--set a.b=value` overrides (apply_override) are applied to the JSON before it
// is parsed, so they are checked exactly like keys in the file.
//
//   {
//     "model": "../models/mamba-tiny",
//     "output_dir": "runs/quickstart",
//     "seed": 0,
//     "data": {"train": "train.jsonl", "eval": "eval.jsonl", "format": "auto",
//              "max_length": 256, "too_long": "error", "packing": false, "shuffle": true,
//              "add_eos": true, "labels": ["negative", "positive"]},
//     "peft": {"lora": {"targets": ["in_proj", "out_proj"], "rank": 8, "alpha": 8,
//                       "dropout": 0.0, "rslora": false, "init": "kaiming"},
//              "full": false, "init_from": null},
//     "optimizer": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
//                   "no_decay": ["norm", "bias", "A_log", "D"], "grad_clip": 1.0},
//     "schedule": {"type": "linear", "warmup_steps": 0, "warmup_ratio": 0.0, "min_lr_ratio": 0.0},
//     "training": {"steps": 0, "epochs": 1, "batch_size": 4, "grad_accum": 1, "log_every": 1,
//                  "scan_chunk": 64, "threads": 0, "device": "cpu",
//                  "matmul": "fp32", "frozen_weights": "fp32", "recompute": "none"},
//     "eval": {"every": 0, "batch_size": 8, "max_examples": 0, "metrics": ["loss"],
//              "max_new_tokens": 32,
//              "early_stopping": {"metric": "loss", "patience": 0, "min_delta": 0.0}},
//     "checkpoint": {"every": 0, "keep": 2}
//   }
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/data_config.h"
#include "peft/peft_config.h"

namespace ssmtune {

struct OptimizerConfig {  // AdamW, decoupled weight decay (Loshchilov and Hutter 2019)
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;  // JSON: "betas": [beta1, beta2]
  double eps = 1e-8;
  double weight_decay = 0.0;
  // Parameters whose name contains one of these (as a dot-separated component or suffix,
  // e.g. "norm" matches layers.0.norm.weight and norm_f.weight) get no weight decay.
  std::vector<std::string> no_decay = {"norm", "bias", "A_log", "D"};
  double grad_clip = 1.0;             // max global L2 norm; 0 = off
};

enum class ScheduleType { Constant, Linear, Cosine };
struct ScheduleConfig {
  ScheduleType type = ScheduleType::Linear;
  std::int64_t warmup_steps = 0;  // linear warmup from 0; if 0, warmup_ratio * total steps
  double warmup_ratio = 0.0;      // [0, 1)
  double min_lr_ratio = 0.0;      // linear/cosine decay down to lr * min_lr_ratio
};

struct TrainingConfig {
  std::int64_t steps = 0;         // optimizer steps; 0 = derive from epochs
  std::int64_t epochs = 1;        // used when steps == 0
  std::int64_t batch_size = 4;    // examples per micro-batch
  std::int64_t grad_accum = 1;    // micro-batches per optimizer step
  std::int64_t log_every = 1;     // metrics.jsonl line every N steps
  std::int64_t scan_chunk = 64;   // selective-scan checkpoint interval (memory vs recompute)
  std::int64_t threads = 0;       // CPU threads; 0 = all cores
  std::string device = "cpu";     // "cpu" or "cuda" (the first GPU)
  std::string matmul = "fp32";    // "fp32", or "bf16" inputs with fp32 accumulation (cuda only)
  // How the frozen base weights are held: "fp32", or "bf16" (half the memory; the math stays
  // fp32; trained base tensors stay fp32; model/weight_storage.h). Train, eval and generate.
  std::string frozen_weights = "fp32";
  // "none", or "mixers": keep no mixer's inner activations, run each mixer's forward again in
  // backward (CausalLM::set_recompute_mixers): less memory, same bits, one more mixer forward.
  std::string recompute = "none";
};

struct EarlyStoppingConfig {
  std::string metric = "loss";    // an eval metric; "loss"/"perplexity" lower is better
  std::int64_t patience = 0;      // evals without improvement before stopping; 0 = off
  double min_delta = 0.0;
};

struct EvalConfig {
  std::int64_t every = 0;         // eval every N optimizer steps; 0 = only at the end
  std::int64_t batch_size = 8;
  std::int64_t max_examples = 0;  // 0 = the whole eval set
  // "loss", "perplexity", "accuracy" (classification), "exact_match" (greedy generation of
  // the completion, compared after trimming whitespace).
  std::vector<std::string> metrics = {"loss"};
  std::int64_t max_new_tokens = 32;  // for exact_match
  EarlyStoppingConfig early_stopping;
};

struct CheckpointConfig {
  std::int64_t every = 0;  // checkpoint-STEP/ every N optimizer steps; 0 = only at the end
  std::int64_t keep = 2;   // most recent checkpoints kept; 0 = keep all
};

struct ExperimentConfig {
  std::string source;      // the config file (for messages)
  std::string model;       // model directory (resolved against the config file's directory)
  std::string output_dir;  // default: runs/<config file stem>, relative to the current dir
  std::uint64_t seed = 0;
  DataConfig data;
  PeftConfig peft;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  TrainingConfig training;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  nlohmann::json json;     // the effective config, defaults filled in (written to the run dir)
};

// Parses and validates an experiment config. Relative input paths (model, data.*,
// peft.init_from) are resolved against `base_dir` (the config file's directory); output_dir
// stays relative to the current directory (docs/config.md "Paths"). Errors are
// UsageError: `<file>: field "optimizer.lr": expected a positive number, got string "1e-3"`;
// `<file>: unknown field "optimiser" (did you mean "optimizer"?)`.
ExperimentConfig parse_experiment_config(const nlohmann::json& j, const std::string& file,
                                         const std::string& base_dir);
// The "peft" section of an experiment config alone, validated as parse_experiment_config does;
// the other sections are not read (ssmtune bench --peft). No "peft" section: the default LoRA.
PeftConfig parse_peft_section(const nlohmann::json& j, const std::string& file,
                              const std::string& base_dir);
// Reads the file (read_json_file), applies `overrides` in order, then parses.
ExperimentConfig load_experiment_config(const std::string& path,
                                        const std::vector<std::string>& overrides = {});

// Applies one `--set key.path=value` override to `j`. The value is parsed as JSON when it is
// valid JSON (numbers, true/false, null, arrays, objects, quoted strings), else taken as a plain
// string, so `--set peft.lora.rank=16` and `--set data.train=x.jsonl` both work. Intermediate
// objects are created as needed; the key must still be a valid key (checked by the parse).
// A malformed override (no '=', empty key) is a UsageError naming it.
void apply_override(nlohmann::json& j, const std::string& assignment);

// The valid key closest to `key` among `candidates` (Levenshtein distance with a swap of two
// adjacent characters as one edit; at most max(1, key length / 3)), or "" when none is close.
std::string closest_key(const std::string& key, const std::vector<std::string>& candidates);

// A stable hash of what makes a run's results (model, data, methods, optimizer, schedule,
// training, seed), used by --resume to refuse a checkpoint made under a different config;
// output paths, eval cadence, checkpoint cadence and logging are excluded.
std::string experiment_config_hash(const ExperimentConfig& cfg);

}  // namespace ssmtune
