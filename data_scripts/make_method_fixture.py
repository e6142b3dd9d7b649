#!/usr/bin/env python3
"""Generate tests/fixtures/methods/: an independent float64 PyTorch reference (autograd gradients)
for ssmtune's PEFT methods, written from docs/methods.md, not from ssmtune's C++.

The Mamba forward here is this script's own (`forward` / `mixer`, no transformers module code):
embedding -> per layer h += mixer(RMSNorm(h)) -> norm_f -> lm_head, the mixer as docs/methods.md
section 0 / transformers' MambaMixer.slow_forward with a sequential scan, all in float64 on the
committed float32 weights (converted). The method terms enter it as arguments; the base model is
frozen, so only the method parameters get gradients. Variants (B x L and weights of the base
model's reference.safetensors; E = d_inner, N = d_state, M = d_model, K = d_conv, I = layer;
"section" = a section of docs/methods.md):

  partial_delta     mamba-tiny  section 2, delta mode: W_eff = W + delta for A_log, D, conv1d.bias,
                                dt_proj.bias of every layer and norm_f.weight
  bitfit_odd        mamba-odd   section 2 BitFit, delta mode: conv1d.bias (the model has none: the
                                effective bias is the delta itself) and dt_proj.bias
  sdt               mamba-tiny  section 3 step 4: A = -exp(A_log + scatter(M_A, a_A)),
                                W_B' = W_B + scatter(M_B, a_B), W_C' likewise (W_B = x_proj rows
                                [R, R+N) seen as (N, E), W_C rows [R+N, R+2N)); a seeded selection
                                of k_D = 3 channels per layer, k_N = 2 states of A per kept channel,
                                all N states of B and C of each kept channel
  sdt_select        (no model)  section 3 step 2, the selection rule on a seeded warmup delta G
                                (stored in A_log's (E, N) layout) with exact ties at both cut-offs
  additional_scan   mamba-tiny  section 6, n = 4 extra states sharing dt_t:
                                y_t[d] += sum_j C_add_t[j] h_add_t[d, j], A_add = -exp(A_log_add),
                                [B_add ; C_add] = x_t W_add^T
  parallel_adapter  mamba-tiny  section 7 without dropout or biases, r = 6, s = 0.1:
                                o = W_out g + s W_up ReLU(W_down g), g = y * SiLU(z)
  dora              mamba-tiny  section 1 DoRA on in_proj and out_proj, r = 4, alpha = 8 (s = 2):
                                computed by peft 0.12.0 itself (LoraConfig(use_dora=True)) in float64
                                and cross-checked against this script's W' = m (W + sBA) / ||W + sBA||_row
                                (norm detached); peft's adapter directory is saved too
  prompt            mamba-tiny  section 5, T = 3 vectors prepended to the embedded input; their
                                positions dropped before norm_f / lm_head
  prefix            mamba-tiny  section 5, T = 2 vectors per layer prepended to the residual stream
                                entering block I; the block (norm, mixer, residual add) runs on T+L
                                positions and its first T outputs are dropped
  affix             mamba-tiny  section 5 (P3), T = 3 tokens (T, E) per layer inserted before the x~
                                half of in_proj's output; the conv (K-1 zero padding before the affix),
                                SiLU, x_proj, dt and the scan run on T+L positions; the T positions are
                                dropped before the gate (their z never matters) and out_proj
  initial_state_conv mamba-tiny section 4, initial-state tuning with the learned conv state: h_0 = H0
                                (E, N) and the conv's left padding = conv (E, K-1), column j = the
                                input x~ at time j-(K-1), oldest first, for every sequence of the batch

Parameter values are seeded and non-zero (mostly 0.1 * N(0, 1) float64, a torch.Generator per
variant; tensors whose init is not zero get that init plus a perturbation; fixture.json says which)
so that every term and gradient path is exercised. Self-checks (all asserted):
  * the plain forward reproduces mamba-tiny's and mamba-odd's reference_f64.safetensors (an
    independent float64 implementation in make_fixtures.py) to 1e-12: logits, loss, and the base
    gradients of the tensors the partial / BitFit variants train;
  * every zero-initialised method at its zero init (partial, BitFit, SDT, additional scan with zero
    C rows and random B rows, parallel adapter with zero up and random down, DoRA with B = 0 and
    m = ||W||_row, initial state + conv state of zeros) gives the plain logits and loss bit for bit;
  * independent equivalences pin the conventions: prompt tuning with embedding rows equals the plain
    model on [tokens; ids]; prefix tuning with the residual streams of that run equals it too; affix
    with the x~ of real positions equals the mixer on the longer sequence; initial state + conv state
    captured after a first chunk continue the sequence exactly; an additional scan that duplicates
    the first n states equals the plain model with those C rows doubled; SDT scatter via flat
    indices equals a loop over (channel, state) pairs;
  * peft's DoRA equals this script's formula (logits, loss, every gradient) to 1e-10, and peft's zero-
    init DoRA equals peft with the adapter disabled bit for bit; the saved adapter reloads exactly;
  * every method-parameter gradient has no zero element; the ReLU of the parallel adapter sees both
    signs in every hidden unit.

Files (tests/fixtures/methods/):
  reference.safetensors   float64 except int64 ids/labels/indices; keys:
      input_ids, labels                     mamba-tiny's (copied from its reference.safetensors)
      bitfit_odd.input_ids, bitfit_odd.labels   mamba-odd's
      <variant>.<param name>                the parameter value (for partial / BitFit: the delta)
      <variant>.grad.<param name>           d loss / d parameter
      <variant>.<index name>                int64 inputs (SDT indices; no gradient)
      <variant>.logits (B, L, V), <variant>.loss (1): mean cross-entropy of logits[:, :-1] vs
                                            labels[:, 1:] over labels != -100
      sdt_select.layers.I.G (E, N) f64 input; sdt_select.layers.I.{A_log,x_proj.B,x_proj.C}.index
  fixture.json            per variant: base model, settings, parameter / input names and shapes, seeds,
                          inits, loss; the exact peft key names of the DoRA adapter
  dora_adapter/           peft's save_pretrained of the dora variant (float32 file; the values are
                          float32-representable, so the float64 reference uses exactly them)
Metadata of reference.safetensors records the versions.

Usage (environment: data_scripts/README.md, with peft + accelerate installed as described there):
    /tmp/fxenv/bin/python data_scripts/make_method_fixture.py
Deterministic: two runs give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import MambaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, HERE)
from make_fixtures import save_deterministic  # noqa: E402
from make_peft_fixture import float64_clean, forward_loss, normalise_adapter_config, versions  # noqa: E402

GENERATOR = "data_scripts/make_method_fixture.py"
OUT_NAME = "methods"
TINY, ODD = "mamba-tiny", "mamba-odd"
INIT_STD = 0.1
F64 = torch.float64


# ---------------------------------------------------------------------------
# The float64 Mamba forward with method terms
# ---------------------------------------------------------------------------
class Cfg:
    def __init__(self, c):
        self.n_layer, self.d_model, self.d_inner = c.num_hidden_layers, c.hidden_size, c.intermediate_size
        self.d_state, self.d_conv, self.dt_rank = c.state_size, c.conv_kernel, c.time_step_rank
        self.vocab, self.eps = c.vocab_size, c.layer_norm_epsilon


def rms(x, w, eps):
    # MambaRMSNorm: x / sqrt(mean(x^2) + eps) * w, per position
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(x, W, name):
    y = x @ W[name + ".weight"].T
    b = W.get(name + ".bias")
    return y if b is None else y + b


def per_batch(t, batch, dims):
    """A method tensor shared by the batch (`dims` dimensions) or already per sequence (dims + 1)."""
    return t.expand(batch, *t.shape) if t.dim() == dims else t


def mixer(W, pre, cfg, u, lt, capture=None, layer=0):
    """MambaMixer.slow_forward (docs/methods.md section 0) on u: (B, L, M) f64 -> (B, L, M).
    lt: this layer's method terms: affix (T, E); conv (E, K-1) and h0 (E, N), either may carry a
    leading batch dimension; add_A_log (E, n) and add_x_proj (2n, E); pa_down (r, E), pa_up (M, r),
    pa_scale."""
    E, N, R, K = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    Bt = u.shape[0]
    xz = linear(u, W, pre + "in_proj")
    x, z = xz[..., :E], xz[..., E:]
    n_affix = 0
    if "affix" in lt:  # [affix; x~]; z of the affix positions only gates dropped outputs
        n_affix = lt["affix"].shape[-2]
        x = torch.cat([per_batch(lt["affix"], Bt, 2), x], 1)
    L = x.shape[1]
    if "conv" in lt:  # learned conv state: column j = input at time j-(K-1), oldest first
        pad = per_batch(lt["conv"], Bt, 2).transpose(1, 2)
    else:
        pad = x.new_zeros(Bt, K - 1, E)
    xp = torch.cat([pad, x], 1)  # (B, K-1+L, E)
    w = W[pre + "conv1d.weight"][:, 0, :]  # (E, K); out_t = sum_k w[:, k] xp[t + k]
    c = sum(xp[:, k : k + L, :] * w[:, k] for k in range(K))
    if pre + "conv1d.bias" in W:
        c = c + W[pre + "conv1d.bias"]
    xs = F.silu(c)  # (B, L, E)
    dbc = xs @ W[pre + "x_proj.weight"].T
    dl, Bm, Cm = dbc[..., :R], dbc[..., R : R + N], dbc[..., R + N :]
    dt = F.softplus(linear(dl, W, pre + "dt_proj"))  # (B, L, E)
    A = -torch.exp(W[pre + "A_log"])  # (E, N)
    h = per_batch(lt["h0"], Bt, 2) if "h0" in lt else xs.new_zeros(Bt, E, N)
    extra = "add_x_proj" in lt
    if extra:  # additional scan: n more states, same dt; kept apart so that C_add = 0 is exact
        n_add = lt["add_A_log"].shape[1]
        A_add = -torch.exp(lt["add_A_log"])  # (E, n)
        B_add = xs @ lt["add_x_proj"][:n_add].T  # (B, L, n)
        C_add = xs @ lt["add_x_proj"][n_add:].T
        h_add = xs.new_zeros(Bt, E, n_add)
    ys = []
    for t in range(L):
        dtt = dt[:, t, :, None]
        h = torch.exp(dtt * A) * h + dtt * Bm[:, t, None, :] * xs[:, t, :, None]
        y = (h * Cm[:, t, None, :]).sum(-1)
        if extra:
            h_add = torch.exp(dtt * A_add) * h_add + dtt * B_add[:, t, None, :] * xs[:, t, :, None]
            y = y + (h_add * C_add[:, t, None, :]).sum(-1)
        ys.append(y)
    y = torch.stack(ys, 1) + xs * W[pre + "D"]  # (B, L, E)
    if capture is not None:  # what a continuation needs: final state, last K-1 conv inputs
        capture[f"h.{layer}"] = h
        capture[f"conv.{layer}"] = xp[:, -(K - 1) :, :].transpose(1, 2)
    y = y[:, n_affix:]
    g = y * F.silu(z)
    o = linear(g, W, pre + "out_proj")
    if "pa_up" in lt:
        act = g @ lt["pa_down"].T
        if capture is not None:
            capture[f"pa_act.{layer}"] = act
        o = o + lt["pa_scale"] * (F.relu(act) @ lt["pa_up"].T)
    return o


def forward(W, cfg, ids, terms=None, capture=None):
    """logits (B, L, V) f64. W: effective weights (HF names). terms: prompt (T, M); layers: {I: lt}
    with lt as in `mixer` plus prefix (T, M) (or (B, T, M))."""
    terms = terms or {}
    layers = terms.get("layers", {})
    emb = W["backbone.embeddings.weight"]
    Bt = ids.shape[0]
    h = emb[ids]
    n_prompt = 0
    if "prompt" in terms:
        n_prompt = terms["prompt"].shape[0]
        h = torch.cat([terms["prompt"].expand(Bt, -1, -1), h], 1)
    for i in range(cfg.n_layer):
        pre = f"backbone.layers.{i}."
        lt = layers.get(i, {})
        n_prefix = 0
        if "prefix" in lt:
            n_prefix = lt["prefix"].shape[-2]
            h = torch.cat([per_batch(lt["prefix"], Bt, 2), h], 1)
        if capture is not None:
            capture[f"resid.{i}"] = h
        h = h + mixer(W, pre + "mixer.", cfg, rms(h, W[pre + "norm.weight"], cfg.eps), lt, capture, i)
        h = h[:, n_prefix:]
    h = h[:, n_prompt:]
    hf = rms(h, W["backbone.norm_f.weight"], cfg.eps)
    return hf @ W.get("lm_head.weight", emb).T


def ce_loss(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


# ---------------------------------------------------------------------------
# Base models
# ---------------------------------------------------------------------------
class Base:
    def __init__(self, name):
        self.name = name
        model = MambaForCausalLM.from_pretrained(os.path.join(FIXTURES, name))
        self.cfg = Cfg(model.config)
        self.P = {k: v.detach().to(F64).clone() for k, v in model.named_parameters()}
        ref = load_file(os.path.join(FIXTURES, name, "reference.safetensors"))
        self.ids, self.labels = ref["input_ids"], ref["labels"]
        self.f64 = load_file(os.path.join(FIXTURES, name, "reference_f64.safetensors"))
        with torch.no_grad():
            self.logits = forward(self.P, self.cfg, self.ids)
            self.loss = ce_loss(self.logits, self.labels)

    def run(self, W=None, terms=None, ids=None):
        logits = forward(self.P if W is None else W, self.cfg, self.ids if ids is None else ids, terms)
        return logits, ce_loss(logits, self.labels)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check_plain(base: Base):
    """The plain forward vs make_fixtures.py's float64 reference: logits, loss, base gradients."""
    P = {k: v.clone().requires_grad_() for k, v in base.P.items()}
    logits, loss = base.run(P)
    loss.backward()
    e_logits = rel(logits.detach(), base.f64["logits"])
    e_loss = rel(loss.detach().reshape(1), base.f64["loss"])
    e_grad = max(rel(P[k].grad, base.f64["grad." + k]) for k in P)
    print(f"{base.name}: plain forward vs reference_f64: logits {e_logits:.1e}, loss {e_loss:.1e}, "
          f"worst base grad {e_grad:.1e} (rel)")
    assert e_logits < 1e-12 and e_loss < 1e-12 and e_grad < 1e-12, (e_logits, e_loss, e_grad)
    assert torch.equal(logits.detach(), base.logits)


