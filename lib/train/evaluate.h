// Evaluation of a model (with its PEFT terms) on a dataset: the metrics of EvalConfig.
//   loss        mean cross-entropy per loss token over the whole set (token-weighted)
//   perplexity  exp(loss)
//   accuracy    classification: restricted-vocabulary argmax over the label words' first tokens
//               at the last prompt position (as SDT/State-offset Tuning score GLUE)
//   exact_match greedy generation from the prompt (recurrent decoder, up to max_new_tokens or
//               EOS) equals the reference completion, both decoded and whitespace-trimmed
#pragma once

#include <functional>
#include <map>
#include <string>

#include "backend/backend.h"
#include "data/jsonl_dataset.h"
#include "data/tokenizer.h"
#include "model/causal_lm.h"
#include "peft/merge.h"
#include "train/experiment_config.h"

namespace ssmtune {

struct EvalInputs {
  CausalLM& lm;  // with the PEFT hook set, in eval mode (no dropout)
  const Tokenizer& tokenizer;
  Backend& be;
  // Weights with the adapter merged and their config, for the recurrent decoder (exact_match
  // only; called once per evaluation).
  std::function<LoadedModel()> merged_model;
  // The methods merged_model cannot hold, which the decoder must apply too (exact_match), or
  // null: on the scan (state methods, additional scan) and beside the projections.
  ScanHook* scan_hook = nullptr;
  LinearHook* hook = nullptr;
  InputHook* input_hook = nullptr;
};

struct EvalResult {
  std::map<std::string, double> metrics;
  std::int64_t n_examples = 0;
  std::int64_t n_tokens = 0;  // loss tokens
};

// Throws UsageError when a metric does not fit the dataset (accuracy without classification
// labels, exact_match on a text dataset).
void check_metrics_fit(const std::vector<std::string>& metrics, const Dataset& ds);

EvalResult evaluate(EvalInputs& in, const Dataset& ds, const EvalConfig& cfg);

}  // namespace ssmtune
