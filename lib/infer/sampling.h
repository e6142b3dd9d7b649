// Next-token choice from logits: greedy, or temperature sampling restricted by top-k and top-p
// (the order of Hugging Face's TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace ssmtune {

struct SamplingOptions {
  double temperature = 0;  // 0 = greedy (argmax); > 0 divides the logits before the softmax
  std::int64_t top_k = 0;  // keep the k most likely tokens; 0 = off
  double top_p = 1;        // keep the smallest most-likely set with mass >= top_p; 1 = off
  std::uint64_t seed = 0;  // generate() draws from Rng::for_stream(seed, "generate")
  std::int64_t max_new_tokens = 128;
  std::vector<std::string> stop;  // generation ends when the text contains one of these
};

// Throws UsageError naming the option unless temperature >= 0 (finite), top_k >= 0,
// 0 < top_p <= 1, max_new_tokens >= 0 and no stop string is empty.
void check_sampling_options(const SamplingOptions& opts);

// logits: (V) F32 or F64 on the host. Greedy (temperature 0): the argmax, ties to the lower id,
// no draw. Otherwise p = softmax(logits / temperature); top-k keeps the k most likely ids; top-p
// then keeps the shortest prefix, by probability descending (ties: lower id first), whose
// renormalised mass reaches top_p; one Rng::uniform() draw picks from the renormalised rest.
// -inf logits have probability 0; NaN or +inf logits are an Error.
std::int64_t sample_token(const Tensor& logits, const SamplingOptions& opts, Rng& rng);

}  // namespace ssmtune