def assert_plain_exact(base: Base, logits, loss, what):
    assert torch.equal(logits, base.logits) and torch.equal(loss, base.loss), f"{what}: zero init changes the model"


def randn(g, shape, std=INIT_STD):
    return std * torch.randn(shape, generator=g, dtype=F64)


# ---------------------------------------------------------------------------
# Variants. Each returns (params {name: leaf tensor}, inputs {name: tensor}, closure params -> (logits,
# loss), settings dict, init notes {name: str}).
# ---------------------------------------------------------------------------
def partial_names(cfg, tensors, with_norm_f):
    out = {}
    for i in range(cfg.n_layer):
        for t in tensors:
            shape = (cfg.d_inner, cfg.d_state) if t == "A_log" else (cfg.d_inner,)
            out[f"partial.backbone.layers.{i}.mixer.{t}"] = shape
    if with_norm_f:
        out["partial.backbone.norm_f.weight"] = (cfg.d_model,)
    return out


def with_deltas(P, deltas):
    """delta mode: W_eff = W + delta; a tensor the model lacks (BitFit's conv bias) is the delta."""
    W = dict(P)
    for name, d in deltas.items():
        base_name = name[len("partial.") :]
        W[base_name] = P[base_name] + d if base_name in P else d
    return W


def make_partial(base, seed, tensors, with_norm_f):
    shapes = partial_names(base.cfg, tensors, with_norm_f)
    run = lambda p: base.run(with_deltas(base.P, p))  # noqa: E731
    zeros = {n: torch.zeros(s, dtype=F64) for n, s in shapes.items()}
    with torch.no_grad():
        assert_plain_exact(base, *run(zeros), "partial")
    # at delta = 0 the delta's gradient is the base tensor's gradient (where the model has one)
    zeros = {n: z.requires_grad_() for n, z in zeros.items()}
    run(zeros)[1].backward()
    for n, z in zeros.items():
        ref = base.f64.get("grad." + n[len("partial.") :])
        if ref is not None:
            assert rel(z.grad, ref) < 1e-12, n
    g = torch.Generator().manual_seed(seed)
    params = {n: randn(g, s) for n, s in shapes.items()}
    notes = {n: f"{INIT_STD} * N(0, 1) (delta; zero at init)" for n in shapes}
    return params, {}, run, notes


