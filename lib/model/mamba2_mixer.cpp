#include "model/mamba2_mixer.h"

#include <cmath>

#include "model/linear.h"
#include "model/sequence_steps.h"

namespace ssmtune {

namespace {

// The mixer's sites in append_mamba2_mixer_sites's order.
enum Mamba2Site { kInProj, kOutProj };

// Does the config's dt clamp ever act? softplus is positive, so clamp(dt, 0, inf) is dt.
bool dt_clamped(const ModelConfig& c) {
  return c.time_step_limit_min > 0 || std::isfinite(c.time_step_limit_max);
}

// xBC: (rows, C) as its x (rows, E), B and C (rows, G N) parts, copied out.
std::vector<Tensor> split_xbc(Backend& be, const ModelConfig& c, const Tensor& xbc) {
  const std::int64_t rows = xbc.dim(0), E = c.d_inner, GN = c.n_groups * c.d_state;
  std::vector<Tensor> parts{be.empty({rows, E}, xbc.dtype()), be.empty({rows, GN}, xbc.dtype()),
                            be.empty({rows, GN}, xbc.dtype())};
  be.split_columns(xbc, 0, parts[0]);
  be.split_columns(xbc, E, parts[1]);
  be.split_columns(xbc, E + GN, parts[2]);
  return parts;
}

// in_proj's output parts for a linear hook, one per slice (a LoRA on one slice must see its
// rows alone): z, x, B, C, dt, at their rows of the weight.
std::vector<LinearPart> in_proj_parts(const ModelConfig& c, const Tensor& z,
                                      const std::vector<Tensor>& xbc, const Tensor& dt) {
  const std::int64_t E = c.d_inner, GN = c.n_groups * c.d_state;
  return {{0, z}, {E, xbc[0]}, {2 * E, xbc[1]}, {2 * E + GN, xbc[2]}, {E + c.conv_dim(), dt}};
}

// What the scan hook reads: x (B, L, E), dt (B, L, H), Cm (B, L, G N).
ScanIO scan_io(const ModelConfig& c, const Mamba2Activations& a) {
  const std::int64_t B = a.x.dim(0), L = a.x.dim(1);
  return {a.x.reshape({B, L, c.d_inner}), a.dt, a.Cm.reshape({B, L, c.n_groups * c.d_state})};
}

}  // namespace

void append_mamba2_mixer_slots(const ModelConfig& c, const std::string& module,
                               Mamba2MixerWeights& w, std::vector<ParamSlot>& out) {
  const std::int64_t D = c.d_model, E = c.d_inner, H = c.ssm_heads, K = c.d_conv;
  const std::int64_t C = c.conv_dim(), P_in = E + C + H;
  const char* no_bias = c.use_bias ? nullptr : "use_bias is false";
  const char* no_conv_bias = c.use_conv_bias ? nullptr : "use_conv_bias is false";
  const std::string p = module + ".";
  // Mamba2Mixer.__init__'s registration order
  out.push_back({p + "dt_bias", &w.dt_bias, {H}});
  out.push_back({p + "A_log", &w.A_log, {H}});
  out.push_back({p + "D", &w.D, {H}});
  out.push_back({p + "conv1d.weight", &w.conv1d, {C, 1, K}});
  out.push_back({p + "conv1d.bias", &w.conv1d_bias, {C}, no_conv_bias});
  out.push_back({p + "in_proj.weight", &w.in_proj, {P_in, D}});
  out.push_back({p + "in_proj.bias", &w.in_proj_bias, {P_in}, no_bias});
  out.push_back({p + "norm.weight", &w.norm, {E}});
  out.push_back({p + "out_proj.weight", &w.out_proj, {D, E}});
  out.push_back({p + "out_proj.bias", &w.out_proj_bias, {D}, no_bias});
}

void append_mamba2_mixer_sites(const ModelConfig& c, std::int64_t layer,
                               const std::string& module, std::vector<LinearSite>& out) {
  const std::int64_t D = c.d_model, E = c.d_inner, H = c.ssm_heads, GN = c.n_groups * c.d_state;
  const std::int64_t C = c.conv_dim();
  out.push_back({-1, layer, module + ".in_proj", "in_proj", D, E + C + H,
                 {{"z", 0, E}, {"x", E, E}, {"B", 2 * E, GN}, {"C", 2 * E + GN, GN},
                  {"dt", E + C, H}},
                 -1});
  out.push_back({-1, layer, module + ".out_proj", "out_proj", E, D, {}, -1});
}

Tensor mamba2_mixer_linear_weight(const Mamba2MixerWeights& w, const LinearSite& site) {
  if (site.name == "in_proj") return w.in_proj;
  if (site.name == "out_proj") return w.out_proj;
  throw Error(site.module + ": not a linear layer of a Mamba-2 mixer");
}

void reset_mamba2_cache(Backend& be, const ModelConfig& cfg, const Mamba2MixerWeights& w,
                        std::int64_t layer, const MixerHooks& hooks, DType dtype,
                        Mamba2Cache& cache) {
  if (!cache.A.defined()) {
    cache.A = be.empty({cfg.ssm_heads}, dtype);
    be.ssm_A_forward(w.A_log, cache.A);
  }
  cache.conv = be.zeros({1, cfg.d_conv - 1, cfg.conv_dim()}, dtype);
  const Tensor conv0 = hooks.scan ? hooks.scan->initial_conv_state(layer) : Tensor();
  if (conv0.defined()) be.copy(conv0, cache.conv);  // initial-state tuning's conv state
  cache.affix_pending = hooks.input != nullptr;
  cache.ssm = be.zeros({1, cfg.ssm_heads, cfg.ssm_head_dim, cfg.d_state}, dtype);
  const Tensor h0 = hooks.scan ? hooks.scan->initial_state(layer, 1) : Tensor();
  if (h0.defined()) be.copy(h0, cache.ssm);
  cache.hook = zero_carried_state(be, hooks.scan, layer, dtype);
}

void mamba2_mixer_forward(Backend& be, const ModelConfig& cfg, const Mamba2MixerWeights& w,
                          const Tensor& n, Mamba2Activations& a, Tensor& out, std::int64_t layer,
                          const MixerHooks& hooks, Mamba2Cache* cache) {
  const std::int64_t B = n.dim(0), L = n.dim(1), D = cfg.d_model, E = cfg.d_inner;
  const std::int64_t H = cfg.ssm_heads, P = cfg.ssm_head_dim, G = cfg.n_groups, N = cfg.d_state;
  const std::int64_t K = cfg.d_conv, C = cfg.conv_dim(), rows = B * L;
  const DType dt = n.dtype();
  const Tensor n2 = n.reshape({rows, D});
  LinearHook* hook = hooks.linear;
  ScanHook* scan_hook = hooks.scan;
  const LinearSite* sites = hooks.sites;
  check(!cache || B == 1, "recurrent decoding runs one sequence at a time");
  check(!hook || sites, "mamba2_mixer_forward: a linear hook without the mixer's sites");

  // in_proj as three products over the weight's row ranges: z, xBC and dt come out contiguous.
  a.z = be.empty({B, L, E}, dt);
  Tensor xbc = be.empty({B, L, C}, dt), dt_in = be.empty({B, L, H}, dt);
  Tensor z2 = a.z.reshape({rows, E}), xbc2 = xbc.reshape({rows, C});
  Tensor dt2 = dt_in.reshape({rows, H});
  linear_forward(be, n2, w.in_proj.rows(0, E), row_slice(w.in_proj_bias, 0, E), z2);
  linear_forward(be, n2, w.in_proj.rows(E, E + C), row_slice(w.in_proj_bias, E, E + C), xbc2);
  linear_forward(be, n2, w.in_proj.rows(E + C, E + C + H),
                 row_slice(w.in_proj_bias, E + C, E + C + H), dt2);
  if (hook) {
    const std::vector<Tensor> xbc_parts = split_xbc(be, cfg, xbc2);
    std::vector<LinearPart> parts = in_proj_parts(cfg, z2, xbc_parts, dt2);
    hook->linear_forward(sites[kInProj], n2, parts);
    be.merge_columns(xbc_parts[0], 0, xbc2);
    be.merge_columns(xbc_parts[1], E, xbc2);
    be.merge_columns(xbc_parts[2], E + G * N, xbc2);
  }

  // Affix tuning's steps (at the start of a sequence only): their xBC part goes in front of the
  // conv's input, their dt part in front of dt_in.
  const bool affix_now = hooks.input && (!cache || cache->affix_pending);
  const Tensor affix = affix_now ? hooks.input->affix(layer) : Tensor();  // (Ta, C + H)
  if (cache) cache->affix_pending = false;
  a.n_affix = affix.defined() ? affix.dim(0) : 0;
  const std::int64_t Ta = a.n_affix, Le = Ta + L, rows_e = B * Le;
  Tensor affix_xbc, affix_dt;
  if (Ta > 0) {
    affix_xbc = be.empty({Ta, C}, dt);
    affix_dt = be.empty({Ta, H}, dt);
    be.split_columns(affix, 0, affix_xbc);
    be.split_columns(affix, C, affix_dt);
  }

  // The conv over [context ; affix ; xBC]: K-1 steps of left context from the decoding cache or
  // the learned conv state instead of zero padding.
  const Tensor context = cache       ? cache->conv
                         : scan_hook ? scan_hook->initial_conv_state(layer)
                                     : Tensor();
  a.n_context = context.defined() ? K - 1 : 0;
  const std::int64_t Cx = a.n_context;
  const Tensor conv_w = w.conv1d.reshape({C, K});
  if (Cx == 0 && Ta == 0) {
    a.conv_in = xbc;
  } else {
    a.conv_in = be.empty({B, Cx + Le, C}, dt);
    if (Cx > 0) put_steps_broadcast(be, context, 0, a.conv_in);
    if (Ta > 0) put_steps_broadcast(be, affix_xbc, Cx, a.conv_in);
    put_steps(be, xbc, Cx + Ta, a.conv_in);
  }
  a.c = be.empty({B, Le, C}, dt);
  a.u = be.empty({B, Le, C}, dt);
  if (Cx == 0) {  // the conv and its SiLU in one pass where the backend fuses them
    be.conv1d_silu_forward(a.conv_in, conv_w, w.conv1d_bias, a.c, a.u);
  } else {  // the context's own outputs belong to earlier tokens: dropped
    Tensor c_full = be.empty({B, Cx + Le, C}, dt);
    be.conv1d_forward(a.conv_in, conv_w, w.conv1d_bias, c_full);
    take_steps(be, c_full, Cx, a.c);
    be.silu_forward(a.c, a.u);
  }
  if (cache && K > 1) take_steps(be, a.conv_in, a.conv_in.dim(1) - (K - 1), cache->conv);
  const std::vector<Tensor> u_parts = split_xbc(be, cfg, a.u.reshape({rows_e, C}));
  a.x = u_parts[0].reshape({B, Le, H, P});
  a.Bm = u_parts[1].reshape({B, Le, G, N});
  a.Cm = u_parts[2].reshape({B, Le, G, N});

  // dt = clamp(softplus([affix ; dt_in] + dt_bias))
  a.dt_pre = dt_in;
  if (Ta > 0) {
    a.dt_pre = be.empty({B, Le, H}, dt);
    put_steps_broadcast(be, affix_dt, 0, a.dt_pre);
    put_steps(be, dt_in, Ta, a.dt_pre);
  }
  Tensor dt_pre2 = a.dt_pre.reshape({rows_e, H});
  be.add_bias(dt_pre2, w.dt_bias);
  a.dt_soft = be.empty({B, Le, H}, dt);
  be.softplus_forward(a.dt_pre, a.dt_soft);
  a.dt = a.dt_soft;
  if (dt_clamped(cfg)) {
    a.dt = be.empty({B, Le, H}, dt);
    be.clamp_forward(a.dt_soft, cfg.time_step_limit_min, cfg.time_step_limit_max, a.dt);
  }

  if (cache) {
    a.A = cache->A;
  } else {
    a.A = be.empty({H}, dt);
    be.ssm_A_forward(w.A_log, a.A);
  }
  a.h0 = cache ? cache->ssm : scan_hook ? scan_hook->initial_state(layer, B) : Tensor();
  a.chunk = cfg.chunk_size;
  a.h_saved = be.empty({B, (Le + a.chunk - 1) / a.chunk, H, P, N}, dt);
  Tensor h_last = cache ? be.empty({B, H, P, N}, dt) : Tensor();
  Tensor y_scan = be.empty({B, Le, E}, dt);
  Tensor y4 = y_scan.reshape({B, Le, H, P});
  be.ssd_forward({a.x, a.dt, a.A, a.Bm, a.Cm, w.D, a.h0, a.chunk}, y4, a.h_saved, h_last);
  if (cache) cache->ssm = h_last;
  if (scan_hook)  // the state read-out terms, before the gate
    scan_hook->output_forward(layer, scan_io(cfg, a), y_scan,
                              cache && cache->hook.defined() ? &cache->hook : nullptr);
  a.y = y_scan;
  if (Ta > 0) {  // the affix's outputs are dropped before the gate
    a.y = be.empty({B, L, E}, dt);
    take_steps(be, y_scan, Ta, a.y);
  }

  // out = out_proj(rmsnorm(y * silu(z)))
  a.gated = be.empty({B, L, E}, dt);
  be.gate_forward(a.y, a.z, a.gated);
  a.normed = be.empty({B, L, E}, dt);
  a.rstd = be.empty({rows, G}, dt);  // the gated norm runs per group of E / G channels
  Tensor normed2 = a.normed.reshape({rows, E});
  be.rmsnorm_forward(a.gated.reshape({rows, E}), w.norm, cfg.layer_norm_epsilon, normed2, a.rstd);
  Tensor out2 = out.reshape({rows, D});
  linear_forward(be, normed2, w.out_proj, w.out_proj_bias, out2);
  if (hook) {
    std::vector<LinearPart> parts{{0, out2}};
    hook->linear_forward(sites[kOutProj], normed2, parts);
  }
}

void mamba2_mixer_backward(Backend& be, const ModelConfig& cfg, const Mamba2MixerWeights& w,
                           const Tensor& n, const Mamba2Activations& a, const Tensor& dout,
                           Tensor& dn, Mamba2MixerWeights& g, std::int64_t layer,
                           const MixerHooks& hooks) {
  const std::int64_t B = n.dim(0), L = n.dim(1), D = cfg.d_model, E = cfg.d_inner;
  const std::int64_t H = cfg.ssm_heads, P = cfg.ssm_head_dim, G = cfg.n_groups, N = cfg.d_state;
  const std::int64_t K = cfg.d_conv, C = cfg.conv_dim(), rows = B * L;
  const DType dt = n.dtype();
  const std::int64_t Cx = a.n_context, Ta = a.n_affix, Le = Ta + L, rows_e = B * Le;
  LinearHook* hook = hooks.linear;
  ScanHook* scan_hook = hooks.scan;
  const LinearSite* sites = hooks.sites;
  const Tensor n2 = n.reshape({rows, D}), dout2 = dout.reshape({rows, D});

  // out = out_proj(normed)
  const Tensor normed2 = a.normed.reshape({rows, E});
  Tensor dnormed = be.empty({rows, E}, dt);
  linear_backward(be, dout2, normed2, w.out_proj, dnormed, 0.0, g.out_proj, g.out_proj_bias);
  if (hook) hook->linear_backward(sites[kOutProj], normed2, {{0, dout2}}, dnormed);
  // normed = rmsnorm(gated) * norm; gated = y * silu(z)
  Tensor dgated = be.empty({rows, E}, dt);
  Tensor dnorm_w = g.norm.defined() ? g.norm : be.zeros({E}, dt);
  be.rmsnorm_backward(dnormed, a.gated.reshape({rows, E}), w.norm, a.rstd, dgated, dnorm_w);
  Tensor dy = be.empty({B, L, E}, dt), dz = be.empty({B, L, E}, dt);
  be.gate_backward(dgated.reshape({B, L, E}), a.y, a.z, dy, dz);
  Tensor dy_scan = dy;  // the affix's dropped steps get no gradient
  if (Ta > 0) {
    dy_scan = be.zeros({B, Le, E}, dt);
    put_steps(be, dy, Ta, dy_scan);
  }

  // the scan
  Backend::SsdGrads sg;
  sg.dx = be.empty({B, Le, H, P}, dt);
  sg.ddt = be.empty({B, Le, H}, dt);
  sg.dA = be.zeros({H}, dt);
  sg.dBm = be.empty({B, Le, G, N}, dt);
  sg.dCm = be.empty({B, Le, G, N}, dt);
  sg.dD = g.D;
  if (a.h0.defined()) sg.dh0 = be.empty({B, H, P, N}, dt);
  be.ssd_backward({a.x, a.dt, a.A, a.Bm, a.Cm, w.D, a.h0, a.chunk}, a.h_saved,
                  dy_scan.reshape({B, Le, H, P}), sg);
  if (scan_hook) {
    ScanIOGrads io_grads{sg.dx.reshape({B, Le, E}), sg.ddt, sg.dCm.reshape({B, Le, G * N})};
    scan_hook->output_backward(layer, scan_io(cfg, a), dy_scan, io_grads);
    if (a.h0.defined()) scan_hook->initial_state_backward(layer, sg.dh0);
  }
  if (g.A_log.defined()) be.ssm_A_backward(sg.dA, a.A, g.A_log);

  // dt = clamp(softplus(dt_pre)): the gradient of dt_in and of dt_bias
  Tensor ddt_soft = sg.ddt;
  if (dt_clamped(cfg)) {
    ddt_soft = be.empty({B, Le, H}, dt);
    be.clamp_backward(sg.ddt, a.dt_soft, cfg.time_step_limit_min, cfg.time_step_limit_max,
                      ddt_soft);
  }
  Tensor ddt_pre_e = be.empty({B, Le, H}, dt);
  Tensor ddt_pre_e2 = ddt_pre_e.reshape({rows_e, H});
  be.softplus_backward(ddt_soft.reshape({rows_e, H}), a.dt_pre.reshape({rows_e, H}),
                       ddt_pre_e2);
  if (g.dt_bias.defined()) be.bias_backward(ddt_pre_e2, g.dt_bias);
  Tensor ddt_pre = ddt_pre_e2;  // (rows, H) at the real tokens
  Tensor daffix;                // (Ta, C + H)
  if (Ta > 0) {
    daffix = be.zeros({Ta, C + H}, dt);
    Tensor daffix_dt = be.zeros({Ta, H}, dt);
    sum_steps(be, ddt_pre_e, 0, daffix_dt);
    be.merge_columns(daffix_dt, C, daffix);
    ddt_pre = be.empty({rows, H}, dt);
    Tensor ddt_in = ddt_pre.reshape({B, L, H});
    take_steps(be, ddt_pre_e, Ta, ddt_in);
  }

  // u = [x ; Bm ; Cm] = silu(conv1d([context ; affix ; xBC]))
  Tensor du = be.empty({rows_e, C}, dt);
  be.merge_columns(sg.dx.reshape({rows_e, E}), 0, du);
  be.merge_columns(sg.dBm.reshape({rows_e, G * N}), E, du);
  be.merge_columns(sg.dCm.reshape({rows_e, G * N}), E + G * N, du);
  Tensor dc = be.empty({B, Le, C}, dt);
  be.silu_backward(du.reshape({B, Le, C}), a.c, dc);
  Tensor dc_full = dc;
  if (Cx > 0) {  // the learned conv state's steps: their outputs were dropped
    dc_full = be.zeros({B, Cx + Le, C}, dt);
    put_steps(be, dc, Cx, dc_full);
  }
  Tensor dconv_in = be.empty(a.conv_in.shape(), dt);
  Tensor dconv = g.conv1d.defined() ? g.conv1d.reshape({C, K}) : Tensor();  // frozen: not formed
  be.conv1d_backward(dc_full, a.conv_in, w.conv1d.reshape({C, K}), dconv_in, dconv,
                     g.conv1d_bias);
  Tensor dxbc = dconv_in;
  if (Cx > 0 && scan_hook) {
    Tensor dcontext = be.zeros({1, Cx, C}, dt);
    sum_steps(be, dconv_in, 0, dcontext);
    scan_hook->initial_conv_state_backward(layer, dcontext);
  }
  if (Ta > 0) {
    Tensor daffix_xbc = be.zeros({Ta, C}, dt);
    sum_steps(be, dconv_in, Cx, daffix_xbc);
    be.merge_columns(daffix_xbc, 0, daffix);
    hooks.input->affix_backward(layer, daffix);
  }
  if (Cx > 0 || Ta > 0) {
    dxbc = be.empty({B, L, C}, dt);
    take_steps(be, dconv_in, Cx + Ta, dxbc);
  }

  // [z ; xBC ; dt_in] = in_proj(n): dn = dz W_z + dxBC W_xBC + ddt W_dt
  Tensor dn2 = dn.reshape({rows, D}), dxbc2 = dxbc.reshape({rows, C});
  const auto rows_of = [&](std::int64_t r0, std::int64_t r1, Tensor& dy_part, double beta) {
    Tensor dW = row_slice(g.in_proj, r0, r1), db = row_slice(g.in_proj_bias, r0, r1);
    linear_backward(be, dy_part, n2, w.in_proj.rows(r0, r1), dn2, beta, dW, db);
  };
  Tensor dz2 = dz.reshape({rows, E});
  rows_of(0, E, dz2, 0.0);
  rows_of(E, E + C, dxbc2, 1.0);
  rows_of(E + C, E + C + H, ddt_pre, 1.0);
  if (hook)
    hook->linear_backward(sites[kInProj], n2,
                          in_proj_parts(cfg, dz2, split_xbc(be, cfg, dxbc2), ddt_pre), dn2);
}

}  // namespace ssmtune
