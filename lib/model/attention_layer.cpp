#include "model/attention_layer.h"

#include <cmath>

#include "model/linear.h"
#include "model/sequence_steps.h"

namespace ssmtune {

namespace {
// The layer's sites in append_attention_sites's order.
enum AttentionSite { kQ, kK, kV, kO };

const LinearSite* site(const LinearSite* sites, AttentionSite k) {
  return sites ? sites + k : nullptr;
}

double score_scale(const ModelConfig& c) { return 1.0 / std::sqrt(double(c.head_dim())); }

// y = x W^T plus the hook's term at `site`.   x: (rows, in)   y: (rows, out)
void projection_forward(Backend& be, const Tensor& x, const Tensor& W, Tensor y, LinearHook* hook,
                        const LinearSite* site) {
  linear_forward(be, x, W, Tensor(), y);
  if (hook) {
    std::vector<LinearPart> parts{{0, y}};
    hook->linear_forward(*site, x, parts);
  }
}

// dx (+)= dy W, dW += dy^T x and the hook's gradients. beta_dx: 0 overwrites dx, 1 adds.
void projection_backward(Backend& be, const Tensor& dy, const Tensor& x, const Tensor& W,
                         Tensor& dx, double beta_dx, Tensor& dW, LinearHook* hook,
                         const LinearSite* site) {
  Tensor no_bias;
  linear_backward(be, dy, x, W, dx, beta_dx, dW, no_bias);
  if (hook) hook->linear_backward(*site, x, {{0, dy}}, dx);
}

}  // namespace

void append_attention_slots(const ModelConfig& c, const std::string& module, AttentionWeights& w,
                            std::vector<ParamSlot>& out) {
  const std::int64_t D = c.d_model, hd = c.head_dim(), H = c.n_heads, KV = c.n_kv_heads;
  const std::string p = module + ".";
  out.push_back({p + "q_proj.weight", &w.q_proj, {H * hd, D}});
  out.push_back({p + "k_proj.weight", &w.k_proj, {KV * hd, D}});
  out.push_back({p + "v_proj.weight", &w.v_proj, {KV * hd, D}});
  out.push_back({p + "o_proj.weight", &w.o_proj, {D, H * hd}});
}

void append_attention_sites(const ModelConfig& c, std::int64_t layer, const std::string& module,
                            std::vector<LinearSite>& out) {
  const std::int64_t D = c.d_model, hd = c.head_dim(), H = c.n_heads, KV = c.n_kv_heads;
  const auto site = [&](const char* name, std::int64_t in, std::int64_t rows) {
    out.push_back({-1, layer, module + "." + name, name, in, rows, {}, -1});
  };
  site("q_proj", D, H * hd);
  site("k_proj", D, KV * hd);
  site("v_proj", D, KV * hd);
  site("o_proj", H * hd, D);
}

Tensor attention_linear_weight(const AttentionWeights& w, const LinearSite& site) {
  if (site.name == "q_proj") return w.q_proj;
  if (site.name == "k_proj") return w.k_proj;
  if (site.name == "v_proj") return w.v_proj;
  if (site.name == "o_proj") return w.o_proj;
  throw Error(site.module + ": not a linear layer of an attention mixer");
}

void attention_forward(Backend& be, const ModelConfig& cfg, const AttentionWeights& w,
                       const Tensor& n, const Tensor& key_mask, AttentionActivations& a,
                       Tensor& out, LinearHook* hook, const LinearSite* sites,
                       AttentionCache* cache) {
  const std::int64_t B = n.dim(0), L = n.dim(1), D = cfg.d_model, rows = B * L;
  const std::int64_t H = cfg.n_heads, KV = cfg.n_kv_heads, hd = cfg.head_dim();
  const DType dt = n.dtype();
  check(!hook || sites, "attention_forward: a linear hook without the layer's sites");
  check(!cache || (B == 1 && !key_mask.defined()),
        "attention decoding runs one unpadded sequence at a time");
  const Tensor n2 = n.reshape({rows, D});
  a.q = be.empty({B, L, H, hd}, dt);
  a.k = be.empty({B, L, KV, hd}, dt);
  a.v = be.empty({B, L, KV, hd}, dt);
  a.key_mask = key_mask;
  projection_forward(be, n2, w.q_proj, a.q.reshape({rows, H * hd}), hook, site(sites, kQ));
  projection_forward(be, n2, w.k_proj, a.k.reshape({rows, KV * hd}), hook, site(sites, kK));
  projection_forward(be, n2, w.v_proj, a.v.reshape({rows, KV * hd}), hook, site(sites, kV));

  a.a = be.empty({B, L, H, hd}, dt);
  const std::int64_t Lc = cache && cache->k.defined() ? cache->k.dim(1) : 0;
  if (Lc == 0) {
    a.lse = be.empty({B, H, L}, dt);
    be.attention_forward(a.q, a.k, a.v, key_mask, score_scale(cfg), a.a, a.lse);
    if (cache) {
      cache->k = a.k;
      cache->v = a.v;
    }
  } else {
    // The block's L queries sit at positions Lc .. Lc+L-1 of the Lc + L keys: the op takes
    // them as the last L positions (Backend::attention_forward with Lq < Lk), so a block
    // scores at most L (Lc + L) query-key pairs, not (Lc + L)^2.
    const std::int64_t T = Lc + L;
    Tensor k_all = be.empty({1, T, KV, hd}, dt), v_all = be.empty({1, T, KV, hd}, dt);
    Tensor k3 = k_all.reshape({1, T, KV * hd}), v3 = v_all.reshape({1, T, KV * hd});
    put_steps(be, cache->k.reshape({1, Lc, KV * hd}), 0, k3);
    put_steps(be, a.k.reshape({1, L, KV * hd}), Lc, k3);
    put_steps(be, cache->v.reshape({1, Lc, KV * hd}), 0, v3);
    put_steps(be, a.v.reshape({1, L, KV * hd}), Lc, v3);
    a.lse = be.empty({1, H, L}, dt);
    be.attention_forward(a.q, k_all, v_all, Tensor(), score_scale(cfg), a.a, a.lse);
    cache->k = k_all;
    cache->v = v_all;
  }
  Tensor out2 = out.reshape({rows, D});
  projection_forward(be, a.a.reshape({rows, H * hd}), w.o_proj, out2, hook, site(sites, kO));
}

void attention_backward(Backend& be, const ModelConfig& cfg, const AttentionWeights& w,
                        const Tensor& n, const AttentionActivations& a, const Tensor& dout,
                        Tensor& dn, AttentionWeights& g, LinearHook* hook,
                        const LinearSite* sites) {
  const std::int64_t B = n.dim(0), L = n.dim(1), D = cfg.d_model, rows = B * L;
  const std::int64_t H = cfg.n_heads, KV = cfg.n_kv_heads, hd = cfg.head_dim();
  const DType dt = n.dtype();
  Tensor da = be.empty({B, L, H, hd}, dt), da2 = da.reshape({rows, H * hd});
  projection_backward(be, dout.reshape({rows, D}), a.a.reshape({rows, H * hd}), w.o_proj, da2,
                      0.0, g.o_proj, hook, site(sites, kO));
  Tensor dq = be.empty({B, L, H, hd}, dt);
  Tensor dk = be.empty({B, L, KV, hd}, dt), dv = be.empty({B, L, KV, hd}, dt);
  be.attention_backward(a.q, a.k, a.v, a.key_mask, score_scale(cfg), a.a, a.lse, da, dq, dk, dv);
  const Tensor n2 = n.reshape({rows, D});
  Tensor dn2 = dn.reshape({rows, D});
  projection_backward(be, dq.reshape({rows, H * hd}), n2, w.q_proj, dn2, 0.0, g.q_proj, hook,
                      site(sites, kQ));
  projection_backward(be, dk.reshape({rows, KV * hd}), n2, w.k_proj, dn2, 1.0, g.k_proj, hook,
                      site(sites, kK));
  projection_backward(be, dv.reshape({rows, KV * hd}), n2, w.v_proj, dn2, 1.0, g.v_proj, hook,
                      site(sites, kV));
}

}  // namespace ssmtune