def sdt_dense(idx, values, numel):
    return torch.zeros(numel, dtype=F64).scatter(0, idx, values)


def sdt_weights(P, cfg, p, inp):
    """docs/methods.md section 3 step 4: A_log + scatter(M_A, a_A); x_proj's B / C slices (N, E)
    + scatter."""
    E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
    W = dict(P)
    for i in range(cfg.n_layer):
        pre, s = f"backbone.layers.{i}.mixer.", f"sdt.layers.{i}."
        dA = sdt_dense(inp[s + "A_log.index"], p[s + "A_log"], E * N).view(E, N)
        dB = sdt_dense(inp[s + "x_proj.B.index"], p[s + "x_proj.B"], N * E).view(N, E)
        dC = sdt_dense(inp[s + "x_proj.C.index"], p[s + "x_proj.C"], N * E).view(N, E)
        W[pre + "A_log"] = P[pre + "A_log"] + dA
        W[pre + "x_proj.weight"] = P[pre + "x_proj.weight"] + torch.cat([dA.new_zeros(R, E), dB, dC], 0)
    return W


def index_tensors(channels, states, E, N):
    a = sorted(d * N + n for d in channels for n in states[d])  # into A_log (E, N)
    bc = sorted(n * E + d for d in channels for n in range(N))  # into the (N, E) B / C slice
    return torch.tensor(a, dtype=torch.int64), torch.tensor(bc, dtype=torch.int64)


