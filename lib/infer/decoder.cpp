#include "infer/decoder.h"

#include <algorithm>
#include <string>
#include <utility>

#include "model/weight_storage.h"

namespace ssmtune {

namespace {
void check_token_id(std::int64_t id, std::int64_t vocab_size) {
  if (id < 0 || id >= vocab_size)
    throw Error("decoder: token id " + std::to_string(id) + " is outside the model's " +
                "vocabulary [0, " + std::to_string(vocab_size) + ")");
}

}  // namespace

Decoder::Decoder(const ModelConfig& cfg, const ModelWeights& weights, Backend& be,
                 std::int64_t prefill_block)
    : cfg_(cfg),
      be_(be),
      prefill_block_(prefill_block),
      dtype_(compute_dtype(weights)),
      lm_(cfg, weights, be) {
  if (prefill_block < 1)
    throw UsageError("decoder: prefill block must be >= 1 token, got " +
                     std::to_string(prefill_block));
  check(weights.embedding.defined() && weights.lm_head.defined(),
        "decoder: the model weights have no embedding or lm_head");
  check(std::int64_t(weights.layers.size()) == cfg.n_layer,
        "decoder: weights have " + std::to_string(weights.layers.size()) + " layers, config " +
            std::to_string(cfg.n_layer));
  reset();
}

void Decoder::reset() {
  lm_.reset_caches(cache_);
  n_tokens_ = 0;
  sequence_start_ = true;
}

const Tensor& Decoder::prefill(const std::vector<std::int64_t>& ids) {
  if (ids.empty()) throw UsageError("decoder: prefill needs at least one token");
  // All ids first, so that a bad one leaves the state as it was.
  for (const std::int64_t id : ids) check_token_id(id, cfg_.vocab_size);
  for (std::size_t b = 0; b < ids.size(); b += std::size_t(prefill_block_))
    forward_block(ids.data() + b, std::min<std::int64_t>(prefill_block_, ids.size() - b));
  return logits_host_;
}

const Tensor& Decoder::step(std::int64_t id) {
  check_token_id(id, cfg_.vocab_size);
  forward_block(&id, 1);
  return logits_host_;
}

void Decoder::forward_block(const std::int64_t* ids, std::int64_t n) {
  const std::int64_t V = cfg_.vocab_size;
  Tensor ids_host = Tensor::empty({n}, DType::I64);
  std::copy_n(ids, n, ids_host.data<std::int64_t>());
  Tensor ids_dev = be_.empty({n}, DType::I64);
  be_.copy(ids_host, ids_dev);
  const Tensor logits = lm_.forward_cached(ids_dev, cache_, sequence_start_);
  sequence_start_ = false;
  n_tokens_ += n;
  if (be_.device() == Device::CPU) {
    logits_host_ = logits.reshape({V});
  } else {
    logits_host_ = Tensor::empty({V}, dtype_);
    be_.copy(logits.reshape({V}), logits_host_);
  }
}

}  // namespace ssmtune
