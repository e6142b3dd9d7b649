#include "infer/mamba_decoder.h"

#include <algorithm>
#include <string>
#include <utility>

#include "model/linear.h"

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
  const std::int64_t E = cfg.d_inner, N = cfg.d_state;
  for (const MambaLayerWeights& lw : weights.layers) {
    A_.push_back(be_.empty({E, N}, dtype_));
    be_.ssm_A_forward(lw.A_log, A_.back());
    conv_state_.push_back(be_.empty({1, cfg.d_conv - 1, E}, dtype_));
    ssm_state_.push_back(be_.empty({1, E, N}, dtype_));
  }
  h_next_ = be_.empty({1, E, N}, dtype_);
  reset();
}

void MambaDecoder::reset() {
  // Zero conv state = the conv's left zero padding; zero h = h_{-1} of the scan (A.4 step 7).
  // Initial-state tuning would copy its learned H0 (and conv state) in here instead.
  for (std::int64_t i = 0; i < cfg_.n_layer; ++i) {
    Tensor zero_conv = be_.zeros(conv_state_[i].shape(), dtype_);
    be_.copy(zero_conv, conv_state_[i]);
    const Tensor h0 = scan_hook_ ? scan_hook_->initial_state(i, 1) : Tensor();
    const Tensor start = h0.defined() ? h0 : be_.zeros(ssm_state_[i].shape(), dtype_);
    be_.copy(start, ssm_state_[i]);
  }
  n_tokens_ = 0;
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
  Tensor h = be_.empty({n, D}, dtype_);  // (Lb, D)
  be_.embedding_forward(ids_dev, w_.embedding, h);
  Tensor normed = be_.empty({n, D}, dtype_), rstd = be_.empty({n}, dtype_);
  Tensor mix = be_.empty({n, D}, dtype_);
  for (std::int64_t i = 0; i < cfg_.n_layer; ++i) {
    be_.rmsnorm_forward(h, w_.layers[i].norm, cfg_.layer_norm_epsilon, normed, rstd);
    mixer_block(i, normed, mix);
    be_.add(mix, h);
  }
  n_tokens_ += n;

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

void MambaDecoder::mixer_block(std::int64_t i, const Tensor& n, Tensor& out) {
  const MambaLayerWeights& w = w_.layers[i];
  const std::int64_t Lb = n.dim(0), E = cfg_.d_inner, N = cfg_.d_state, R = cfg_.dt_rank;
  const std::int64_t K = cfg_.d_conv, ctx = K - 1;

  // x goes after the conv state's K-1 earlier inputs, so the causal conv over the extended
  // sequence sees them instead of zero padding; its first K-1 outputs are dropped.
  Tensor x_ext = be_.empty({1, ctx + Lb, E}, dtype_);  // (1, K-1+Lb, E)
  const Tensor x_rows = x_ext.reshape({ctx + Lb, E});
  Tensor x = x_rows.rows(ctx, ctx + Lb);  // (Lb, E) view
  linear_forward(be_, n, w.in_proj.rows(0, E), row_slice(w.in_proj_bias, 0, E), x);
  Tensor z = be_.empty({1, Lb, E}, dtype_);
  Tensor z2 = z.reshape({Lb, E});
  linear_forward(be_, n, w.in_proj.rows(E, 2 * E), row_slice(w.in_proj_bias, E, 2 * E), z2);
  if (ctx > 0) {
    Tensor head = x_rows.rows(0, ctx);
    be_.copy(conv_state_[i].reshape({ctx, E}), head);
  }

  Tensor c_ext = be_.empty({1, ctx + Lb, E}, dtype_);
  be_.conv1d_forward(x_ext, w.conv1d.reshape({E, K}), w.conv1d_bias, c_ext);
  if (ctx > 0) {  // A.5 decode step 1: the window moves on by Lb inputs
    Tensor state = conv_state_[i].reshape({ctx, E});
    be_.copy(x_rows.rows(Lb, Lb + ctx), state);
  }
  const Tensor c = c_ext.reshape({ctx + Lb, E}).rows(ctx, ctx + Lb).reshape({1, Lb, E});
  Tensor u = be_.empty({1, Lb, E}, dtype_);
  be_.silu_forward(c, u);
  const Tensor u2 = u.reshape({Lb, E});

  // [dt_in ; B ; C] = x_proj(u); delta = softplus(dt_proj(dt_in))   (A.4 steps 5, 6)
  Tensor x_dbl = be_.empty({Lb, R + 2 * N}, dtype_);
  linear_forward(be_, u2, w.x_proj, Tensor(), x_dbl);
  Tensor dt_in = be_.empty({Lb, R}, dtype_);
  Tensor Bm = be_.empty({1, Lb, N}, dtype_), Cm = be_.empty({1, Lb, N}, dtype_);
  Tensor B2 = Bm.reshape({Lb, N}), C2 = Cm.reshape({Lb, N});
  be_.split_columns(x_dbl, 0, dt_in);
  be_.split_columns(x_dbl, R, B2);
  be_.split_columns(x_dbl, R + N, C2);
  Tensor delta_raw = be_.empty({1, Lb, E}, dtype_);
  Tensor draw2 = delta_raw.reshape({Lb, E});
  linear_forward(be_, dt_in, w.dt_proj, w.dt_proj_bias, draw2);
  Tensor delta = be_.empty({1, Lb, E}, dtype_);
  be_.softplus_forward(delta_raw, delta);

  // The scan from the cached h (A.5 step 4 for Lb = 1). One chunk: h_saved is scratch here.
  const Backend::ScanInputs in{u, delta, A_[i], Bm, Cm, w.D, ssm_state_[i], Lb};
  Tensor y = be_.empty({1, Lb, E}, dtype_);
  Tensor h_start = be_.empty({1, 1, E, N}, dtype_);
  be_.selective_scan_forward(in, y, h_start, h_next_);
  std::swap(ssm_state_[i], h_next_);
  if (scan_hook_) {  // state-offset tuning reads the state out with an offset (not carried)
    Tensor y2 = y.reshape({Lb, E});
    scan_hook_->output_forward(i, C2, y2);
  }

  Tensor gated = be_.empty({1, Lb, E}, dtype_);
  be_.gate_forward(y, z, gated);
  linear_forward(be_, gated.reshape({Lb, E}), w.out_proj, w.out_proj_bias, out);
}

}  // namespace ssmtune