def make_sdt(base, seed, k_channels, k_states):
    cfg = base.cfg
    E, N = cfg.d_inner, cfg.d_state
    g = torch.Generator().manual_seed(seed)
    inp, sel = {}, {}
    for i in range(cfg.n_layer):  # the selection: seeded, drawn before the values
        channels = sorted(torch.randperm(E, generator=g)[:k_channels].tolist())
        states = {d: sorted(torch.randperm(N, generator=g)[:k_states].tolist()) for d in channels}
        ia, ibc = index_tensors(channels, states, E, N)
        s = f"sdt.layers.{i}."
        inp[s + "A_log.index"], inp[s + "x_proj.B.index"], inp[s + "x_proj.C.index"] = ia, ibc, ibc.clone()
        sel[i] = (channels, states)
    shapes = {}
    for i in range(cfg.n_layer):
        s = f"sdt.layers.{i}."
        shapes[s + "A_log"] = (k_channels * k_states,)
        shapes[s + "x_proj.B"] = (k_channels * N,)
        shapes[s + "x_proj.C"] = (k_channels * N,)
    run = lambda p: base.run(sdt_weights(base.P, cfg, p, inp))  # noqa: E731
    with torch.no_grad():
        assert_plain_exact(base, *run({n: torch.zeros(s, dtype=F64) for n, s in shapes.items()}), "sdt")
    params = {n: randn(g, s) for n, s in shapes.items()}
    # the scatter conventions, once more as loops over (channel, state)
    for i, (channels, states) in sel.items():
        s, pre = f"sdt.layers.{i}.", f"backbone.layers.{i}.mixer."
        W = sdt_weights(base.P, cfg, params, inp)
        dA, dB, dC = torch.zeros(E, N, dtype=F64), torch.zeros(N, E, dtype=F64), torch.zeros(N, E, dtype=F64)
        pairs_a = sorted((d, n) for d in channels for n in states[d])
        for j, (d, n) in enumerate(pairs_a):
            dA[d, n] = params[s + "A_log"][j]
        pairs_bc = sorted(((n, d) for d in channels for n in range(N)))  # row-major in (N, E)
        for j, (n, d) in enumerate(pairs_bc):
            dB[n, d] = params[s + "x_proj.B"][j]
            dC[n, d] = params[s + "x_proj.C"][j]
        R = cfg.dt_rank
        assert torch.equal(W[pre + "A_log"], base.P[pre + "A_log"] + dA)
        assert torch.equal(W[pre + "x_proj.weight"][R : R + N], base.P[pre + "x_proj.weight"][R : R + N] + dB)
        assert torch.equal(W[pre + "x_proj.weight"][R + N :], base.P[pre + "x_proj.weight"][R + N :] + dC)
        assert torch.equal(W[pre + "x_proj.weight"][:R], base.P[pre + "x_proj.weight"][:R])
    notes = {n: f"{INIT_STD} * N(0, 1) (zero at init)" for n in shapes}
    settings = {
        "k_channels": k_channels,
        "k_states": k_states,
        "selection": "per layer, seeded (torch.Generator(seed)): channels = sorted(randperm(E)[:k_channels]); "
        "then for each kept channel in ascending order sorted(randperm(N)[:k_states]); values drawn after all layers' "
        "selections",
        "selected": {str(i): {"channels": c, "A_states": {str(d): st[d] for d in c}} for i, (c, st) in sel.items()},
    }
    return params, inp, run, notes, settings


def make_additional_scan(base, seed, n_add):
    cfg = base.cfg
    E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank

    def terms(p):
        return {"layers": {i: {"add_A_log": p[f"additional_scan.layers.{i}.A_log"],
                               "add_x_proj": p[f"additional_scan.layers.{i}.x_proj"]} for i in range(cfg.n_layer)}}

    run = lambda p: base.run(terms=terms(p))  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    params = {}
    for i in range(cfg.n_layer):
        s = f"additional_scan.layers.{i}."
        params[s + "A_log"] = torch.log(torch.arange(1, n_add + 1, dtype=F64)).expand(E, n_add) + randn(g, (E, n_add))
        params[s + "x_proj"] = randn(g, (2 * n_add, E))
    # zero-output init: C rows zero, B rows (and A_log_add) anything -> the plain model exactly
    zero_c = {k: v.clone() for k, v in params.items()}
    for i in range(cfg.n_layer):
        zero_c[f"additional_scan.layers.{i}.x_proj"][n_add:] = 0
    with torch.no_grad():
        assert_plain_exact(base, *run(zero_c), "additional_scan")
        # duplicating the first n states (same A_log, B and C rows) = the plain model with those C rows doubled
        dup = {}
        W2 = dict(base.P)
        for i in range(cfg.n_layer):
            pre, s = f"backbone.layers.{i}.mixer.", f"additional_scan.layers.{i}."
            xw = base.P[pre + "x_proj.weight"]
            dup[s + "A_log"] = base.P[pre + "A_log"][:, :n_add]
            dup[s + "x_proj"] = torch.cat([xw[R : R + n_add], xw[R + N : R + N + n_add]], 0)
            x2 = xw.clone()
            x2[R + N : R + N + n_add] *= 2
            W2[pre + "x_proj.weight"] = x2
        e = rel(run(dup)[0], base.run(W2)[0])
        assert e < 1e-12, e
    notes = {}
    for i in range(cfg.n_layer):
        s = f"additional_scan.layers.{i}."
        notes[s + "A_log"] = f"log(1..{n_add}) per row + {INIT_STD} * N(0, 1)"
        notes[s + "x_proj"] = f"{INIT_STD} * N(0, 1), both halves (the C rows are zero at a real init)"
    return params, {}, run, notes


def make_parallel_adapter(base, seed, r, scale, std):
    cfg = base.cfg

    def terms(p):
        return {"layers": {i: {"pa_down": p[f"parallel_adapter.layers.{i}.down"],
                               "pa_up": p[f"parallel_adapter.layers.{i}.up"], "pa_scale": scale}
                           for i in range(cfg.n_layer)}}

    run = lambda p: base.run(terms=terms(p))  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    params = {}
    for i in range(cfg.n_layer):
        params[f"parallel_adapter.layers.{i}.down"] = randn(g, (r, cfg.d_inner), std)
        params[f"parallel_adapter.layers.{i}.up"] = randn(g, (cfg.d_model, r), std)
    with torch.no_grad():
        zero_up = {k: (torch.zeros_like(v) if k.endswith(".up") else v) for k, v in params.items()}
        assert_plain_exact(base, *run(zero_up), "parallel_adapter")
        cap = {}
        forward(base.P, cfg, base.ids, terms(params), cap)
        for i in range(cfg.n_layer):  # every hidden unit sees both signs at the ReLU
            act = cap[f"pa_act.{i}"].reshape(-1, r)
            pos = (act > 0).sum(0)
            assert bool(((pos > 0) & (pos < act.shape[0])).all()), (i, pos)
    notes = {n: f"{std} * N(0, 1) (up is zero at a real init)" for n in params}
    return params, {}, run, notes


def make_prompt(base, seed, n_tokens, std):
    cfg = base.cfg
    run = lambda p: base.run(terms={"prompt": p["prompt.embeddings"]})  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab, (n_tokens,), generator=g)
    emb = base.P["backbone.embeddings.weight"][tokens]
    with torch.no_grad():  # prompt = embedding rows of tokens  ==  plain model on [tokens; ids]
        full_ids = torch.cat([tokens.expand(base.ids.shape[0], -1), base.ids], 1)
        cap = {}
        full = forward(base.P, cfg, full_ids, None, cap)
        e = rel(run({"prompt.embeddings": emb})[0], full[:, n_tokens:])
        assert e < 1e-13, e
    params = {"prompt.embeddings": emb + randn(g, (n_tokens, cfg.d_model), std)}
    notes = {"prompt.embeddings": f"embedding rows of tokens {tokens.tolist()} + {std} * N(0, 1)"}
    return params, {}, run, notes, {"init_tokens": tokens.tolist()}, (tokens, full, cap)


