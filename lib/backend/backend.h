// The op interface the model and the PEFT methods are written against (docs/architecture.md "The
// model code is written once"). Ops are coarse, one call per layer stage, so a virtual call costs
// nothing. Every op takes whole tensors on the backend's device; shapes are checked by the
// backend. Backward ops overwrite input gradients and accumulate (+=) parameter gradients.
// Shapes: B batch, L sequence, E d_inner, N d_state, K d_conv, V vocab, rows = B*L tokens;
// attention: H query heads, KV key/value heads, hd head dim; MoE: X experts, k = top_k.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ssmtune {

// Wall time and floating-point work per op, collected while a profile is attached
// (ssmtune bench). Ops are coarse, so one clock read per call costs nothing measurable.
struct OpProfile {
  struct Entry {
    std::int64_t calls = 0;
    double seconds = 0;
    double flops = 0;  // counted for matrix products only
  };
  std::map<std::string, Entry> ops;
};

// Adds one call's time to `profile` (if any) when it goes out of scope.
class OpTimer {
 public:
  OpTimer(OpProfile* profile, const char* op, double flops = 0)
      : profile_(profile), op_(op), flops_(flops), start_(std::chrono::steady_clock::now()) {}
  ~OpTimer() {
    if (!profile_) return;
    auto& e = profile_->ops[op_];
    e.calls += 1;
    e.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    e.flops += flops_;
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  OpProfile* profile_;
  const char* op_;
  double flops_;
  std::chrono::steady_clock::time_point start_;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Attach (or detach with nullptr) a profile that every op call adds to.
  void set_profile(OpProfile* profile) { profile_ = profile; }
  virtual std::string name() const = 0;
  virtual Device device() const = 0;

  // Waits until the work queued so far is done (a GPU runs ops asynchronously): for timing.
  virtual void synchronize() {}
  // The most device memory this backend's tensors have held at once, in bytes (the CUDA
  // allocator's high-water mark); 0 where tensors live in host memory (CPU backend).
  virtual std::size_t peak_device_bytes() const { return 0; }
  // Bytes the device can still give this backend (free memory plus the blocks it caches), for
  // checking a size before allocating it; UINT64_MAX on the CPU, whose bound is the host's
  // (core/memory_budget.h), and when the device cannot say.
  virtual std::uint64_t free_device_bytes() const { return UINT64_MAX; }

  virtual Tensor empty(const Shape& shape, DType dtype) = 0;
  virtual Tensor zeros(const Shape& shape, DType dtype) = 0;
  // Copies between host and this backend's device (or within one device); same shape and dtype.
  virtual void copy(const Tensor& src, Tensor& dst) = 0;
  // dst = src widened, same shape: src BF16, dst F32 (the CPU backend also takes F64). Exact: a
  // bf16 is the upper half of a float32 (core/dtype.h bf16_to_f32). How frozen base weights held
  // in bf16 become the fp32 a layer computes with (docs/models.md "Weight storage").
  virtual void convert(const Tensor& src, Tensor& dst) = 0;

  // C = alpha * op(A) * op(B) + beta * C; A, B, C 2-D row-major; op = transpose if trans_*.
  // One element type, or B BF16 with A and C F32: a frozen weight held in bf16, multiplied as
  // its exact fp32 widening with fp32 accumulation (docs/models.md "Weight storage").
  virtual void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& A, const Tensor& B,
                    double beta, Tensor& C) = 0;
  // y: (rows, n) += bias: (n)
  virtual void add_bias(Tensor& y, const Tensor& bias) = 0;
  // dbias: (n) += column sums of dy: (rows, n)
  virtual void bias_backward(const Tensor& dy, Tensor& dbias) = 0;
  // y += x (same shape): the residual connection and gradient fan-in
  virtual void add(const Tensor& x, Tensor& y) = 0;
  // dst: (rows, n) = src: (rows, S)[:, col0 : col0+n]
  virtual void split_columns(const Tensor& src, std::int64_t col0, Tensor& dst) = 0;
  // dst: (rows, S)[:, col0 : col0+n] = src: (rows, n)
  virtual void merge_columns(const Tensor& src, std::int64_t col0, Tensor& dst) = 0;

