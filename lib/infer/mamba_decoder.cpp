#include "infer/mamba_decoder.h"

#include <algorithm>
#include <string>
#include <utility>

#include "model/linear.h"
#include "model/sequence_steps.h"

namespace ssmtune {

namespace {
void check_token_id(std::int64_t id, std::int64_t vocab_size) {
  if (id < 0 || id >= vocab_size)
    throw Error("decoder: token id " + std::to_string(id) + " is outside the model's " +
                "vocabulary [0, " + std::to_string(vocab_size) + ")");
}

}  // namespace

MambaDecoder::MambaDecoder(const MambaConfig& cfg, const MambaWeights& weights, Backend& be,
                           std::int64_t prefill_block)
    : cfg_(cfg),
      w_(weights),
      be_(be),
      prefill_block_(prefill_block),
      dtype_(weights.embedding.dtype()) {
  if (prefill_block < 1)
    throw UsageError("decoder: prefill block must be >= 1 token, got " +
                     std::to_string(prefill_block));
  check(weights.embedding.defined() && weights.lm_head.defined(),
        "decoder: the model weights have no embedding or lm_head");
  check(std::int64_t(weights.layers.size()) == cfg.n_layer,
        "decoder: weights have " + std::to_string(weights.layers.size()) + " layers, config " +
            std::to_string(cfg.n_layer));
  cache_.resize(std::size_t(cfg.n_layer));
  for (std::int64_t i = 0; i < cfg.n_layer; ++i) {  // the weights do not change: A once
    cache_[i].A = be_.empty({cfg.d_inner, cfg.d_state}, dtype_);
    be_.ssm_A_forward(weights.layers[i].A_log, cache_[i].A);
  }
  reset();
}

void MambaDecoder::reset() {
  // Zero conv state = the conv's left zero padding; zero h = h_{-1} of the scan (A.4 step 7),
  // or initial-state tuning's learned H0; a scan hook's carried state starts at zero.
  const std::int64_t E = cfg_.d_inner, N = cfg_.d_state;
  for (std::int64_t i = 0; i < cfg_.n_layer; ++i) {
    MixerCache& c = cache_[i];
    c.conv = be_.zeros({1, cfg_.d_conv - 1, E}, dtype_);
    const Tensor conv0 = scan_hook_ ? scan_hook_->initial_conv_state(i) : Tensor();
    if (conv0.defined()) be_.copy(conv0, c.conv);  // initial-state tuning's learned conv state
    c.affix_pending = input_hook_ != nullptr;
    const Tensor h0 = scan_hook_ ? scan_hook_->initial_state(i, 1) : Tensor();
    c.ssm = be_.zeros({1, E, N}, dtype_);
    if (h0.defined()) be_.copy(h0, c.ssm);
    Shape carried = scan_hook_ ? scan_hook_->carried_state_shape(i) : Shape{};
    if (carried.empty()) {
      c.hook = Tensor();
    } else {
      carried.insert(carried.begin(), 1);
      c.hook = be_.zeros(carried, dtype_);
    }
  }
  n_tokens_ = 0;
  sequence_start_ = true;
}

const Tensor& MambaDecoder::prefill(const std::vector<std::int64_t>& ids) {
  if (ids.empty()) throw UsageError("decoder: prefill needs at least one token");
  // All ids first, so that a bad one leaves the state as it was.
  for (const std::int64_t id : ids) check_token_id(id, cfg_.vocab_size);
  for (std::size_t b = 0; b < ids.size(); b += std::size_t(prefill_block_))
    forward_block(ids.data() + b, std::min<std::int64_t>(prefill_block_, ids.size() - b));
  return logits_host_;
}

const Tensor& MambaDecoder::step(std::int64_t id) {
  check_token_id(id, cfg_.vocab_size);
  forward_block(&id, 1);
  return logits_host_;
}

void MambaDecoder::forward_block(const std::int64_t* ids, std::int64_t n) {
  const std::int64_t D = cfg_.d_model, V = cfg_.vocab_size;
  Tensor ids_host = Tensor::empty({n}, DType::I64);
  std::copy_n(ids, n, ids_host.data<std::int64_t>());
  Tensor ids_dev = be_.empty({n}, DType::I64);
  be_.copy(ids_host, ids_dev);

  // Residual stream (A.4 steps 1, 2, 9): h += mixer(rmsnorm(h)), fp32 or wider on the CPU.
  // The first block of a sequence starts with the virtual tokens, as in training: the prompt
  // before the embedded ids, each layer's prefix before its input (dropped after the layer);
  // the mixers put the affix first themselves (MixerCache::affix_pending).
  Tensor h = be_.empty({1, n, D}, dtype_);  // (1, Lb, D)
  Tensor h2 = h.reshape({n, D});
  be_.embedding_forward(ids_dev, w_.embedding, h2);
  const bool first = sequence_start_ && input_hook_;
  sequence_start_ = false;
  const Tensor prompt = first ? input_hook_->prompt() : Tensor();
  if (prompt.defined()) h = prepend_steps(be_, prompt, h);
  const MixerHooks hooks{hook_, scan_hook_, input_hook_};
  for (std::int64_t i = 0; i < cfg_.n_layer; ++i) {
    const Tensor prefix = first ? input_hook_->prefix(i) : Tensor();
    Tensor block = prefix.defined() ? prepend_steps(be_, prefix, h) : h;
    const std::int64_t Lb = block.dim(1);
    Tensor normed = be_.empty({1, Lb, D}, dtype_), rstd = be_.empty({Lb}, dtype_);
    be_.rmsnorm_forward(block, w_.layers[i].norm, cfg_.layer_norm_epsilon, normed, rstd);
    MixerActivations scratch;  // what a backward would need; dropped with the block
    Tensor mix = be_.empty({1, Lb, D}, dtype_);
    mixer_forward(be_, cfg_, w_.layers[i], normed, Lb, scratch, mix, i, hooks, &cache_[i]);
    be_.add(block, mix);
    if (prefix.defined()) {
      h = be_.empty({1, Lb - prefix.dim(0), D}, dtype_);
      take_steps(be_, mix, prefix.dim(0), h);
    } else {
      h = mix;
    }
  }
  n_tokens_ += n;
  h = h.reshape({h.dim(1), D});
  n = h.dim(0);

  // Only the last token's logits are wanted (A.4 step 10): norm_f and lm_head on one row.
  const Tensor last = h.rows(n - 1, n);  // (1, D)
  Tensor last_norm = be_.empty({1, D}, dtype_), last_rstd = be_.empty({1}, dtype_);
  be_.rmsnorm_forward(last, w_.norm_f, cfg_.layer_norm_epsilon, last_norm, last_rstd);
  logits_ = be_.empty({1, V}, dtype_);
  linear_forward(be_, last_norm, w_.lm_head, Tensor(), logits_);
  if (be_.device() == Device::CPU) {
    logits_host_ = logits_.reshape({V});
  } else {
    logits_host_ = Tensor::empty({V}, dtype_);
    be_.copy(logits_.reshape({V}), logits_host_);
  }
}

}  // namespace ssmtune
