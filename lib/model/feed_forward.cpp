#include "model/feed_forward.h"

#include "model/linear.h"

namespace ssmtune {

namespace {

// The MLP's sites in append_mlp_sites's order; a MoE lists the router, then these per expert.
enum MlpSite { kGate, kUp, kDown, kMlpSites };

const LinearSite* site(const LinearSite* sites, std::int64_t k) {
  return sites ? sites + k : nullptr;
}

// y = x W^T plus the hook's term at `s`.   x: (rows, in)   y: (rows, out)
void projection_forward(Backend& be, const Tensor& x, const Tensor& W, Tensor y, LinearHook* hook,
                        const LinearSite* s) {
  linear_forward(be, x, W, Tensor(), y);
  if (hook) {
    std::vector<LinearPart> parts{{0, y}};
    hook->linear_forward(*s, x, parts);
  }
}

// dx (beta_dx 0: =, 1: +=) dy W, dW += dy^T x, and the hook's gradients at `s`.
void projection_backward(Backend& be, const Tensor& dy, const Tensor& x, const Tensor& W,
                         Tensor dx, double beta_dx, Tensor& dW, LinearHook* hook,
                         const LinearSite* s) {
  Tensor no_bias;
  linear_backward(be, dy, x, W, dx, beta_dx, dW, no_bias);
  if (hook) hook->linear_backward(*s, x, {{0, dy}}, dx);
}

}  // namespace

void append_mlp_slots(const ModelConfig& c, const std::string& module, MlpWeights& w,
                      std::vector<ParamSlot>& out) {
  const std::int64_t D = c.d_model, F = c.d_ffn;
  out.push_back({module + ".gate_proj.weight", &w.gate_proj, {F, D}});
  out.push_back({module + ".up_proj.weight", &w.up_proj, {F, D}});
  out.push_back({module + ".down_proj.weight", &w.down_proj, {D, F}});
}

void append_moe_slots(const ModelConfig& c, const std::string& module, MoeWeights& w,
                      std::vector<ParamSlot>& out) {
  out.push_back({module + ".router.weight", &w.router, {c.n_experts, c.d_model}});
  w.experts.resize(std::size_t(c.n_experts));
  for (std::int64_t e = 0; e < c.n_experts; ++e)
    append_mlp_slots(c, module + ".experts." + std::to_string(e), w.experts[std::size_t(e)], out);
}

void append_mlp_sites(const ModelConfig& c, std::int64_t layer, std::int64_t expert,
                      const std::string& module,
                      std::vector<LinearSite>& out) {
  const std::int64_t D = c.d_model, F = c.d_ffn;
  const std::string p = module + ".";
  out.push_back({-1, layer, p + "gate_proj", "gate_proj", D, F, {}, expert});
  out.push_back({-1, layer, p + "up_proj", "up_proj", D, F, {}, expert});
  out.push_back({-1, layer, p + "down_proj", "down_proj", F, D, {}, expert});
}

void append_moe_sites(const ModelConfig& c, std::int64_t layer, const std::string& module,
                      std::vector<LinearSite>& out) {
  out.push_back({-1, layer, module + ".router", "router", c.d_model, c.n_experts, {}, -1});
  for (std::int64_t e = 0; e < c.n_experts; ++e)
    append_mlp_sites(c, layer, e, module + ".experts." + std::to_string(e), out);
}

Tensor mlp_linear_weight(const MlpWeights& w, const LinearSite& s) {
  if (s.name == "gate_proj") return w.gate_proj;
  if (s.name == "up_proj") return w.up_proj;
  if (s.name == "down_proj") return w.down_proj;
  throw Error(s.module + ": not a linear layer of an MLP");
}

Tensor moe_linear_weight(const MoeWeights& w, const LinearSite& s) {
  if (s.name == "router") return w.router;
  check(s.expert >= 0 && s.expert < std::int64_t(w.experts.size()), s.module + ": no such expert");
  return mlp_linear_weight(w.experts[std::size_t(s.expert)], s);
}

void mlp_forward(Backend& be, const MlpWeights& w, const Tensor& x, MlpActivations& a,
                 Tensor& out, LinearHook* hook, const LinearSite* sites) {
  const std::int64_t rows = x.dim(0), F = w.gate_proj.dim(0);
  const DType dt = x.dtype();
  a.gate = be.empty({rows, F}, dt);
  a.up = be.empty({rows, F}, dt);
  a.h = be.empty({rows, F}, dt);
  projection_forward(be, x, w.gate_proj, a.gate, hook, site(sites, kGate));
  projection_forward(be, x, w.up_proj, a.up, hook, site(sites, kUp));
  be.gate_forward(a.up, a.gate, a.h);  // up * silu(gate)
  projection_forward(be, a.h, w.down_proj, out, hook, site(sites, kDown));
}

void mlp_backward(Backend& be, const MlpWeights& w, const Tensor& x, const MlpActivations& a,
                  const Tensor& dout, Tensor& dx, MlpWeights& g, LinearHook* hook,
                  const LinearSite* sites) {
  const std::int64_t rows = x.dim(0), F = w.gate_proj.dim(0);
  const DType dt = x.dtype();
  Tensor dh = be.empty({rows, F}, dt);
  projection_backward(be, dout, a.h, w.down_proj, dh, 0.0, g.down_proj, hook, site(sites, kDown));
  Tensor dup = be.empty({rows, F}, dt), dgate = be.empty({rows, F}, dt);
  be.gate_backward(dh, a.up, a.gate, dup, dgate);
  projection_backward(be, dgate, x, w.gate_proj, dx, 0.0, g.gate_proj, hook, site(sites, kGate));
  projection_backward(be, dup, x, w.up_proj, dx, 1.0, g.up_proj, hook, site(sites, kUp));
}

void moe_forward(Backend& be, const ModelConfig& cfg, const MoeWeights& w, const Tensor& x,
                 MoeActivations& a, Tensor& out, LinearHook* hook, const LinearSite* sites) {
  const std::int64_t rows = x.dim(0), D = cfg.d_model, X = cfg.n_experts;
  const std::int64_t k = cfg.experts_per_token, n = rows * k;
  const DType dt = x.dtype();
  a.logits = be.empty({rows, X}, dt);
  projection_forward(be, x, w.router, a.logits, hook, site(sites, 0));
  a.probs = be.empty({rows, X}, dt);
  a.weights = be.empty({rows, k}, dt);
  a.experts = be.empty({rows, k}, DType::I64);
  be.moe_router_forward(a.logits, k, a.probs, a.weights, a.experts);

  // The permutation is planned on the host (rows * k integers): expert e's tokens in token
  // order, as HF's loop over experts takes them.
  a.experts_host = Tensor::empty({rows, k}, DType::I64);
  be.copy(a.experts, a.experts_host);
  const std::int64_t* sel = a.experts_host.data<std::int64_t>();
  a.offset.assign(std::size_t(X + 1), 0);
  for (std::int64_t i = 0; i < n; ++i) {
    check(sel[i] >= 0 && sel[i] < X, "moe_forward: expert index out of range");
    ++a.offset[std::size_t(sel[i]) + 1];
  }
  for (std::int64_t e = 0; e < X; ++e) a.offset[std::size_t(e) + 1] += a.offset[std::size_t(e)];
  Tensor slot_host = Tensor::empty({rows, k}, DType::I64);
  std::vector<std::int64_t> next(a.offset.begin(), a.offset.end() - 1);
  for (std::int64_t i = 0; i < n; ++i) slot_host.data<std::int64_t>()[i] = next[std::size_t(sel[i])]++;
  a.slot = be.empty({rows, k}, DType::I64);
  be.copy(slot_host, a.slot);

  a.xs = be.empty({n, D}, dt);
  be.moe_dispatch(x, a.slot, a.xs);
  a.ys = be.empty({n, D}, dt);
  a.expert.assign(std::size_t(X), MlpActivations());
  for (std::int64_t e = 0; e < X; ++e) {
    const std::int64_t r0 = a.offset[std::size_t(e)], r1 = a.offset[std::size_t(e) + 1];
    if (r0 == r1) continue;  // no token chose this expert
    Tensor ys_e = a.ys.rows(r0, r1);
    mlp_forward(be, w.experts[std::size_t(e)], a.xs.rows(r0, r1), a.expert[std::size_t(e)], ys_e,
                hook, site(sites, 1 + e * kMlpSites));
  }
  be.moe_combine(a.ys, a.slot, a.weights, out);
}

void moe_backward(Backend& be, const ModelConfig& cfg, const MoeWeights& w, const Tensor& x,
                  const MoeActivations& a, const Tensor& dout, const Tensor& dprobs_extra,
                  Tensor& dx, MoeWeights& g, LinearHook* hook, const LinearSite* sites) {
  const std::int64_t rows = x.dim(0), D = cfg.d_model, X = cfg.n_experts;
  const std::int64_t k = cfg.experts_per_token, n = rows * k;
  const DType dt = x.dtype();
  Tensor dys = be.empty({n, D}, dt), dweights = be.empty({rows, k}, dt);
  be.moe_combine_backward(dout, a.ys, a.slot, a.weights, dys, dweights);

  // The router: dx = dlogits Wr first (overwriting), then the experts' input gradients add.
  Tensor dlogits = be.empty({rows, X}, dt);
  be.moe_router_backward(dweights, a.probs, a.experts, dprobs_extra, dlogits);
  projection_backward(be, dlogits, x, w.router, dx, 0.0, g.router, hook, site(sites, 0));

  Tensor dxs = be.zeros({n, D}, dt);
  MlpWeights frozen;  // every expert frozen
  for (std::int64_t e = 0; e < X; ++e) {
    const std::int64_t r0 = a.offset[std::size_t(e)], r1 = a.offset[std::size_t(e) + 1];
    if (r0 == r1) continue;
    MlpWeights& ge = g.experts.empty() ? frozen : g.experts[std::size_t(e)];
    Tensor dxs_e = dxs.rows(r0, r1);
    mlp_backward(be, w.experts[std::size_t(e)], a.xs.rows(r0, r1), a.expert[std::size_t(e)],
                 dys.rows(r0, r1), dxs_e, ge, hook, site(sites, 1 + e * kMlpSites));
  }
  be.moe_dispatch_backward(dxs, a.slot, dx);
}

}  // namespace ssmtune
