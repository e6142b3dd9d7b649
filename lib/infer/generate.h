// Text generation with a recurrent Mamba decoder: encode the prompt, prefill, then sample one
// token at a time until EOS, a stop string or max_new_tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "infer/decoder.h"
#include "infer/sampling.h"

namespace ssmtune {

struct GenerationResult {
  std::string text;                     // the continuation, cut before a stop string; no EOS
  std::vector<std::int64_t> token_ids;  // generated ids, the EOS or stop-completing one included
  std::int64_t n_prompt_tokens = 0;
  std::string stop_reason;  // "eos", "stop" or "length"
};

// Resets `decoder` and generates a continuation of `prompt` (no BOS is added, as HF's
// generate for Mamba). on_text receives the continuation in pieces as it becomes final; their
// concatenation is result.text. Sampled ids are limited to those both the model and the
// tokenizer know (the model's vocabulary may be padded). EOS is tokenizer.eos_id(), if any.
// Throws UsageError on invalid options or a prompt that encodes to zero tokens.
GenerationResult generate(Decoder& decoder, const Tokenizer& tokenizer,
                          const std::string& prompt, const SamplingOptions& opts,
                          const std::function<void(const std::string& piece)>& on_text = {});

}  // namespace ssmtune