def make_prefix(base, seed, n_tokens, std, prompt_check):
    cfg = base.cfg

    def terms(p):
        return {"layers": {i: {"prefix": p[f"prefix.layers.{i}.tokens"]} for i in range(cfg.n_layer)}}

    run = lambda p: base.run(terms=terms(p))  # noqa: E731
    with torch.no_grad():  # prefixes = the residual streams of the plain run on [tokens; ids] continue it
        tokens, full, cap = prompt_check
        T = tokens.shape[0]
        per_seq = {f"prefix.layers.{i}.tokens": cap[f"resid.{i}"][:, :T] for i in range(cfg.n_layer)}
        e = rel(run(per_seq)[0], full[:, T:])
        assert e < 1e-13, e
    g = torch.Generator().manual_seed(seed)
    params = {f"prefix.layers.{i}.tokens": randn(g, (n_tokens, cfg.d_model), std) for i in range(cfg.n_layer)}
    notes = {n: f"{std} * N(0, 1)" for n in params}
    return params, {}, run, notes


def make_affix(base, seed, n_tokens, std):
    cfg = base.cfg
    E = cfg.d_inner

    def terms(p):
        return {"layers": {i: {"affix": p[f"affix.layers.{i}.x"]} for i in range(cfg.n_layer)}}

    run = lambda p: base.run(terms=terms(p))  # noqa: E731
    with torch.no_grad():  # affix = the x~ of the first T real positions  ==  the mixer on the whole sequence
        W, pre = base.P, "backbone.layers.0."
        u = rms(W["backbone.embeddings.weight"][base.ids], W[pre + "norm.weight"], cfg.eps)
        whole = mixer(W, pre + "mixer.", cfg, u, {})
        x_tilde = linear(u, W, pre + "mixer.in_proj")[..., :E]
        part = mixer(W, pre + "mixer.", cfg, u[:, n_tokens:], {"affix": x_tilde[:, :n_tokens]})
        e = rel(part, whole[:, n_tokens:])
        assert e < 1e-13, e
    g = torch.Generator().manual_seed(seed)
    params = {f"affix.layers.{i}.x": randn(g, (n_tokens, E), std) for i in range(cfg.n_layer)}
    notes = {n: f"{std} * N(0, 1)" for n in params}
    return params, {}, run, notes


def make_initial_state_conv(base, seed, std, split):
    cfg = base.cfg
    E, N, K = cfg.d_inner, cfg.d_state, cfg.d_conv

    def terms(p):
        return {"layers": {i: {"h0": p[f"initial_state.layers.{i}.h0"], "conv": p[f"initial_state.layers.{i}.conv"]}
                           for i in range(cfg.n_layer)}}

    run = lambda p: base.run(terms=terms(p))  # noqa: E731
    shapes = {}
    for i in range(cfg.n_layer):
        shapes[f"initial_state.layers.{i}.h0"] = (E, N)
        shapes[f"initial_state.layers.{i}.conv"] = (E, K - 1)
    with torch.no_grad():
        assert_plain_exact(base, *run({n: torch.zeros(s, dtype=F64) for n, s in shapes.items()}), "initial_state")
        # the state after a first chunk, as h0 + conv state, continues the sequence
        cap = {}
        forward(base.P, cfg, base.ids[:, :split], None, cap)
        cont = {}
        for i in range(cfg.n_layer):
            cont[f"initial_state.layers.{i}.h0"] = cap[f"h.{i}"]
            cont[f"initial_state.layers.{i}.conv"] = cap[f"conv.{i}"]
        logits = forward(base.P, cfg, base.ids[:, split:], terms(cont))
        e = rel(logits, base.logits[:, split:])
        assert e < 1e-13, e
    g = torch.Generator().manual_seed(seed)
    params = {n: randn(g, s, std) for n, s in shapes.items()}
    notes = {n: f"{std} * N(0, 1) (zero at init)" for n in shapes}
    return params, {}, run, notes


# ---------------------------------------------------------------------------
# DoRA through peft 0.12.0
# ---------------------------------------------------------------------------
DORA = dict(r=4, lora_alpha=8, target_modules=["in_proj", "out_proj"])


def dora_config():
    return LoraConfig(r=DORA["r"], lora_alpha=DORA["lora_alpha"], use_dora=True,
                      target_modules=list(DORA["target_modules"]), lora_dropout=0.0, bias="none",
                      task_type="CAUSAL_LM")


def peft_to_ssmtune(param_name):
    """named_parameters() name -> ssmtune name."""
    parts = param_name.split(".")
    i, mod = parts[parts.index("layers") + 1], parts[parts.index("mixer") + 1]
    kind = {"lora_A": "A", "lora_B": "B", "lora_magnitude_vector": "magnitude"}[parts[parts.index("mixer") + 2]]
    return f"lora.layers.{i}.{mod}.{kind}"


