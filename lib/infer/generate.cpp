#include "infer/generate.h"

#include <algorithm>
#include <optional>

#include "infer/text_stream.h"

namespace ssmtune {

GenerationResult generate(Decoder& decoder, const Tokenizer& tokenizer,
                          const std::string& prompt, const SamplingOptions& opts,
                          const std::function<void(const std::string& piece)>& on_text) {
  check_sampling_options(opts);
  const std::vector<std::int64_t> prompt_ids = tokenizer.encode(prompt);
  if (prompt_ids.empty())
    throw UsageError("generate: the prompt encodes to zero tokens (" + tokenizer.source() +
                     "); give a non-empty prompt");
  const std::int64_t n_vocab = std::min(decoder.config().vocab_size, tokenizer.vocab_size());
  check(n_vocab > 0, "generate: the tokenizer " + tokenizer.source() + " has no tokens");
  const std::optional<std::int64_t> eos = tokenizer.eos_id();
  Rng rng = Rng::for_stream(opts.seed, stream_id("generate"));

  GenerationResult result;
  result.n_prompt_tokens = std::int64_t(prompt_ids.size());
  result.stop_reason = "length";
  TextStream stream(tokenizer, opts.stop, on_text);
  decoder.reset();
  const Tensor* logits = &decoder.prefill(prompt_ids);
  for (std::int64_t i = 0; i < opts.max_new_tokens; ++i) {
    const std::int64_t id = sample_token(logits->rows(0, n_vocab), opts, rng);
    result.token_ids.push_back(id);
    if (eos && id == *eos) {
      result.stop_reason = "eos";
      break;
    }
    if (stream.push(id)) {
      result.stop_reason = "stop";
      break;
    }
    if (i + 1 < opts.max_new_tokens) logits = &decoder.step(id);  // none after the last token
  }
  if (result.stop_reason != "stop") stream.finish();
  result.text = stream.text();
  return result;
}

}  // namespace ssmtune
