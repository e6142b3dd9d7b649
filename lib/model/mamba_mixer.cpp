#include "model/mamba_mixer.h"

#include "model/linear.h"
#include "model/sequence_steps.h"

namespace ssmtune {

namespace {
// The mixer's sites in append_mamba_mixer_sites's order.
enum MambaSite { kInProj, kXProj, kDtProj, kOutProj };

// The scan applies softplus to dt_proj's output itself (ScanInputs::delta_softplus: no delta
// tensor written, kept or read back) unless a scan hook reads delta (state-offset tuning, the
// additional scan).
bool scan_applies_softplus(const MixerHooks& hooks) { return hooks.scan == nullptr; }

// The scan's inputs from the mixer's activations, forward and backward alike: dt_proj's output
// where the scan applies the softplus itself, else delta.
Backend::ScanInputs scan_inputs(const MixerActivations& a, const MambaMixerWeights& w,
                                const MixerHooks& hooks) {
  const bool own_softplus = scan_applies_softplus(hooks);
  return {a.u, own_softplus ? a.delta_raw : a.delta, a.A, a.Bm, a.Cm, w.D, a.h0, a.scan_chunk,
          own_softplus};
}
}  // namespace

void append_mamba_mixer_slots(const ModelConfig& c, const std::string& module,
                              MambaMixerWeights& w, std::vector<ParamSlot>& out) {
  const std::int64_t D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank, K = c.d_conv;
  const char* no_bias = c.use_bias ? nullptr : "use_bias is false";
  const char* no_conv_bias = c.use_conv_bias ? nullptr : "use_conv_bias is false";
  const std::string p = module + ".";
  out.push_back({p + "A_log", &w.A_log, {E, N}});
  out.push_back({p + "D", &w.D, {E}});
  out.push_back({p + "conv1d.weight", &w.conv1d, {E, 1, K}});
  out.push_back({p + "conv1d.bias", &w.conv1d_bias, {E}, no_conv_bias});
  out.push_back({p + "in_proj.weight", &w.in_proj, {2 * E, D}});
  out.push_back({p + "in_proj.bias", &w.in_proj_bias, {2 * E}, no_bias});
  out.push_back({p + "x_proj.weight", &w.x_proj, {R + 2 * N, E}});
  out.push_back({p + "dt_proj.weight", &w.dt_proj, {E, R}});
  out.push_back({p + "dt_proj.bias", &w.dt_proj_bias, {E}});
  out.push_back({p + "out_proj.weight", &w.out_proj, {D, E}});
  out.push_back({p + "out_proj.bias", &w.out_proj_bias, {D}, no_bias});
  if (c.mamba_inner_norms) {
    out.push_back({p + "dt_layernorm.weight", &w.dt_norm, {R}});
    out.push_back({p + "b_layernorm.weight", &w.B_norm, {N}});
    out.push_back({p + "c_layernorm.weight", &w.C_norm, {N}});
  }
}

void append_mamba_mixer_sites(const ModelConfig& c, std::int64_t layer, const std::string& module,
                              std::vector<LinearSite>& out) {
  const std::int64_t D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank;
  const auto site = [&](const char* name, std::int64_t in, std::int64_t rows,
                        std::vector<LinearSlice> slices) {
    out.push_back({-1, layer, module + "." + name, name, in, rows, std::move(slices), -1});
  };
  site("in_proj", D, 2 * E, {{"x", 0, E}, {"z", E, E}});
  site("x_proj", E, R + 2 * N, {{"dt", 0, R}, {"B", R, N}, {"C", R + N, N}});
  site("dt_proj", R, E, {});
  site("out_proj", E, D, {});
}

Tensor mamba_mixer_linear_weight(const MambaMixerWeights& w, const LinearSite& site) {
  if (site.name == "in_proj") return w.in_proj;
  if (site.name == "x_proj") return w.x_proj;
  if (site.name == "dt_proj") return w.dt_proj;
  if (site.name == "out_proj") return w.out_proj;
  throw Error(site.module + ": not a linear layer of a Mamba mixer");
}

void reset_mixer_cache(Backend& be, const ModelConfig& cfg, const MambaMixerWeights& w,
                       std::int64_t layer, const MixerHooks& hooks, DType dtype,
                       MixerCache& c) {
  const std::int64_t E = cfg.d_inner, N = cfg.d_state;
  ScanHook* scan_hook = hooks.scan;
  if (!c.A.defined()) {
    c.A = be.empty({E, N}, dtype);
    be.ssm_A_forward(w.A_log, c.A);
  }
  c.conv = be.zeros({1, cfg.d_conv - 1, E}, dtype);
  const Tensor conv0 = scan_hook ? scan_hook->initial_conv_state(layer) : Tensor();
  if (conv0.defined()) be.copy(conv0, c.conv);  // initial-state tuning's learned conv state
  c.affix_pending = hooks.input != nullptr;
  const Tensor h0 = scan_hook ? scan_hook->initial_state(layer, 1) : Tensor();
  c.ssm = be.zeros({1, E, N}, dtype);
  if (h0.defined()) be.copy(h0, c.ssm);
  c.hook = zero_carried_state(be, scan_hook, layer, dtype);
}

Tensor zero_carried_state(Backend& be, ScanHook* hook, std::int64_t layer, DType dtype) {
  Shape carried = hook ? hook->carried_state_shape(layer) : Shape{};
  if (carried.empty()) return Tensor();
  carried.insert(carried.begin(), 1);
  return be.zeros(carried, dtype);
}

void mixer_forward(Backend& be, const ModelConfig& cfg, const MambaMixerWeights& w, const Tensor& n,
                   std::int64_t scan_chunk, MixerActivations& a, Tensor& out, std::int64_t layer,
                   const MixerHooks& hooks, MixerCache* cache) {
  const std::int64_t B = n.dim(0), L = n.dim(1), D = cfg.d_model, E = cfg.d_inner;
  const std::int64_t N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv, rows = B * L;
  const DType dt = n.dtype();
  const Tensor n2 = n.reshape({rows, D});
  LinearHook* hook = hooks.linear;
  ScanHook* scan_hook = hooks.scan;
  check(!cache || B == 1, "recurrent decoding runs one sequence at a time");
  check(!hook || hooks.sites, "mixer_forward: a linear hook without the mixer's sites");

  // in_proj as two products over the weight's row halves: x and z come out contiguous.
  a.x = be.empty({B, L, E}, dt);
  a.z = be.empty({B, L, E}, dt);
  Tensor x2 = a.x.reshape({rows, E}), z2 = a.z.reshape({rows, E});
  linear_forward(be, n2, w.in_proj.rows(0, E), row_slice(w.in_proj_bias, 0, E), x2);
  linear_forward(be, n2, w.in_proj.rows(E, 2 * E), row_slice(w.in_proj_bias, E, 2 * E), z2);
  if (hook) {
    std::vector<LinearPart> parts{{0, x2}, {E, z2}};
    hook->linear_forward(hooks.sites[kInProj], n2, parts);
  }

  // conv_in = [context ; affix ; x]: the conv's left context (decoding cache or learned conv
  // state) and affix tuning's vectors (at the start of a sequence only).
  const Tensor context = cache       ? cache->conv
                         : scan_hook ? scan_hook->initial_conv_state(layer)
                                     : Tensor();
  const bool affix_now = hooks.input && (!cache || cache->affix_pending);
  const Tensor affix = affix_now ? hooks.input->affix(layer) : Tensor();
  if (cache) cache->affix_pending = false;
  a.n_context = context.defined() ? K - 1 : 0;
  a.n_affix = affix.defined() ? affix.dim(0) : 0;
  const std::int64_t Cx = a.n_context, Ta = a.n_affix, Le = Ta + L, rows_e = B * Le;
  if (Cx == 0 && Ta == 0) {
    a.conv_in = a.x;
  } else {
    a.conv_in = be.empty({B, Cx + Le, E}, dt);
    if (Cx > 0) put_steps_broadcast(be, context, 0, a.conv_in);
    if (Ta > 0) put_steps_broadcast(be, affix, Cx, a.conv_in);
    put_steps(be, a.x, Cx + Ta, a.conv_in);
  }
  a.u = be.empty({B, Le, E}, dt);
  if (Cx == 0) {  // the conv and its SiLU in one pass where the backend fuses them
    a.c = be.empty({B, Le, E}, dt);
    be.conv1d_silu_forward(a.conv_in, w.conv1d.reshape({E, K}), w.conv1d_bias, a.c, a.u);
  } else {  // the context's own outputs belong to tokens before this block: dropped
    Tensor c_full = be.empty({B, Cx + Le, E}, dt);
    be.conv1d_forward(a.conv_in, w.conv1d.reshape({E, K}), w.conv1d_bias, c_full);
    a.c = be.empty({B, Le, E}, dt);
    take_steps(be, c_full, Cx, a.c);
    be.silu_forward(a.c, a.u);
  }
  if (cache && K > 1) take_steps(be, a.conv_in, a.conv_in.dim(1) - (K - 1), cache->conv);
  const Tensor u2 = a.u.reshape({rows_e, E});

  Tensor x_dbl = be.empty({rows_e, R + 2 * N}, dt);
  linear_forward(be, u2, w.x_proj, Tensor(), x_dbl);
  a.dt_in = be.empty({rows_e, R}, dt);
  a.Bm = be.empty({B, Le, N}, dt);
  a.Cm = be.empty({B, Le, N}, dt);
  Tensor B2 = a.Bm.reshape({rows_e, N}), C2 = a.Cm.reshape({rows_e, N});
  be.split_columns(x_dbl, 0, a.dt_in);
  be.split_columns(x_dbl, R, B2);
  be.split_columns(x_dbl, R + N, C2);
  if (hook) {  // after the split, so a slice hook (x_proj.B) adds to its own part
    std::vector<LinearPart> parts{{0, a.dt_in}, {R, B2}, {R + N, C2}};
    hook->linear_forward(hooks.sites[kXProj], u2, parts);
  }
  if (cfg.mamba_inner_norms) {  // Jamba: RMSNorm over each of dt_in, B and C
    a.dt_pre = a.dt_in;
    a.B_pre = a.Bm;
    a.C_pre = a.Cm;
    a.dt_in = be.empty({rows_e, R}, dt);
    a.Bm = be.empty({B, Le, N}, dt);
    a.Cm = be.empty({B, Le, N}, dt);
    a.dt_rstd = be.empty({rows_e}, dt);
    a.B_rstd = be.empty({rows_e}, dt);
    a.C_rstd = be.empty({rows_e}, dt);
    const double eps = cfg.layer_norm_epsilon;
    be.rmsnorm_forward(a.dt_pre, w.dt_norm, eps, a.dt_in, a.dt_rstd);
    be.rmsnorm_forward(a.B_pre, w.B_norm, eps, a.Bm, a.B_rstd);
    be.rmsnorm_forward(a.C_pre, w.C_norm, eps, a.Cm, a.C_rstd);
  }

  a.delta_raw = be.empty({B, Le, E}, dt);
  Tensor draw2 = a.delta_raw.reshape({rows_e, E});
  linear_forward(be, a.dt_in, w.dt_proj, w.dt_proj_bias, draw2);
  if (hook) {
    std::vector<LinearPart> parts{{0, draw2}};
    hook->linear_forward(hooks.sites[kDtProj], a.dt_in, parts);
  }
  if (!scan_applies_softplus(hooks)) {
    a.delta = be.empty({B, Le, E}, dt);
    be.softplus_forward(a.delta_raw, a.delta);
  }

  if (cache && cache->A.defined()) {
    a.A = cache->A;
  } else {
    a.A = be.empty({E, N}, dt);
    be.ssm_A_forward(w.A_log, a.A);
  }
  a.h0 = cache ? cache->ssm : scan_hook ? scan_hook->initial_state(layer, B) : Tensor();
  a.scan_chunk = scan_chunk;
  const Backend::ScanInputs in = scan_inputs(a, w, hooks);
  a.y_scan = be.empty({B, Le, E}, dt);
  a.h_saved = be.empty({B, (Le + scan_chunk - 1) / scan_chunk, E, N}, dt);
  Tensor h_last = cache ? be.empty({B, E, N}, dt) : Tensor();
  be.selective_scan_forward(in, a.y_scan, a.h_saved, h_last);
  if (cache) cache->ssm = h_last;
  if (scan_hook)  // the state read-out terms, before the gate
    scan_hook->output_forward(layer, {a.u, a.delta, a.Cm}, a.y_scan,
                              cache && cache->hook.defined() ? &cache->hook : nullptr);
  if (Ta == 0) {
    a.y = a.y_scan;
  } else {  // the affix's outputs are dropped before the gate
    a.y = be.empty({B, L, E}, dt);
    take_steps(be, a.y_scan, Ta, a.y);
  }

  a.gated = be.empty({B, L, E}, dt);
  be.gate_forward(a.y, a.z, a.gated);
  Tensor out2 = out.reshape({rows, D});
  linear_forward(be, a.gated.reshape({rows, E}), w.out_proj, w.out_proj_bias, out2);
  if (hook) {
    std::vector<LinearPart> parts{{0, out2}};
    hook->linear_forward(hooks.sites[kOutProj], a.gated.reshape({rows, E}), parts);
  }
}

void mixer_backward(Backend& be, const ModelConfig& cfg, const MambaMixerWeights& w,
                    const Tensor& n, const MixerActivations& a, const Tensor& dout, Tensor& dn,
                    MambaMixerWeights& g, std::int64_t layer, const MixerHooks& hooks) {
  const std::int64_t B = n.dim(0), L = n.dim(1), E = cfg.d_inner;
  const std::int64_t N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv, rows = B * L;
  const std::int64_t Cx = a.n_context, Ta = a.n_affix, Le = Ta + L, rows_e = B * Le;
  const DType dt = n.dtype();
  LinearHook* hook = hooks.linear;
  ScanHook* scan_hook = hooks.scan;
  const auto flat = [&](const Tensor& t) {
    return t.reshape({t.dim(0) * t.dim(1), t.numel() / (t.dim(0) * t.dim(1))});
  };

  // out = out_proj(gated)
  Tensor dgated = be.empty({rows, E}, dt);
  linear_backward(be, flat(dout), flat(a.gated), w.out_proj, dgated, 0.0, g.out_proj,
                  g.out_proj_bias);
  if (hook)
    hook->linear_backward(hooks.sites[kOutProj], flat(a.gated), {{0, flat(dout)}}, dgated);
  // gated = y * silu(z); the affix's dropped steps get no gradient
  Tensor dy = be.empty({B, L, E}, dt), dz = be.empty({B, L, E}, dt);
  be.gate_backward(dgated.reshape({B, L, E}), a.y, a.z, dy, dz);
  Tensor dy_scan = dy;
  if (Ta > 0) {
    dy_scan = be.zeros({B, Le, E}, dt);
    put_steps(be, dy, Ta, dy_scan);
  }

  // the scan
  const Backend::ScanInputs in = scan_inputs(a, w, hooks);
  Backend::ScanGrads sg;
  sg.du = be.empty({B, Le, E}, dt);
  sg.ddelta = be.empty({B, Le, E}, dt);
  sg.dA = be.zeros({E, N}, dt);
  sg.dBm = be.empty({B, Le, N}, dt);
  sg.dCm = be.empty({B, Le, N}, dt);
  sg.dD = g.D;
  if (a.h0.defined()) sg.dh0 = be.empty({B, E, N}, dt);
  be.selective_scan_backward(in, a.h_saved, dy_scan, sg);
  if (scan_hook) {
    ScanIOGrads io_grads{sg.du, sg.ddelta, sg.dCm};
    scan_hook->output_backward(layer, {a.u, a.delta, a.Cm}, dy_scan, io_grads);
    if (a.h0.defined()) scan_hook->initial_state_backward(layer, sg.dh0);
  }
  if (g.A_log.defined()) be.ssm_A_backward(sg.dA, a.A, g.A_log);

  // delta = softplus(dt_proj(dt_in)); with the scan's own softplus, sg.ddelta is already the
  // gradient of dt_proj's output
  Tensor ddelta_raw = sg.ddelta;
  if (!in.delta_softplus) {
    ddelta_raw = be.empty({B, Le, E}, dt);
    be.softplus_backward(sg.ddelta, a.delta_raw, ddelta_raw);
  }
  Tensor ddt_in = be.empty({rows_e, R}, dt);
  linear_backward(be, flat(ddelta_raw), a.dt_in, w.dt_proj, ddt_in, 0.0, g.dt_proj, g.dt_proj_bias);
  if (hook)
    hook->linear_backward(hooks.sites[kDtProj], a.dt_in, {{0, flat(ddelta_raw)}}, ddt_in);

  Tensor dBm = sg.dBm, dCm = sg.dCm;
  if (cfg.mamba_inner_norms) {  // back through Jamba's dt, B and C norms
    const auto norm_backward = [&](const Tensor& dy, const Tensor& x, const Tensor& gain,
                                   const Tensor& rstd, Tensor& dgain) {
      Tensor dx = be.empty(x.shape(), dt);
      Tensor dg = dgain.defined() ? dgain : be.zeros(gain.shape(), dt);
      be.rmsnorm_backward(dy, x, gain, rstd, dx, dg);
      return dx;
    };
    ddt_in = norm_backward(ddt_in, a.dt_pre, w.dt_norm, a.dt_rstd, g.dt_norm);
    dBm = norm_backward(sg.dBm, a.B_pre, w.B_norm, a.B_rstd, g.B_norm);
    dCm = norm_backward(sg.dCm, a.C_pre, w.C_norm, a.C_rstd, g.C_norm);
  }

  // [dt_in ; Bm ; Cm] = x_proj(u): the gradient of u adds to the scan's du
  Tensor dx_dbl = be.empty({rows_e, R + 2 * N}, dt);
  be.merge_columns(ddt_in, 0, dx_dbl);
  be.merge_columns(flat(dBm), R, dx_dbl);
  be.merge_columns(flat(dCm), R + N, dx_dbl);
  Tensor du2 = flat(sg.du);
  Tensor no_bias;
  linear_backward(be, dx_dbl, flat(a.u), w.x_proj, du2, 1.0, g.x_proj, no_bias);
  if (hook)
    hook->linear_backward(hooks.sites[kXProj], flat(a.u),
                          {{0, ddt_in}, {R, flat(dBm)}, {R + N, flat(dCm)}}, du2);

  // u = silu(c), c = the last Le outputs of conv1d(conv_in)
  Tensor dc = be.empty({B, Le, E}, dt);
  be.silu_backward(sg.du, a.c, dc);
  Tensor dc_full = dc;
  if (Cx > 0) {
    dc_full = be.zeros({B, Cx + Le, E}, dt);
    put_steps(be, dc, Cx, dc_full);
  }
  Tensor dconv_in = be.empty(a.conv_in.shape(), dt);
  Tensor dconv = g.conv1d.defined() ? g.conv1d.reshape({E, K}) : Tensor();  // frozen: not formed
  be.conv1d_backward(dc_full, a.conv_in, w.conv1d.reshape({E, K}), dconv_in, dconv, g.conv1d_bias);
  Tensor dx = dconv_in;
  if (Cx > 0 || Ta > 0) {
    if (Cx > 0 && scan_hook) {
      Tensor dcontext = be.zeros({1, Cx, E}, dt);
      sum_steps(be, dconv_in, 0, dcontext);
      scan_hook->initial_conv_state_backward(layer, dcontext);
    }
    if (Ta > 0 && hooks.input) {
      Tensor daffix = be.zeros({Ta, E}, dt);
      sum_steps(be, dconv_in, Cx, daffix);
      hooks.input->affix_backward(layer, daffix);
    }
    dx = be.empty({B, L, E}, dt);
    take_steps(be, dconv_in, Cx + Ta, dx);
  }

  // [x ; z] = in_proj(n): dn = dx W_x + dz W_z
  Tensor dn2 = flat(dn), n2 = flat(n);
  Tensor dWx = row_slice(g.in_proj, 0, E), dWz = row_slice(g.in_proj, E, 2 * E);
  Tensor dbx = row_slice(g.in_proj_bias, 0, E), dbz = row_slice(g.in_proj_bias, E, 2 * E);
  linear_backward(be, flat(dx), n2, w.in_proj.rows(0, E), dn2, 0.0, dWx, dbx);
  linear_backward(be, flat(dz), n2, w.in_proj.rows(E, 2 * E), dn2, 1.0, dWz, dbz);
  if (hook)
    hook->linear_backward(hooks.sites[kInProj], n2, {{0, flat(dx)}, {E, flat(dz)}}, dn2);
}

}  // namespace ssmtune