def build_dora(dtype, values=None):
    torch.manual_seed(0)  # peft's own Kaiming init of lora_A (overwritten when values are given)
    base = MambaForCausalLM.from_pretrained(os.path.join(FIXTURES, TINY)).to(dtype)
    base.name_or_path = "tests/fixtures/" + TINY
    pm = get_peft_model(base, dora_config())
    named = [(peft_to_ssmtune(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    if values is not None:
        with torch.no_grad():
            for n, p in named:
                p.copy_(values[n])
    for _, p in named:
        assert p.dtype == dtype
    pm.eval()
    return pm, dict(named)


def dora_weights(P, cfg, p, scaling):
    W = dict(P)
    for i in range(cfg.n_layer):
        for mod in DORA["target_modules"]:
            s, name = f"lora.layers.{i}.{mod}.", f"backbone.layers.{i}.mixer.{mod}.weight"
            V = P[name] + scaling * (p[s + "B"] @ p[s + "A"])
            norm = torch.linalg.norm(V, dim=1).detach()  # a constant in backward, as peft
            W[name] = (p[s + "magnitude"] / norm)[:, None] * V
    return W


def make_dora(base, seed, out_dir):
    cfg = base.cfg
    scaling = DORA["lora_alpha"] / DORA["r"]
    pm, named = build_dora(F64)
    assert pm.base_model.model.backbone.layers[0].mixer.in_proj.scaling["default"] == scaling
    run_own = lambda p: base.run(dora_weights(base.P, cfg, p, scaling))  # noqa: E731
    with torch.no_grad():
        # zero init: peft's own (B = 0, m = ||W||_row) is its plain model bit for bit, and so is ours
        init = {n: p.detach().clone() for n, p in named.items()}
        with float64_clean(pm):
            lg, ls = forward_loss(pm, base.ids, base.labels)
            with pm.disable_adapter():
                lg0, ls0 = forward_loss(pm, base.ids, base.labels)
        assert torch.equal(lg, lg0) and torch.equal(ls, ls0)
        assert rel(lg0, base.logits) < 1e-12
        own0 = {}
        for n, v in init.items():  # B = 0, m = ||W||_row, A anything
            _, _, i, mod, kind = n.split(".")
            w = base.P[f"backbone.layers.{i}.mixer.{mod}.weight"]
            own0[n] = {"A": v, "B": torch.zeros_like(v), "magnitude": torch.linalg.norm(w, dim=1)}[kind]
        assert_plain_exact(base, *run_own(own0), "dora")
    # seeded float32-representable values: A ~ U(-1/sqrt(in), 1/sqrt(in)) (peft's Kaiming bound),
    # B ~ 0.1 N(0, 1), m = ||W||_row * (1 + 0.1 N(0, 1))
    g = torch.Generator().manual_seed(seed)
    values, notes = {}, {}
    for n, p in named.items():
        i, mod, kind = n.split(".")[2], n.split(".")[3], n.split(".")[4]
        if kind == "A":
            bound = 1 / math.sqrt(p.shape[1])
            values[n] = ((torch.rand(p.shape, generator=g, dtype=F64) * 2 - 1) * bound).float().double()
            notes[n] = f"U(-1/sqrt({p.shape[1]}), 1/sqrt({p.shape[1]})), rounded to float32"
        elif kind == "B":
            values[n] = randn(g, p.shape).float().double()
            notes[n] = f"{INIT_STD} * N(0, 1), rounded to float32 (zero at a real init)"
        else:
            w = base.P[f"backbone.layers.{i}.mixer.{mod}.weight"]
            values[n] = (torch.linalg.norm(w, dim=1) * (1 + randn(g, p.shape))).float().double()
            notes[n] = f"||W||_row * (1 + {INIT_STD} * N(0, 1)), rounded to float32 (||W||_row at init)"
    del pm

    # peft, float64: logits, loss, gradients
    pm, named = build_dora(F64, values)
    with float64_clean(pm):
        logits, loss = forward_loss(pm, base.ids, base.labels)
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in named.items()}
    # our formula: the same numbers
    own = {n: v.clone().requires_grad_() for n, v in values.items()}
    o_logits, o_loss = run_own(own)
    o_loss.backward()
    e = max([rel(o_logits.detach(), logits.detach()), rel(o_loss.detach(), loss.detach())]
            + [rel(own[n].grad, grads[n]) for n in grads])
    print(f"dora: peft 0.12.0 float64 vs own formula: worst rel err (logits, loss, grads) {e:.1e}")
    assert e < 1e-10, e

    # the adapter directory, float32 (the values are float32-representable)
    pm32, named32 = build_dora(torch.float32, {n: v.float() for n, v in values.items()})
    pm32.create_or_update_model_card = lambda *_a, **_k: None  # no README.md (needs Jinja2; nothing to read)
    adapter_dir = os.path.join(out_dir, "dora_adapter")
    pm32.save_pretrained(adapter_dir)
    cfg_json = normalise_adapter_config(os.path.join(adapter_dir, "adapter_config.json"))
    assert cfg_json["use_dora"] is True and cfg_json["r"] == DORA["r"]
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    state = get_peft_model_state_dict(pm32)
    assert set(saved) == set(state)
    # file key = parameter name without the adapter name; DoRA's magnitude also loses ".weight"
    ssm_to_peft = {}
    for n, p in pm32.named_parameters():
        if p.requires_grad:
            key = n.replace(".default.", ".").replace(".default", "")
            if ".lora_magnitude_vector." in key:
                key = key[: -len(".weight")]
            assert key in saved, (n, key)
            ssm_to_peft[peft_to_ssmtune(n)] = key
    assert sorted(ssm_to_peft.values()) == sorted(saved)
    for n, k in ssm_to_peft.items():
        assert saved[k].dtype == torch.float32 and torch.equal(saved[k].double(), values[n]), n
    # peft reloads it: the same tensors
    base2 = MambaForCausalLM.from_pretrained(os.path.join(FIXTURES, TINY))
    pm2 = PeftModel.from_pretrained(base2, adapter_dir)
    back = {peft_to_ssmtune(n): p.detach() for n, p in pm2.named_parameters() if "lora_" in n}
    assert set(back) == set(values) and all(torch.equal(back[n].double(), values[n]) for n in values)

    params = {n: v for n, v in values.items()}
    settings = {
        "r": DORA["r"],
        "lora_alpha": DORA["lora_alpha"],
        "scaling": scaling,
        "target_modules": DORA["target_modules"],
        "computed_by": "peft 0.12.0 LoraConfig(use_dora=True, lora_dropout=0, bias='none') on transformers "
        "4.44.2's MambaForCausalLM in float64 (make_peft_fixture.float64_clean); cross-checked against "
        "W' = m * (W + s B A) / ||W + s B A||_row (norm detached) to 1e-10",
        "adapter_dir": "dora_adapter",
        "adapter_dtype": "float32 (values float32-representable: equal to the float64 reference values)",
        "peft_keys": ssm_to_peft,
        "peft_magnitude_key_format": "base_model.model.backbone.layers.<I>.mixer.<module>.lora_magnitude_vector "
        "(no '.weight', no adapter name; in memory peft 0.12 holds it as "
        "lora_magnitude_vector.default.weight)",
    }
    fixed = (logits.detach(), loss.detach(), grads)
    return params, {}, None, notes, settings, fixed


# ---------------------------------------------------------------------------
# SDT selection rule (docs/methods.md section 3 step 2)
# ---------------------------------------------------------------------------
def sdt_select(G, k_channels, k_states):
    """G: (E, N) warmup delta in A_log's layout. Top k_channels channels by sum_n G^2, then top
    k_states states by G^2 inside each kept channel; ties by lower index. Plain Python floats."""
    E, N = G.shape
    rows = G.tolist()
    score = [sum(v * v for v in rows[d]) for d in range(E)]
    channels = sorted(sorted(range(E), key=lambda d: (-score[d], d))[:k_channels])
    states = {d: sorted(sorted(range(N), key=lambda n: (-rows[d][n] ** 2, n))[:k_states]) for d in channels}
    return channels, states, score


def make_sdt_select(seed, n_layer, E, N, channel_freeze, state_freeze):
    k_channels = E - round(channel_freeze * E)
    k_states = N - round(state_freeze * N)
    g = torch.Generator().manual_seed(seed)
    t, sel = {}, {}
    for i in range(n_layer):
        G = randn(g, (E, N))
        # exact ties at both cut-offs: the channel ranked k_D+1 gets -(row ranked k_D) (same squares,
        # same order of summation); inside the top channel the state ranked k_N+1 gets -(state ranked k_N)
        _, _, score = sdt_select(G, k_channels, k_states)
        order = sorted(range(E), key=lambda d: (-score[d], d))
        a, b = order[k_channels - 1], order[k_channels]
        G[b] = -G[a]
        top = order[0]
        s_order = sorted(range(N), key=lambda n: (-G[top, n].item() ** 2, n))
        G[top, s_order[k_states]] = -G[top, s_order[k_states - 1]]
        channels, states, score = sdt_select(G, k_channels, k_states)
        assert score[a] == score[b] and (min(a, b) in channels) and (max(a, b) not in channels)
        lo, hi = sorted((s_order[k_states - 1], s_order[k_states]))
        assert lo in states[top] and hi not in states[top]
        ia, ibc = index_tensors(channels, states, E, N)
        s = f"sdt_select.layers.{i}."
        t[s + "G"] = G
        t[s + "A_log.index"], t[s + "x_proj.B.index"], t[s + "x_proj.C.index"] = ia, ibc, ibc.clone()
        sel[str(i)] = {
            "channels": channels,
            "A_states": {str(d): states[d] for d in channels},
            "channel_tie": {"channels": sorted((a, b)), "kept": min(a, b)},
            "state_tie": {"channel": top, "states": [lo, hi], "kept": lo},
        }
    settings = {
        "n_layer": n_layer, "d_inner": E, "d_state": N,
        "channel_freeze_fraction": channel_freeze, "state_freeze_fraction": state_freeze,
        "k_channels": k_channels, "k_states": k_states,
        "k_formula": "k_D = E - round(channel_freeze_fraction * E), k_N = N - round(state_freeze_fraction * N)",
        "rule": "s_d = sum_n G[d, n]^2; keep the top k_D channels; inside each kept channel keep the top k_N "
        "states by G[d, n]^2; ties break by lower index; B and C keep all N states of each kept channel",
        "G": f"{INIT_STD} * N(0, 1) (E, N) per layer, torch.Generator seeded {seed}, then the two ties set as "
        "described in `selected`",
        "selected": sel,
    }
    return t, settings


# What each variant's real init is, and what this script checked at it (bit-exact plain model).
ZERO_INIT = {
    "partial_delta": "delta = 0: plain model bit for bit (checked)",
    "bitfit_odd": "delta = 0: plain model bit for bit (checked)",
    "sdt": "a = 0: plain model bit for bit (checked)",
    "additional_scan": "C rows of x_proj = 0 (B rows, A_log_add anything): plain model bit for bit (checked)",
    "parallel_adapter": "up = 0 (down anything): plain model bit for bit (checked)",
    "dora": "B = 0, magnitude = ||W||_row: plain model bit for bit (checked, ours and peft's)",
    "prompt": None,
    "prefix": None,
    "affix": None,
    "initial_state_conv": "h0 = 0, conv = 0: plain model bit for bit (checked)",
}


# ---------------------------------------------------------------------------
def main() -> int:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    print(" ".join(f"{k} {v}" for k, v in versions().items()))
    tiny, odd = Base(TINY), Base(ODD)
    check_plain(tiny)
    check_plain(odd)

    out_dir = os.path.join(FIXTURES, OUT_NAME)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    t = {"input_ids": tiny.ids.clone(), "labels": tiny.labels.clone(),
         "bitfit_odd.input_ids": odd.ids.clone(), "bitfit_odd.labels": odd.labels.clone()}
    fx_variants = {}
    SDT_K = (3, 2)

    def add(name, base, seed, made, settings, fixed=None):
        settings = dict(settings, zero_init=ZERO_INIT[name])
        params, inp, run, notes = made
        if fixed is None:
            leaves = {n: v.clone().requires_grad_() for n, v in params.items()}
            logits, loss = run(leaves)
            loss.backward()
            logits, loss = logits.detach(), loss.detach()
            grads = {n: leaves[n].grad for n in leaves}
        else:
            logits, loss, grads = fixed
        for n in params:
            gr = grads[n]
            assert gr is not None and torch.count_nonzero(gr) == gr.numel(), (name, n)
            t[f"{name}.{n}"] = params[n].clone()
            t[f"{name}.grad.{n}"] = gr.clone()
        for n, x in inp.items():
            t[f"{name}.{n}"] = x.clone()
        t[f"{name}.logits"] = logits.contiguous()
        t[f"{name}.loss"] = loss.reshape(1)
        moved = rel(logits, base.logits)
        assert moved > 1e-4, (name, moved)
        print(f"{name} ({base.name}): loss {loss.item():.15f} (plain {base.loss.item():.15f}), "
              f"logits moved {moved:.3e} rel; max|grad|: "
              + ", ".join(f"{n} {grads[n].abs().max().item():.3e}" for n in params))
        fx_variants[name] = {
            "base_model": "../" + base.name,
            "inputs": "input_ids, labels" if base is tiny else f"{name}.input_ids, {name}.labels",
            "seed": seed,
            "settings": settings,
            "params": {n: list(params[n].shape) for n in params},
            "index_inputs": {n: list(x.shape) for n, x in inp.items()},
            "init": notes,
            "loss": loss.item(),
            "plain_loss": base.loss.item(),
        }

    add("partial_delta", tiny, 7101,
        make_partial(tiny, 7101, ["A_log", "D", "conv1d.bias", "dt_proj.bias"], True),
        {"mode": "delta", "tensors": ["A_log", "D", "conv1d.bias", "dt_proj.bias", "norm_f.weight"],
         "formula": "W_eff = W + delta"})
    add("bitfit_odd", odd, 7102, make_partial(odd, 7102, ["conv1d.bias", "dt_proj.bias"], False),
        {"mode": "delta", "tensors": ["conv1d.bias", "dt_proj.bias"],
         "formula": "W_eff = W + delta; mamba-odd has no conv1d bias, so its effective conv bias is the delta"})
    p, i_, r_, n_, s_ = make_sdt(tiny, 7103, *SDT_K)
    add("sdt", tiny, 7103, (p, i_, r_, n_),
        dict(s_, formula="A = -exp(A_log + scatter(A_log.index, a_A)) over A_log (E, N) flat (d*N + n); "
             "x_proj rows [R, R+N) (N, E) += scatter(x_proj.B.index, a_B) flat (n*E + d); rows [R+N, R+2N) "
             "likewise with C; values in ascending index order"))
    sel_t, sel_settings = make_sdt_select(7104, 2, 32, 8, 0.75, 0.5)
    t.update(sel_t)
    fx_variants["sdt_select"] = {
        "base_model": None,
        "seed": 7104,
        "settings": sel_settings,
        "inputs": {n: list(x.shape) for n, x in sel_t.items() if n.endswith(".G")},
        "outputs": {n: list(x.shape) for n, x in sel_t.items() if n.endswith(".index")},
        "note": "keys are sdt_select.layers.I.G (f64 input) and sdt_select.layers.I.{A_log,x_proj.B,x_proj.C}.index "
        "(int64, sorted ascending; A_log: d*N + n into (E, N); B/C: n*E + d into the (N, E) slice)",
    }
    print(f"sdt_select: k_D {sel_settings['k_channels']}, k_N {sel_settings['k_states']}; "
          + "; ".join(f"layer {i}: channels {v['channels']}, channel tie {v['channel_tie']}, state tie {v['state_tie']}"
                      for i, v in sel_settings["selected"].items()))
    add("additional_scan", tiny, 7105, make_additional_scan(tiny, 7105, 4),
        {"n_states": 4, "x_proj_rows": "[0, n) give B_add = x W^T, [n, 2n) give C_add",
         "formula": "h_add_t = exp(dt_t A_add) h_add_{t-1} + dt_t B_add_t x_t (h_add_0 = 0), A_add = -exp(A_log_add); "
         "y_t[d] += sum_j C_add_t[j] h_add_t[d, j]"})
    add("parallel_adapter", tiny, 7106, make_parallel_adapter(tiny, 7106, 6, 0.1, 0.5),
        {"r": 6, "scale": 0.1, "dropout": 0.0, "bias": False,
         "formula": "o = out_proj(g) + scale * up(relu(down(g))), g = y * silu(z) (width E)"})
    params, inp, run, notes, settings, fixed = make_dora(tiny, 7107, out_dir)
    add("dora", tiny, 7107, (params, inp, run, notes), settings, fixed)
    p, i_, r_, n_, s_, prompt_check = make_prompt(tiny, 7108, 3, INIT_STD)
    add("prompt", tiny, 7108, (p, i_, r_, n_),
        dict(s_, n_tokens=3, formula="the T vectors are prepended to the embedded input; their positions are "
             "dropped before norm_f/lm_head: logits and loss over the original L positions"))
    add("prefix", tiny, 7109, make_prefix(tiny, 7109, 2, INIT_STD, prompt_check),
        {"n_tokens": 2, "formula": "per layer I, prepended to the residual stream entering block I; the block "
         "(norm, mixer, residual add) runs on T+L positions; its first T outputs are dropped"})
    add("affix", tiny, 7110, make_affix(tiny, 7110, 3, 0.5),
        {"n_tokens": 3, "formula": "per layer, inserted before the x~ half of in_proj's output: conv over "
         "[0 (K-1); affix; x~], then silu, x_proj, dt, scan on T+L positions; the first T positions of y are "
         "dropped before the gate y * silu(z) and out_proj (z of the affix positions never matters)"})
    add("initial_state_conv", tiny, 7111, make_initial_state_conv(tiny, 7111, INIT_STD, 4),
        {"conv_state": True, "formula": "scan h_0 = h0 (E, N); the conv's K-1 left padding = conv (E, K-1), "
         "column j = the input x~ at time j-(K-1) (oldest first); the same for every sequence"})

    method = ("float64, this script's own Mamba forward (docs/methods.md section 0, sequential "
              "scan) with the method terms of docs/methods.md sections 1-7 (DoRA by peft 0.12.0, "
              "cross-checked); autograd gradients; frozen base")
    fx = {
        "generator": GENERATOR,
        "reference": "reference.safetensors",
        "method": method,
        "inputs": {
            TINY: "input_ids, labels (copied from ../mamba-tiny/reference.safetensors)",
            ODD: "bitfit_odd.input_ids, bitfit_odd.labels (copied from ../mamba-odd/reference.safetensors)",
        },
        "loss": "mean cross-entropy of logits[:, :-1] vs labels[:, 1:] over labels != -100",
        "key_format": "<variant>.<param name> (value), <variant>.grad.<param name>, <variant>.<index name> "
        "(int64 input), <variant>.logits (B, L, V), <variant>.loss (1); sdt_select: sdt_select.layers.I.*",
        "versions": versions(),
        "variants": fx_variants,
        "consumers": [
            "tests/peft_param_tuning_test.cpp (partial_delta, bitfit_odd, sdt, sdt_select)",
            "tests/peft_modules_test.cpp (parallel_adapter, additional_scan)",
            "tests/peft_virtual_tokens_test.cpp (prompt, prefix, affix, initial_state_conv)",
            "tests/peft_dora_test.cpp (dora, dora_adapter/)",
        ],
    }
    md = {
        "generator": GENERATOR,
        "method": method,
        "versions": json.dumps(fx["versions"], sort_keys=True),
        "variants": json.dumps(sorted(fx_variants), sort_keys=True),
    }
    t = {k: x.contiguous() for k, x in t.items()}
    path = os.path.join(out_dir, "reference.safetensors")
    save_deterministic(t, path, metadata=md)
    with open(os.path.join(out_dir, "fixture.json"), "w") as f:
        f.write(json.dumps(fx, indent=2, sort_keys=True) + "\n")
    back = load_file(path)
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)
    total = 0
    for root, _, files in sorted(os.walk(out_dir)):
        for f in sorted(files):
            q = os.path.join(root, f)
            total += os.path.getsize(q)
            print(f"  {os.path.relpath(q, ROOT)} ({os.path.getsize(q)} B)")
    assert total < 500_000, total
    print(f"wrote {os.path.relpath(out_dir, ROOT)}/: {len(t)} tensors, {total} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
