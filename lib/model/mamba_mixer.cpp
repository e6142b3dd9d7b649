#include "model/mamba_mixer.h"

#include "model/linear.h"

namespace ssmtune {

namespace {

// The causal conv of a block that follows earlier tokens (recurrent decoding, B = 1):
// x_ext = [context ; x] (K-1+L, E), c = the last L outputs of conv(x_ext); context becomes the
// last K-1 rows of x_ext.   w: (E, K)  x, c: (1, L, E)  context: (1, K-1, E)
void conv_with_context(Backend& be, const Tensor& w, const Tensor& bias, const Tensor& x,
                       Tensor& context, Tensor& c) {
  check(x.dim(0) == 1, "recurrent decoding runs one sequence at a time");
  const std::int64_t L = x.dim(1), E = x.dim(2), ctx = context.dim(1);
  const DType dt = x.dtype();
  Tensor x_ext = be.empty({1, ctx + L, E}, dt);
  const Tensor rows = x_ext.reshape({ctx + L, E});
  if (ctx > 0) {
    Tensor head = rows.rows(0, ctx);
    be.copy(context.reshape({ctx, E}), head);
  }
  Tensor tail = rows.rows(ctx, ctx + L);
  be.copy(x.reshape({L, E}), tail);
  Tensor c_ext = be.empty({1, ctx + L, E}, dt);
  be.conv1d_forward(x_ext, w, bias, c_ext);
  Tensor c_rows = c.reshape({L, E});
  be.copy(c_ext.reshape({ctx + L, E}).rows(ctx, ctx + L), c_rows);
  if (ctx > 0) {  // A.5 decode step 1: the window moves on by L inputs
    Tensor state = context.reshape({ctx, E});
    be.copy(rows.rows(L, L + ctx), state);
  }
}

}  // namespace

void mixer_forward(Backend& be, const MambaConfig& cfg, const MambaLayerWeights& w, const Tensor& n,
                   std::int64_t scan_chunk, MixerActivations& a, Tensor& out, LinearHook* hook,
                   std::int64_t layer, ScanHook* scan_hook, MixerCache* cache) {
  const std::int64_t B = n.dim(0), L = n.dim(1), D = cfg.d_model, E = cfg.d_inner;
  const std::int64_t N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv, rows = B * L;
  const DType dt = n.dtype();
  const Tensor n2 = n.reshape({rows, D});

  // in_proj as two products over the weight's row halves: x and z come out contiguous.
  a.x = be.empty({B, L, E}, dt);
  a.z = be.empty({B, L, E}, dt);
  Tensor x2 = a.x.reshape({rows, E}), z2 = a.z.reshape({rows, E});
  linear_forward(be, n2, w.in_proj.rows(0, E), row_slice(w.in_proj_bias, 0, E), x2);
  linear_forward(be, n2, w.in_proj.rows(E, 2 * E), row_slice(w.in_proj_bias, E, 2 * E), z2);
  if (hook) {
    std::vector<LinearPart> parts{{0, x2}, {E, z2}};
    hook->linear_forward(layer, LinearSite::InProj, n2, parts);
  }

  a.c = be.empty({B, L, E}, dt);
  if (cache) {
    conv_with_context(be, w.conv1d.reshape({E, K}), w.conv1d_bias, a.x, cache->conv, a.c);
  } else {
    be.conv1d_forward(a.x, w.conv1d.reshape({E, K}), w.conv1d_bias, a.c);
  }
  a.u = be.empty({B, L, E}, dt);
  be.silu_forward(a.c, a.u);
  const Tensor u2 = a.u.reshape({rows, E});

  Tensor x_dbl = be.empty({rows, R + 2 * N}, dt);
  linear_forward(be, u2, w.x_proj, Tensor(), x_dbl);
  a.dt_in = be.empty({rows, R}, dt);
  a.Bm = be.empty({B, L, N}, dt);
  a.Cm = be.empty({B, L, N}, dt);
  Tensor B2 = a.Bm.reshape({rows, N}), C2 = a.Cm.reshape({rows, N});
  be.split_columns(x_dbl, 0, a.dt_in);
  be.split_columns(x_dbl, R, B2);
  be.split_columns(x_dbl, R + N, C2);
  if (hook) {  // after the split, so a slice hook (x_proj.B) adds to its own part
    std::vector<LinearPart> parts{{0, a.dt_in}, {R, B2}, {R + N, C2}};
    hook->linear_forward(layer, LinearSite::XProj, u2, parts);
  }

  a.delta_raw = be.empty({B, L, E}, dt);
  Tensor draw2 = a.delta_raw.reshape({rows, E});
  linear_forward(be, a.dt_in, w.dt_proj, w.dt_proj_bias, draw2);
  if (hook) {
    std::vector<LinearPart> parts{{0, draw2}};
    hook->linear_forward(layer, LinearSite::DtProj, a.dt_in, parts);
  }
  a.delta = be.empty({B, L, E}, dt);
  be.softplus_forward(a.delta_raw, a.delta);

  a.A = be.empty({E, N}, dt);
  be.ssm_A_forward(w.A_log, a.A);
  a.h0 = cache ? cache->ssm : scan_hook ? scan_hook->initial_state(layer, B) : Tensor();
  Backend::ScanInputs in{a.u, a.delta, a.A, a.Bm, a.Cm, w.D, a.h0, scan_chunk};
  a.y = be.empty({B, L, E}, dt);
  a.scan_chunk = scan_chunk;
  a.h_saved = be.empty({B, (L + scan_chunk - 1) / scan_chunk, E, N}, dt);
  Tensor h_last = cache ? be.empty({B, E, N}, dt) : Tensor();
  be.selective_scan_forward(in, a.y, a.h_saved, h_last);
  if (cache) cache->ssm = h_last;
  if (scan_hook)  // the state read-out terms, before the gate
    scan_hook->output_forward(layer, {a.u, a.delta, a.Cm}, a.y,
                              cache && cache->hook.defined() ? &cache->hook : nullptr);

  a.gated = be.empty({B, L, E}, dt);
  be.gate_forward(a.y, a.z, a.gated);
  Tensor out2 = out.reshape({rows, D});
  linear_forward(be, a.gated.reshape({rows, E}), w.out_proj, w.out_proj_bias, out2);
  if (hook) {
    std::vector<LinearPart> parts{{0, out2}};
    hook->linear_forward(layer, LinearSite::OutProj, a.gated.reshape({rows, E}), parts);
  }
}

void mixer_backward(Backend& be, const MambaConfig& cfg, const MambaLayerWeights& w,
                    const Tensor& n, const MixerActivations& a, const Tensor& dout, Tensor& dn,
                    MambaLayerWeights& g, LinearHook* hook, std::int64_t layer,
                    ScanHook* scan_hook) {
  const std::int64_t B = n.dim(0), L = n.dim(1), E = cfg.d_inner;
  const std::int64_t N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv, rows = B * L;
  const DType dt = n.dtype();
  const auto flat = [&](const Tensor& t) { return t.reshape({rows, t.numel() / rows}); };

  // out = out_proj(gated)
  Tensor dgated = be.empty({rows, E}, dt);
  linear_backward(be, flat(dout), flat(a.gated), w.out_proj, dgated, 0.0, g.out_proj,
                  g.out_proj_bias);
  if (hook)
    hook->linear_backward(layer, LinearSite::OutProj, flat(a.gated), {{0, flat(dout)}}, dgated);
  // gated = y * silu(z)
  Tensor dy = be.empty({B, L, E}, dt), dz = be.empty({B, L, E}, dt);
  be.gate_backward(dgated.reshape({B, L, E}), a.y, a.z, dy, dz);

  // the scan
  Backend::ScanInputs in{a.u, a.delta, a.A, a.Bm, a.Cm, w.D, a.h0, a.scan_chunk};
  Backend::ScanGrads sg;
  sg.du = be.empty({B, L, E}, dt);
  sg.ddelta = be.empty({B, L, E}, dt);
  sg.dA = be.zeros({E, N}, dt);
  sg.dBm = be.empty({B, L, N}, dt);
  sg.dCm = be.empty({B, L, N}, dt);
  sg.dD = g.D;
  if (a.h0.defined()) sg.dh0 = be.empty({B, E, N}, dt);
  be.selective_scan_backward(in, a.h_saved, dy, sg);
  if (scan_hook) {
    ScanIOGrads io_grads{sg.du, sg.ddelta, sg.dCm};
    scan_hook->output_backward(layer, {a.u, a.delta, a.Cm}, dy, io_grads);
    if (a.h0.defined()) scan_hook->initial_state_backward(layer, sg.dh0);
  }
  if (g.A_log.defined()) be.ssm_A_backward(sg.dA, a.A, g.A_log);

  // delta = softplus(dt_proj(dt_in))
  Tensor ddelta_raw = be.empty({B, L, E}, dt);
  be.softplus_backward(sg.ddelta, a.delta_raw, ddelta_raw);
  Tensor ddt_in = be.empty({rows, R}, dt);
  linear_backward(be, flat(ddelta_raw), a.dt_in, w.dt_proj, ddt_in, 0.0, g.dt_proj, g.dt_proj_bias);
  if (hook)
    hook->linear_backward(layer, LinearSite::DtProj, a.dt_in, {{0, flat(ddelta_raw)}}, ddt_in);

  // [dt_in ; Bm ; Cm] = x_proj(u): the gradient of u adds to the scan's du
  Tensor dx_dbl = be.empty({rows, R + 2 * N}, dt);
  be.merge_columns(ddt_in, 0, dx_dbl);
  be.merge_columns(flat(sg.dBm), R, dx_dbl);
  be.merge_columns(flat(sg.dCm), R + N, dx_dbl);
  Tensor du2 = flat(sg.du);
  Tensor no_bias;
  linear_backward(be, dx_dbl, flat(a.u), w.x_proj, du2, 1.0, g.x_proj, no_bias);
  if (hook)
    hook->linear_backward(layer, LinearSite::XProj, flat(a.u),
                          {{0, ddt_in}, {R, flat(sg.dBm)}, {R + N, flat(sg.dCm)}}, du2);

  // u = silu(c), c = conv1d(x)
  Tensor dc = be.empty({B, L, E}, dt);
  be.silu_backward(sg.du, a.c, dc);
  Tensor dx = be.empty({B, L, E}, dt);
  Tensor dconv = g.conv1d.defined() ? g.conv1d.reshape({E, K}) : be.zeros({E, K}, dt);
  be.conv1d_backward(dc, a.x, w.conv1d.reshape({E, K}), dx, dconv, g.conv1d_bias);

  // [x ; z] = in_proj(n): dn = dx W_x + dz W_z
  Tensor dn2 = flat(dn), n2 = flat(n);
  Tensor dWx = row_slice(g.in_proj, 0, E), dWz = row_slice(g.in_proj, E, 2 * E);
  Tensor dbx = row_slice(g.in_proj_bias, 0, E), dbz = row_slice(g.in_proj_bias, E, 2 * E);
  linear_backward(be, flat(dx), n2, w.in_proj.rows(0, E), dn2, 0.0, dWx, dbx);
  linear_backward(be, flat(dz), n2, w.in_proj.rows(E, 2 * E), dn2, 1.0, dWz, dbz);
  if (hook)
    hook->linear_backward(layer, LinearSite::InProj, n2, {{0, flat(dx)}, {E, flat(dz)}}, dn2);
}

}  // namespace ssmtune