  // x, y: (rows, D)  w: (D)  rstd: (rows) saved for backward, or (rows, G): each row's G runs
  // of D/G columns normalised separately (Mamba-2's gated norm, mamba_ssm's group_size = D/G).
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y,
                               Tensor& rstd) = 0;
  virtual void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                const Tensor& rstd, Tensor& dx, Tensor& dw) = 0;

  // Fusions a backend may do in one pass (the CUDA backend does); these defaults run the ops.
  // sum += x, then y = rmsnorm(sum): the residual add fused with the next norm.
  virtual void add_rmsnorm_forward(const Tensor& x, Tensor& sum, const Tensor& w, double eps,
                                   Tensor& y, Tensor& rstd) {
    add(x, sum);
    rmsnorm_forward(sum, w, eps, y, rstd);
  }
  // rmsnorm_backward with dx accumulated (+=): the residual's gradient fan-in fused in.
  virtual void rmsnorm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w,
                                    const Tensor& rstd, Tensor& dx, Tensor& dw) {
    Tensor d = empty(dx.shape(), dx.dtype());
    rmsnorm_backward(dy, x, w, rstd, d, dw);
    add(d, dx);
  }

  // Causal depthwise conv. x, c: (B, L, E)  w: (E, K)  bias: (E) or undefined
  virtual void conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                              Tensor& c) = 0;
  // c = conv1d(x), u = silu(c): the mixer's conv and its activation in one pass.
  virtual void conv1d_silu_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                   Tensor& c, Tensor& u) {
    conv1d_forward(x, w, bias, c);
    silu_forward(c, u);
  }
  // dw and dbias accumulate; either may be undefined (a frozen conv weight, no or a frozen bias),
  // and is then not formed.
  virtual void conv1d_backward(const Tensor& dc, const Tensor& x, const Tensor& w, Tensor& dx,
                               Tensor& dw, Tensor& dbias) = 0;

  virtual void silu_forward(const Tensor& x, Tensor& y) = 0;
  virtual void silu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) = 0;
  virtual void softplus_forward(const Tensor& x, Tensor& y) = 0;
  virtual void softplus_backward(const Tensor& dy, const Tensor& x, Tensor& dx) = 0;
  // y = max(x, 0); dx = dy where x > 0, else 0 (the parallel adapter's ReLU)
  virtual void relu_forward(const Tensor& x, Tensor& y) = 0;
  virtual void relu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) = 0;
  // y = min(max(x, lo), hi); dx = dy where lo <= x <= hi, else 0 (torch.clamp's gradient):
  // Mamba-2's clamp of dt (model_config.h time_step_limit).
  virtual void clamp_forward(const Tensor& x, double lo, double hi, Tensor& y) = 0;
  virtual void clamp_backward(const Tensor& dy, const Tensor& x, double lo, double hi,
                              Tensor& dx) = 0;
  // out = y * silu(z)
  virtual void gate_forward(const Tensor& y, const Tensor& z, Tensor& out) = 0;
  virtual void gate_backward(const Tensor& dout, const Tensor& y, const Tensor& z, Tensor& dy,
                             Tensor& dz) = 0;
  // A = -exp(A_log) and its backward dA_log += dA * A.   (E, N)
  virtual void ssm_A_forward(const Tensor& A_log, Tensor& A) = 0;
  virtual void ssm_A_backward(const Tensor& dA, const Tensor& A, Tensor& dA_log) = 0;

  // Selective scan (cpu/scan_cpu.h for the math).
  // u, delta, y: (B, L, E)  A: (E, N)  Bm, Cm: (B, L, N)  D: (E) or undefined
  // h0: (B, E, N) or undefined   h_saved: (B, ceil(L/chunk), E, N)   h_last: (B, E, N) or undefined
  // delta_softplus: delta holds the values before softplus and the scan applies it (backward's
  // ddelta is then their gradient): the same bits as softplus_forward/backward around a plain
  // scan (cpu::ScanDims); the CUDA backend runs those ops around its kernel.
  struct ScanInputs {
    Tensor u, delta, A, Bm, Cm, D, h0;
    std::int64_t chunk = 64;
    bool delta_softplus = false;
  };
  virtual void selective_scan_forward(const ScanInputs& in, Tensor& y, Tensor& h_saved,
                                      Tensor& h_last) = 0;
  // du, ddelta, dBm, dCm (and dh0 if defined) overwritten; dA, dD (if defined) accumulated.
  struct ScanGrads {
    Tensor du, ddelta, dA, dBm, dCm, dD, dh0;
  };
  virtual void selective_scan_backward(const ScanInputs& in, const Tensor& h_saved,
                                       const Tensor& dy, ScanGrads& grads) = 0;

  // SSD, the Mamba-2 scan (transformers' Mamba2Mixer; mamba_ssm's ssd_minimal / ssd_chunk_scan;
  // cpu/ssd_cpu.h for the math, docs/models.md "Mamba-2 SSD scan" for the chunked algorithm).
  // H heads of P channels (head_dim), G groups (head h reads group h / (H / G)), N d_state.
  // Per head, a_t = exp(dt_t * A_h) (a scalar per head and step):
  //   h_t = a_t h_{t-1} + dt_t x_t B_t^T      h: (P, N)
  //   y_t = h_t C_t + D_h x_t
  // x, y: (B, L, H, P)   dt: (B, L, H) (already dt_bias-added, softplus-ed, clamped)   A: (H)
  // Bm, Cm: (B, L, G, N)   D: (H) or undefined   h0: (B, H, P, N) or undefined (zeros)
  // h_saved: (B, n_chunks, H, P, N) the state at each chunk start (saved for backward)
  // h_last: (B, H, P, N) the state after the last step, or undefined
  // chunk: the model's chunk_size, >= 1; L need not be a multiple of it.
  struct SsdInputs {
    Tensor x, dt, A, Bm, Cm, D, h0;
    std::int64_t chunk = 256;
  };
  virtual void ssd_forward(const SsdInputs& in, Tensor& y, Tensor& h_saved, Tensor& h_last) = 0;
  // dx, ddt, dBm, dCm (and dh0 if defined) overwritten; dA (H), dD (H, if defined) accumulated.
  struct SsdGrads {
    Tensor dx, ddt, dA, dBm, dCm, dD, dh0;
  };
  virtual void ssd_backward(const SsdInputs& in, const Tensor& h_saved, const Tensor& dy,
                            SsdGrads& grads) = 0;

  // Causal grouped-query attention, no positional encoding (Jamba's JambaAttention): head h
  // reads key/value head h / (H / KV). The Lq <= Lk queries are the LAST Lq of the Lk key
  // positions: query t sits at position t + (Lk - Lq) and sees keys j <= t + (Lk - Lq) whose
  // key_mask is nonzero (Lq = Lk: training and prefill; Lq < Lk: a decoding block after
  // Lk - Lq cached keys, Lq Lk work instead of Lk^2). scores = q k^T * scale, softmax in fp32 or
  // wider; out = P v. Blocked with an online softmax: no Lq x Lk matrix is ever stored
  // (cpu/ops_cpu.h, docs/cuda.md "Attention kernels").
  // q: (B, Lq, H, hd)   k, v: (B, Lk, KV, hd)   key_mask: (B, Lk) I64 (1 keep, 0 pad) or
  // undefined   out: (B, Lq, H, hd) overwritten   lse: (B, H, Lq) the rows' log-sum-exp, saved
  // for backward. A query with no allowed key (a padded position before any real token)
  // outputs zeros and has lse = -inf; its backward contributes nothing.
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& key_mask, double scale, Tensor& out,
                                 Tensor& lse) = 0;
  // dout: (B, Lq, H, hd). dq overwritten (B, Lq, H, hd); dk, dv overwritten (B, Lk, KV, hd).
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& key_mask, double scale, const Tensor& out,
                                  const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                                  Tensor& dv) = 0;

  // Mixture-of-experts token routing (Jamba's JambaSparseMoeBlock, transformers 4.44.2;
  // docs/models.md "Jamba MoE"). X experts, k = top_k, D hidden width, n = rows * k.
  // probs = softmax(logits) per row, max-subtracted (F32: float exp, sums in double); then the
  // top k of probs, largest first, equal probabilities in ascending expert order (deterministic;
  // torch.topk leaves ties unspecified): experts[t, j] = the j-th expert, weights[t, j] = its
  // probability, NOT renormalised (Jamba, unlike Mixtral). 1 <= top_k <= X.
  // logits, probs: (rows, X)   weights: (rows, k)   experts: (rows, k) I64, all overwritten.
  virtual void moe_router_forward(const Tensor& logits, std::int64_t top_k, Tensor& probs,
                                  Tensor& weights, Tensor& experts) = 0;
  // g[t, e] = sum_j [experts[t, j] == e] dweights[t, j] + dprobs_extra[t, e] (the router
  // auxiliary loss's gradient, when defined); dlogits = probs * (g - sum_e g probs), the softmax's
  // backward. dweights: (rows, k)   probs, dprobs_extra, dlogits (overwritten): (rows, X).
  virtual void moe_router_backward(const Tensor& dweights, const Tensor& probs,
                                   const Tensor& experts, const Tensor& dprobs_extra,
                                   Tensor& dlogits) = 0;
  // slot: (rows, k) I64, a permutation of [0, n) that the caller makes to group the rows of each
  // expert together; entries out of range or repeated are an error (docs/cuda.md "MoE routing
  // kernels" for what the CUDA backend checks).
  // xs[slot[t, j]] = x[t].   x: (rows, D)   xs: (n, D) overwritten
  virtual void moe_dispatch(const Tensor& x, const Tensor& slot, Tensor& xs) = 0;
  // dx[t] += sum_j dxs[slot[t, j]], j = 0 .. k-1 in order.   dxs: (n, D)   dx: (rows, D)
  virtual void moe_dispatch_backward(const Tensor& dxs, const Tensor& slot, Tensor& dx) = 0;
  // out[t] = sum_j weights[t, j] ys[slot[t, j]], j in order.   ys: (n, D)   weights: (rows, k)
  // out: (rows, D) overwritten
  virtual void moe_combine(const Tensor& ys, const Tensor& slot, const Tensor& weights,
                           Tensor& out) = 0;
  // dys[slot[t, j]] = weights[t, j] dout[t]; dweights[t, j] = <dout[t], ys[slot[t, j]]>, summed
  // in double in an order fixed by D.   dout: (rows, D)   dys: (n, D), dweights: (rows, k)
  // overwritten
  virtual void moe_combine_backward(const Tensor& dout, const Tensor& ys, const Tensor& slot,
                                    const Tensor& weights, Tensor& dys, Tensor& dweights) = 0;

  // ids: (rows) I64   table: (V, D), out's dtype or BF16 (frozen weights held in bf16: the rows
  // are widened as they are copied, exactly)   out: (rows, D). Ids outside [0, V) are an error.
  virtual void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) = 0;
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) = 0;
  // logits: (rows, V)  targets: (rows) I64, -100 ignored. Returns the summed loss and sets
  // *n_counted to the number of counted rows.
  virtual double cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                       std::int64_t* n_counted) = 0;
  // dlogits = scale * (softmax - onehot); dlogits may be the logits tensor itself.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, double scale,
                                      Tensor& dlogits) = 0;

  // DoRA's row operations on weight-sized tensors a, b, sub, out: (rows, cols); f, d, norm:
  // (rows). Row sums in double.
  // norm[i] = sqrt(sum_j a[i, j]^2)
  virtual void row_norms(const Tensor& a, Tensor& norm) = 0;
  // out[i, j] = f[i] a[i, j] - sub[i, j] (sub undefined: 0)
  virtual void scale_rows(const Tensor& f, const Tensor& a, const Tensor& sub, Tensor& out) = 0;
  // out[i] += (sum_j a[i, j] b[i, j]) / d[i], the quotient taken in double
  virtual void row_dots_div_add(const Tensor& a, const Tensor& b, const Tensor& d,
                                Tensor& out) = 0;
  virtual void div(const Tensor& a, const Tensor& b, Tensor& out) = 0;  // out = a / b

  // Optimizer and PEFT support, elementwise over tensors of any shape.
  // Sum of squares of x in double, in an order that does not depend on the thread count
  // (the global gradient norm must be the same on a resumed run).
  virtual double sum_squares(const Tensor& x) = 0;
  // The sum over xs of sum_squares(x), added in order: the same double as that loop. A GPU
  // backend reads the partial sums back once instead of once per tensor (the gradient norm of
  // a LoRA run covers a few hundred tensors).
  virtual double sum_squares_of(const std::vector<Tensor>& xs) {
    double sum = 0;
    for (const Tensor& x : xs) sum += sum_squares(x);
    return sum;
  }
  virtual void scale(Tensor& x, double alpha) = 0;                       // x *= alpha
  virtual void mul(const Tensor& a, const Tensor& b, Tensor& out) = 0;   // out = a * b
  // torch.nn.Dropout(p)'s multiplier, made where it is used: element n of keep_scale (flat) is
  // 1 / (1 - p) where counter-based stream `key` keeps it (kernels/counter_rng.h), else 0. The
  // same key gives the same mask, bit for bit, on every backend. p in [0, 1).
  virtual void dropout_mask(std::uint64_t key, double p, Tensor& keep_scale) = 0;
  // Masked parameter tuning (SDT). index: (k) I64 distinct flat indices into dst / src.
  // dst.flat[index[i]] += values[i]   values: (k)
  virtual void index_add(const Tensor& values, const Tensor& index, Tensor& dst) = 0;
  // out[i] = src.flat[index[i]]   out: (k)
  virtual void index_gather(const Tensor& src, const Tensor& index, Tensor& out) = 0;
  // One AdamW update of `param` in place, in the operation order of torch.optim.AdamW
  // (single-tensor path): param *= 1 - lr*wd; m = lerp(m, g, 1-beta1); v = beta2 v + (1-beta2) g^2;
  // param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps).  step >= 1.
  struct AdamWStep {
    double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
    std::int64_t step = 1;
  };
  virtual void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                            const AdamWStep& s) = 0;

 protected:
  OpProfile* profile_ = nullptr;
};

std::unique_ptr<Backend> make_cpu_backend();
// "cpu" or "cuda" (the first GPU; throws Error saying why when there is none). matmul: "fp32",
// or "bf16" (the CUDA backend's bf16-input products; the CPU backend refuses it).
std::unique_ptr<Backend> make_backend(const std::string& device,
                                      const std::string& matmul = "fp32");

}  // namespace ssmtune
