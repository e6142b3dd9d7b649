#include "train/evaluate.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "data/batcher.h"
#include "infer/decoder.h"
#include "infer/sampling.h"

namespace ssmtune {

namespace {

bool wants(const EvalConfig& cfg, const char* metric) {
  return std::find(cfg.metrics.begin(), cfg.metrics.end(), metric) != cfg.metrics.end();
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const std::size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// The greedy continuation of `prompt` ids, stopping at EOS.
std::vector<std::int64_t> greedy_ids(Decoder& dec, const std::vector<std::int64_t>& prompt,
                                     std::int64_t max_new, std::optional<std::int64_t> eos,
                                     std::int64_t vocab_limit) {
  SamplingOptions greedy;
  Rng unused(0);
  dec.reset();
  std::vector<std::int64_t> out;
  const Tensor* logits = &dec.prefill(prompt);
  for (std::int64_t i = 0; i < max_new; ++i) {
    const Tensor limited = logits->reshape({logits->numel()}).rows(0, vocab_limit);
    const std::int64_t id = sample_token(limited, greedy, unused);
    if (eos && id == *eos) break;
    out.push_back(id);
    logits = &dec.step(id);
  }
  return out;
}

}  // namespace

void check_metrics_fit(const std::vector<std::string>& metrics, const Dataset& ds) {
  for (const std::string& m : metrics) {
    if (m == "accuracy" && ds.format != DataFormat::Classification)
      throw UsageError("eval.metrics: \"accuracy\" needs a classification dataset; " + ds.path +
                       " is " + std::string(data_format_name(ds.format)));
    if (m == "exact_match" && ds.format != DataFormat::PromptCompletion &&
        ds.format != DataFormat::Classification)
      throw UsageError("eval.metrics: \"exact_match\" needs prompt/completion examples; " +
                       ds.path + " is " + std::string(data_format_name(ds.format)));
  }
}

EvalResult evaluate(EvalInputs& in, const Dataset& ds, const EvalConfig& cfg) {
  check_metrics_fit(cfg.metrics, ds);
  const std::int64_t n = cfg.max_examples > 0
                             ? std::min<std::int64_t>(cfg.max_examples, ds.examples.size())
                             : std::int64_t(ds.examples.size());
  EvalResult r;
  r.n_examples = n;
  double loss_sum = 0;
  std::int64_t correct = 0;
  for (std::int64_t b0 = 0; b0 < n; b0 += cfg.batch_size) {
    std::vector<std::int64_t> idx;
    for (std::int64_t i = b0; i < std::min(n, b0 + cfg.batch_size); ++i) idx.push_back(i);
    const Batch batch = make_batch(ds, idx, in.tokenizer.pad_id());
    // accuracy: the logits of the class words' first tokens at each example's last prompt
    // position, (B, C) flattened; nothing else of the logits is kept (CausalLM::eval_loss).
    const std::vector<std::int64_t>& classes = ds.class_token_ids;
    std::vector<std::int64_t> picks;
    if (wants(cfg, "accuracy")) {
      const std::int64_t L = batch.input_ids.dim(1), V = in.lm.config().vocab_size;
      for (std::size_t b = 0; b < idx.size(); ++b) {
        const Example& ex = ds.examples[idx[b]];
        if (ex.prompt_length < 1)
          throw Error(ds.path + ":" + std::to_string(ex.line) +
                      ": the prompt is empty, so no position predicts the label");
        const std::int64_t pos = (ex.prompt_length - 1) + std::int64_t(b) * L;
        for (const std::int64_t token : classes) picks.push_back(pos * V + token);
      }
    }
    std::vector<double> class_logits;
    const LmLoss l = in.lm.eval_loss(batch.input_ids, batch.attention_mask,
                                     shift_labels(batch.labels), picks, &class_logits);
    loss_sum += l.loss * double(l.n_tokens);
    r.n_tokens += l.n_tokens;
    if (wants(cfg, "accuracy"))
      for (std::size_t b = 0; b < idx.size(); ++b) {
        const double* row = class_logits.data() + b * classes.size();  // first max wins
        const std::int64_t pred = std::max_element(row, row + classes.size()) - row;
        correct += pred == ds.examples[idx[b]].class_index;
      }
  }
  if (wants(cfg, "loss") || wants(cfg, "perplexity")) {
    const double loss = r.n_tokens ? loss_sum / double(r.n_tokens) : 0.0;
    if (wants(cfg, "loss")) r.metrics["loss"] = loss;
    if (wants(cfg, "perplexity")) r.metrics["perplexity"] = std::exp(loss);
  }
  if (wants(cfg, "accuracy")) r.metrics["accuracy"] = n ? double(correct) / double(n) : 0.0;
  if (wants(cfg, "exact_match")) {
    const LoadedModel merged = in.merged_model();
    Decoder dec(merged.cfg, merged.weights, in.be);
    dec.set_scan_hook(in.scan_hook);
    dec.set_hook(in.hook);
    dec.set_input_hook(in.input_hook);
    const std::int64_t vocab_limit = std::min(merged.cfg.vocab_size, in.tokenizer.vocab_size());
    std::int64_t matches = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const Example& ex = ds.examples[i];
      if (ex.prompt_length < 1)
        throw Error(ds.path + ":" + std::to_string(ex.line) + ": the prompt is empty");
      const std::vector<std::int64_t> prompt(ex.input_ids.begin(),
                                             ex.input_ids.begin() + ex.prompt_length);
      std::vector<std::int64_t> reference;  // the completion's ids, EOS excluded
      for (std::size_t t = ex.prompt_length; t < ex.input_ids.size(); ++t)
        if (ex.labels[t] != kIgnoreLabel && ex.input_ids[t] != in.tokenizer.eos_id().value_or(-1))
          reference.push_back(ex.input_ids[t]);
      const std::vector<std::int64_t> got =
          greedy_ids(dec, prompt, cfg.max_new_tokens, in.tokenizer.eos_id(), vocab_limit);
      matches += trim(in.tokenizer.decode(got, true)) == trim(in.tokenizer.decode(reference, true));
    }
    r.metrics["exact_match"] = n ? double(matches) / double(n) : 0.0;
  }
  return r;
}

}  // namespace ssmtune
