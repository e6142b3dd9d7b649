// The training loop of `ssmtune train` (docs/architecture.md "The job"): load the model, tokenizer and
// data, attach the PEFT methods, run AdamW with the schedule over micro-batches with gradient
// accumulation, evaluate and checkpoint on their cadences, and write the adapter (or the
// fine-tuned model), metrics.jsonl and a summary into the output directory:
//   <output_dir>/experiment.json      the effective config (defaults filled in)
//   <output_dir>/metrics.jsonl        one line per logged step and per evaluation
//   <output_dir>/checkpoint-STEP/     the latest checkpoints (checkpoint.h)
//   <output_dir>/adapter/             the final LoRA adapter (PEFT layout)
//   <output_dir>/model/               the final model (full fine-tuning; HF model directory)
//   <output_dir>/summary.json         final metrics, tokens/s, trainable parameters
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "train/experiment_config.h"

namespace ssmtune {

struct TrainOptions {
  bool resume = false;         // continue from the newest checkpoint in output_dir
  std::string resume_from;     // or from this checkpoint directory
  bool progress_line = false;  // a live one-line progress display (stderr is a terminal)
  // Makes the backend instead of make_backend(training.device): the tests train on the CUDA
  // backend compiled against the emulator this way.
  std::function<std::unique_ptr<Backend>()> make_backend;
};

struct TrainResult {
  std::int64_t steps = 0;  // optimizer steps completed
  std::int64_t total_steps = 0;
  double last_loss = 0;                // training loss of the last step
  std::map<std::string, double> eval;  // final evaluation (empty without an eval set)
  double tokens_per_s = 0;             // loss tokens per second of training (this process)
  std::int64_t n_trainable = 0;
  bool interrupted = false;  // stopped by SIGINT/SIGTERM after writing a checkpoint
  int signal = 0;
  bool stopped_early = false;
  // Tensor storages moved between the host and the device inside the training steps of this
  // process after its first (core/tensor.h "Residency"). To the host: 0 when the steps keep
  // everything on the GPU. To the device: what the host makes afresh inside the steps (SDT's
  // re-initialised tensors, once); dropout masks are made on the device. Always 0 on the CPU
  // backend.
  std::int64_t step_moves_to_host = 0, step_moves_to_device = 0;
  std::string output_dir;
};

// Runs (or resumes) the experiment. Errors: UsageError for config problems (exit 2), Error for
// bad files and runtime failures (exit 1); nothing is left half-written.
TrainResult train(const ExperimentConfig& cfg, const TrainOptions& opts);

}  // namespace ssmtune
