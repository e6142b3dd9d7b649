#!/usr/bin/env python3
"""Generate the Mamba-2 reference fixtures under tests/fixtures/mamba2-*/.

For every model below this script
  1. builds a `transformers.Mamba2ForCausalLM` (transformers 4.44.2, CPU, the torch path
     `Mamba2Mixer.torch_forward`; no mamba_ssm / causal_conv1d) with random (seeded) weights,
  2. perturbs the weights away from the HF init (`perturb`), so that every term matters,
  3. saves it in HF format (`save_pretrained(..., safe_serialization=True)`, float32;
     `mamba2-odd` sharded; tied models without `lm_head.weight`, see `save_model`),
  4. runs the HF forward in float32 with labels and output_hidden_states (right-padded batch
     with attention_mask for `mamba2-odd`), back-propagates the loss and stores logits, loss,
     hidden states and every parameter gradient in `<model>/reference.safetensors`,
  5. computes the same in float64 with an independent implementation (`f64_mamba2`: plain
     sequential recurrence, no transformers code) into `<model>/reference_f64.safetensors`,
  6. (`mamba2-odd`) runs greedy `generate` with the cache (Mamba2Cache), without it, and a
     hand-written greedy loop over full forwards; all three must agree; stores them and the cache
     after the prefill in `<model>/generation.safetensors`,
  7. verifies facts the documentation states (chunking, padding, dt clamp, hidden-states layout,
     tying, reload via from_pretrained), then runs check_mamba2_fixtures.py (numpy only).

Two semantics (`spec["semantics"]`):
  "tf5.25.0"  transformers 5.25.0's Mamba2 math (= mamba_ssm 2.3.2's), emulated on 4.44.2 by
              replacing Mamba2Mixer.torch_forward with `torch_forward_v5` (a port of 5.25.0's
              torch path): correct inter-chunk states, gated RMSNorm per group of
              intermediate_size / n_groups, head h reads group h // (num_heads / n_groups), dt
              clamped to time_step_limit, the mask also applied to the conv output. Used for
              mamba2-tiny, mamba2-odd and mamba2-groups, because 4.44.2's own torch path is
              wrong for sequences longer than one chunk (fixed in transformers 4.48.0);
  "tf4.44.2"  unmodified transformers 4.44.2: gated RMSNorm over the full intermediate width,
              head h reads B/C group h % n_groups, dt clamped below at time_step_min; used for
              mamba2-groups-fullnorm-tf4442 (same weights and inputs as mamba2-groups, one chunk).

Usage (environment: data_scripts/README.md):
    /tmp/fxenv/bin/python data_scripts/make_mamba2_fixtures.py --out tests/fixtures [--only NAME]

Deterministic: two runs give byte-identical files. Documentation: data_scripts/MAMBA2_FIXTURE.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
import transformers
from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.models.mamba2 import modeling_mamba2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_mamba2_fixtures import reject_constant  # noqa: E402
from make_fixtures import inv_softplus, save_deterministic  # noqa: E402
from make_jamba_fixtures import (
    base_metadata,
    files_log,
    generation as jamba_generation,
)  # noqa: E402
from make_jamba_fixtures import linear, lm_loss, make_inputs, rms_norm  # noqa: E402
from make_jamba_fixtures import padding_check as jamba_padding_check  # noqa: E402
from make_jamba_fixtures import rel_err, reload_check, run_generator, versions  # noqa: E402

GENERATOR = "data_scripts/make_mamba2_fixtures.py"
DOC = "data_scripts/MAMBA2_FIXTURE.md"
TF4, TF5 = "tf4.44.2", "tf5.25.0"

# dt_bias = inv_softplus(dt) with dt log-uniform in [DT_MIN, DT_MAX] (as make_fixtures.py)
DT_MIN, DT_MAX = 1e-3, 2.0
# Upper bound of every time_step_limit, never reached (asserted). transformers writes the
# default (0.0, inf) into config.json as [0.0, Infinity], which is not JSON: ssmtune's strict
# reader (nlohmann) rejects it, and tests/mamba_weights_test.cpp reads every fixture config.json.
DT_LIMIT_HI = 100.0
# a dt this close (relative) to a clamp bound would make float32 and float64 disagree on the
# clamp's gradient
MIN_CLAMP_MARGIN = 1e-4

COMMON = dict(
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    rms_norm=True,
    norm_before_gate=True,
    residual_in_fp32=True,
)
GROUPS_CONFIG = dict(
    COMMON,
    vocab_size=48,
    hidden_size=16,
    num_hidden_layers=2,
    expand=1,  # intermediate_size 16
    num_heads=4,
    head_dim=4,
    n_groups=2,  # 2 heads per group
    state_size=6,
    conv_kernel=4,
    use_bias=True,
    use_conv_bias=True,
    tie_word_embeddings=False,
    layer_norm_epsilon=1e-5,
    # equal lower bounds (as mamba2-odd): 4.44.2 and 5.25.0 clamp the same dt, so the two
    # fixtures of the pair differ only in the gated norm and the head -> group map
    time_step_limit=(0.001, DT_LIMIT_HI),
)

MODELS = [
    dict(
        name="mamba2-tiny",
        seed=6100,
        semantics=TF5,
        config=dict(
            COMMON,
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            expand=2,  # intermediate_size 32
            num_heads=4,
            head_dim=8,
            n_groups=1,
            state_size=8,
            conv_kernel=4,
            chunk_size=4,  # L = 10: two full chunks and a partial one
            use_bias=False,
            use_conv_bias=True,
            tie_word_embeddings=True,
            layer_norm_epsilon=1e-5,
            time_step_limit=(0.0, DT_LIMIT_HI),  # = the default (0, inf) here, see DT_LIMIT_HI
        ),
        batch=2,
        seq_len=10,
        lengths=None,
        max_shard_size=None,
        gen=None,  # 4.44.2's multi-chunk prefill is wrong (see the doc): generation on mamba2-odd
    ),
    dict(
        name="mamba2-odd",
        seed=6200,
        semantics=TF5,
        config=dict(
            COMMON,
            vocab_size=37,
            hidden_size=12,
            num_hidden_layers=3,
            expand=1.5,  # intermediate_size 18
            num_heads=3,
            head_dim=6,
            n_groups=1,
            state_size=5,
            conv_kernel=3,
            chunk_size=16,  # longer than every sequence here (L = 11; generation 4 + 10)
            use_bias=True,
            use_conv_bias=False,
            tie_word_embeddings=False,
            layer_norm_epsilon=1e-6,
            # 4.44.2's torch path clamps dt below at time_step_min; newer transformers and
            # mamba_ssm clamp to time_step_limit. Equal lower bounds: both clamp the same dt.
            time_step_min=0.02,
            time_step_limit=(0.02, DT_LIMIT_HI),
        ),
        batch=3,
        seq_len=11,
        lengths=[11, 8, 5],  # right padding
        max_shard_size="8KB",
        gen=dict(batch=1, prompt_len=4, max_new_tokens=10),
    ),
    dict(
        name="mamba2-groups",
        seed=6300,
        semantics=TF5,
        config=dict(GROUPS_CONFIG, chunk_size=1),  # every position its own chunk
        batch=2,
        seq_len=7,
        lengths=None,
        max_shard_size=None,
        gen=None,
    ),
    dict(
        name="mamba2-groups-fullnorm-tf4442",
        seed=6300,  # same weights and inputs as mamba2-groups
        semantics=TF4,
        # one chunk: 4.44.2's inter-chunk state passing is wrong, its single-chunk path is not
        config=dict(GROUPS_CONFIG, chunk_size=8),
        batch=2,
        seq_len=7,
        lengths=None,
        max_shard_size=None,
        gen=None,  # 4.44.2's cached decoding maps heads to groups differently (see the doc)
    ),
]

HIDDEN_STATES_NOTE = (
    "hidden_states.{i} is entry i of Mamba2Model's output_hidden_states tuple (transformers %s), "
    "num_hidden_layers+1 entries: for i < num_hidden_layers the residual stream AFTER block i "
    "(h + mixer(norm(h))), and hidden_states.{num_hidden_layers} = norm_f(hidden_states.{n-1}), "
    "the tensor fed to lm_head. The embedding output is not in the tuple: inputs_embeds."
) % transformers.__version__

LOSS_NOTE = (
    "loss: mean over positions with labels[:, 1:] != -100 of cross_entropy(logits[:, :-1], "
    "labels[:, 1:]) (HF shifts internally; labels[:, 0] never used); shape [1]. Every grad.* is "
    "d loss / d param."
)


# ---------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------
@torch.no_grad()
def perturb(model: Mamba2ForCausalLM, cfg: Mamba2Config) -> None:
    """Move every parameter away from the HF init (uses the global torch RNG).

    HF's Mamba2 init: torch defaults for Linear/Conv1d, zero Linear biases, embedding
    N(0, 0.1), A_log = ln(1..H), D = 1, norms = 1, dt_bias = inv_softplus(dt), dt log-uniform
    in [time_step_min, time_step_max]. Instead: Linear weights ~ N(0, 1/fan_in), conv
    weights ~ N(0, 1/K), embedding and lm_head ~ N(0, 1/D) (logits std ~ 1), every RMSNorm gain
    (block norm, mixer.norm, norm_f) 1 + 0.1 randn, D = 1 + 0.1 randn, A_log = ln(1..H) +
    0.1 randn, biases 0.1 randn, dt_bias = inv_softplus(dt) with dt log-uniform in [1e-3, 2]."""
    D = cfg.hidden_size
    H = cfg.num_heads
    for name, p in model.named_parameters():
        if name in ("backbone.embeddings.weight", "lm_head.weight"):
            p.normal_(0.0, 1.0 / math.sqrt(D))
        elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif name.endswith("mixer.D"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif name.endswith("mixer.A_log"):
            base = torch.log(torch.arange(1, H + 1, dtype=torch.float32))
            p.copy_(base + 0.1 * torch.randn_like(p))
        elif name.endswith("mixer.dt_bias"):
            u = torch.rand_like(p)
            dt = torch.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
            p.copy_(inv_softplus(dt))
        elif name.endswith(".bias"):  # in_proj / out_proj / conv1d
            p.copy_(0.1 * torch.randn_like(p))
        elif name.endswith("conv1d.weight"):  # (C, 1, K): fan_in = K
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))
        elif name.endswith(".weight") and p.dim() == 2:  # in_proj / out_proj
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
        else:
            raise AssertionError(f"perturb: unhandled parameter {name}")


def save_model(model: Mamba2ForCausalLM, out_dir: str, max_shard_size) -> None:
    """save_pretrained. transformers 4.44.2's Mamba2ForCausalLM has `_tied_weights_keys = []`,
    so saving a tied model with safetensors raises ("shared tensors ... mismatching the
    transformers base configuration"). Newer transformers (5.x: {"lm_head.weight":
    "backbone.embeddings.weight"}) and Mamba (v1, ["lm_head.weight"]) drop lm_head.weight from
    tied checkpoints; do the same by declaring it tied while saving."""
    kw = dict(safe_serialization=True)
    if max_shard_size:
        kw["max_shard_size"] = max_shard_size
    old = Mamba2ForCausalLM._tied_weights_keys
    if model.config.tie_word_embeddings:
        Mamba2ForCausalLM._tied_weights_keys = ["lm_head.weight"]
    try:
        model.save_pretrained(out_dir, **kw)
    finally:
        Mamba2ForCausalLM._tied_weights_keys = old


# ---------------------------------------------------------------------------
# transformers 5.25.0's torch path, ported onto 4.44.2's Mamba2Mixer (semantics "tf5.25.0")
# ---------------------------------------------------------------------------
def gated_rms_norm_v5(norm, hidden_states, gate, group_size):
    """transformers 5.25.0 Mamba2RMSNormGated.forward: x * silu(gate), then RMS-normalised over
    each group of `group_size` (= intermediate_size / n_groups) consecutive channels."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    hidden_states = hidden_states * F.silu(gate.to(torch.float32))
    *prefix, last = hidden_states.shape
    g = hidden_states.view(*prefix, last // group_size, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * g.view(*prefix, last).to(input_dtype)


def chunk_scan_v5(x, dt, A, B, C, chunk_size, D, dt_bias, dt_limit):
    """transformers 5.25.0 mamba2_chunk_scan (torch fallback; initial state zero, no z), with
    4.44.2's helpers (identical in 5.25.0). x (b, L, H, P), dt (b, L, H) before bias/softplus,
    B/C (b, L, G, N). Head h reads group h // (H / G) (repeat_interleave)."""
    seq_len, H = x.shape[1], x.shape[2]
    G = B.shape[2]
    dt = F.softplus(dt + dt_bias.to(dt.dtype))
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])
    x = x.float()
    B = B.float().repeat_interleave(H // G, dim=2)
    C = C.float().repeat_interleave(H // G, dim=2)
    pad = (chunk_size - seq_len % chunk_size) % chunk_size
    D_residual = D[..., None] * modeling_mamba2.pad_tensor_by_size(x, pad)
    x = x * dt[..., None].float()
    A = A.to(x.dtype) * dt.float()
    x, A, B, C = [modeling_mamba2.reshape_into_chunks(t, pad, chunk_size) for t in (x, A, B, C)]
    A = A.permute(0, 3, 1, 2)
    A_cumsum = torch.cumsum(A, dim=-1)
    L = torch.exp(modeling_mamba2.segment_sum(A))
    G_ = torch.einsum("bclhn,bcshn->bclsh", C, B)
    M = G_ * L.permute(0, 2, 3, 4, 1)
    Y_diag = torch.einsum("bclsh,bcshp->bclhp", M, x)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    B_decay = B * decay_states.permute(0, -2, -1, 1)[..., None]
    states = torch.einsum("bclhn,bclhp->bchpn", B_decay, x)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(modeling_mamba2.segment_sum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    new_states = torch.einsum("bzch,bzhpn->bchpn", decay_chunk.transpose(1, 3), states)
    states = new_states[:, :-1]
    C_times_states = torch.einsum("bclhn,bchpn->bclhp", C, states)
    Y_off = C_times_states * torch.exp(A_cumsum).permute(0, 2, 3, 1)[..., None]
    y = (Y_diag + Y_off).contiguous().reshape(x.shape[0], -1, H, x.shape[-1]) + D_residual
    return y[:, :seq_len]


def torch_forward_v5(
    self, input_states, cache_params=None, cache_position=None, attention_mask=None
):
    """transformers 5.25.0 Mamba2Mixer.forward without a cache. 4.44.2's Mamba2Mixer.forward has
    already multiplied input_states by the mask (batch > 1 and L > 1; 5.25.0: mask not all
    ones); 5.25.0 also masks the conv output."""
    assert cache_params is None, "the 5.25.0 port has no cache path"
    b, L, _ = input_states.shape
    dtype = input_states.dtype
    I, GN = self.intermediate_size, self.n_groups * self.ssm_state_size
    gate, xBC, dt = self.in_proj(input_states).split([I, self.conv_dim, self.num_heads], dim=-1)
    xBC = self.act(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))
    if attention_mask is not None and not torch.all(attention_mask == 1):
        xBC = (xBC * attention_mask[:, :, None]).to(xBC.dtype)
    x, B, C = torch.split(xBC, [I, GN, GN], dim=-1)
    A = -torch.exp(self.A_log.float())
    y = chunk_scan_v5(
        x.view(b, L, -1, self.head_dim),
        dt,
        A,
        B.view(b, L, self.n_groups, -1),
        C.view(b, L, self.n_groups, -1),
        self.chunk_size,
        self.D,
        self.dt_bias,
        self.time_step_limit,
    )
    y = gated_rms_norm_v5(self.norm, y.reshape(b, L, -1), gate, I // self.n_groups)
    return self.out_proj(y.to(dtype))


@contextlib.contextmanager
def chunk_size(model, c: int, dt_min=None):
    """While active, every mixer uses chunk_size c (the math does not depend on it) and, if
    given, time_step_min dt_min (4.44.2's torch path clamps dt below at it)."""
    mixers = [layer.mixer for layer in model.backbone.layers]
    old = [(m.chunk_size, m.time_step_min) for m in mixers]
    for m in mixers:
        m.chunk_size = c
        m.time_step_min = m.time_step_min if dt_min is None else dt_min
    try:
        yield
    finally:
        for m, (c0, t0) in zip(mixers, old):
            m.chunk_size, m.time_step_min = c0, t0


@contextlib.contextmanager
def semantics(kind: str):
    """While active, Mamba2Mixer computes with the given semantics (TF4: unchanged)."""
    if kind == TF4:
        yield
        return
    assert kind == TF5
    old = modeling_mamba2.Mamba2Mixer.torch_forward
    modeling_mamba2.Mamba2Mixer.torch_forward = torch_forward_v5
    try:
        yield
    finally:
        modeling_mamba2.Mamba2Mixer.torch_forward = old


# ---------------------------------------------------------------------------
# Independent float64 implementation (no transformers code): ground truth for the checks
# ---------------------------------------------------------------------------
def head_groups(H: int, G: int, kind: str) -> list:
    """The B/C group each head reads: 4.44.2's torch_forward tiles (B.repeat: h % G), 5.25.0
    and mamba_ssm interleave (h // (H / G))."""
    return [h % G for h in range(H)] if kind == TF4 else [h // (H // G) for h in range(H)]


def dt_bounds(cfg, kind: str) -> tuple:
    """dt clamp: 4.44.2 torch_forward clamps below at time_step_min (time_step_limit unused);
    5.25.0 / mamba_ssm clamp to time_step_limit."""
    if kind == TF4:
        return float(cfg.time_step_min), float("inf")
    lo, hi = cfg.time_step_limit
    return float(lo), float(hi)


def f64_mamba2(P: dict, cfg, ids, mask, kind: str, mask_conv: bool = False, probe=None):
    """Mamba2 forward from the parameter dict P (HF names) with a sequential recurrence.
    Returns (logits, hidden_states as HF's tuple). mask: (B, L) or None, applied to the mixer
    input (4.44.2: only for batch > 1 and L > 1); mask_conv also applies it to the conv output
    (5.25.0, and 4.44.2 with use_cache=True). probe: dict that receives per layer the
    post-softplus dt before the clamp ("dt"), the conv input ("conv_in"), the final state ("ssm").
    """
    D, eps, Bt, L = cfg.hidden_size, cfg.layer_norm_epsilon, ids.shape[0], ids.shape[1]
    I = int(cfg.expand * D)
    H, Pd, G, N, K = cfg.num_heads, cfg.head_dim, cfg.n_groups, cfg.state_size, cfg.conv_kernel
    assert H * Pd == I and H % G == 0 and cfg.hidden_act == "silu"
    grp = torch.tensor(head_groups(H, G, kind))
    lo, hi = dt_bounds(cfg, kind)
    use_mask = mask is not None and Bt > 1 and L > 1
    m = mask.to(torch.float64)[..., None] if use_mask else None

    def rms(x, w):
        return rms_norm(x, w, eps)

    def lin(x, name):
        return linear(P, x, name)

    def mixer(x, pre):
        if use_mask:
            x = x * m
        z, xBC, dt = lin(x, pre + "in_proj").split([I, I + 2 * G * N, H], dim=-1)
        w = P[pre + "conv1d.weight"][:, 0, :]  # (C, K): output t = sum_j w[:, j] in[t - K + 1 + j]
        if probe is not None:
            probe.setdefault("conv_in", []).append(xBC.detach())
        xp = F.pad(xBC, (0, 0, K - 1, 0))
        c = sum(xp[:, j : j + L, :] * w[:, j] for j in range(K))
        if pre + "conv1d.bias" in P:
            c = c + P[pre + "conv1d.bias"]
        xBC = F.silu(c)
        if use_mask and mask_conv:
            xBC = xBC * m
        x, Bm, Cm = xBC.split([I, G * N, G * N], dim=-1)
        x = x.reshape(Bt, L, H, Pd)
        Bh = Bm.reshape(Bt, L, G, N)[:, :, grp]  # (B, L, H, N)
        Ch = Cm.reshape(Bt, L, G, N)[:, :, grp]
        dt = F.softplus(dt + P[pre + "dt_bias"])  # (B, L, H)
        if probe is not None:
            probe.setdefault("dt", []).append(dt.detach())
        dt = torch.clamp(dt, min=lo, max=hi)
        A = -torch.exp(P[pre + "A_log"])
        s = torch.zeros(Bt, H, Pd, N, dtype=x.dtype)
        ys = []
        for t in range(L):
            d = dt[:, t, :, None, None]
            s = torch.exp(d * A[:, None, None]) * s + d * x[:, t, :, :, None] * Bh[:, t, :, None, :]
            ys.append((s * Ch[:, t, :, None, :]).sum(-1) + P[pre + "D"][:, None] * x[:, t])
        if probe is not None:
            probe.setdefault("ssm", []).append(s.detach())
        y = torch.stack(ys, 1).reshape(Bt, L, I) * F.silu(z)  # gate BEFORE the norm
        gs = I if kind == TF4 else I // G  # normalised width: full (4.44.2) or per group
        yg = y.reshape(Bt, L, I // gs, gs)
        yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + eps)
        return lin(P[pre + "norm.weight"] * yg.reshape(Bt, L, I), pre + "out_proj")

    h = P["backbone.embeddings.weight"][ids]
    hidden = []
    for i in range(cfg.num_hidden_layers):
        pre = f"backbone.layers.{i}."
        h = h + mixer(rms(h, P[pre + "norm.weight"]), pre + "mixer.")
        hidden.append(h)
    hf = rms(h, P["backbone.norm_f.weight"])
    hidden.append(hf)
    W = P["lm_head.weight"] if "lm_head.weight" in P else P["backbone.embeddings.weight"]
    return hf @ W.T, hidden


# ---------------------------------------------------------------------------
# reference runs
# ---------------------------------------------------------------------------
def pack(ids, labels, mask, emb, logits, loss, hidden, grads: dict, dtype):
    t = {"input_ids": ids.clone(), "labels": labels.clone()}
    if mask is not None:
        t["attention_mask"] = mask.clone()
    t["inputs_embeds"] = emb.detach().to(dtype)
    t["logits"] = logits.detach().to(dtype)
    t["loss"] = loss.detach().to(dtype).reshape(1)
    for i, hs in enumerate(hidden):
        t[f"hidden_states.{i}"] = hs.detach().to(dtype)
    for n, g in grads.items():
        t[f"grad.{n}"] = g.detach().to(dtype)
    return {k: v.contiguous() for k, v in t.items()}


def hf_reference(model: Mamba2ForCausalLM, ids, labels, mask, kind: str):
    """transformers forward/backward in float32 (TF5: with the 5.25.0 port patched in)."""
    cfg = model.config
    model.eval()
    model.zero_grad(set_to_none=True)
    with semantics(kind):
        out = model(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
    out.loss.backward()
    assert torch.equal(lm_loss(out.logits, labels), out.loss)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    with torch.no_grad():
        emb = model.backbone.embeddings(ids)
        assert torch.equal(out.hidden_states[-1], model.backbone.norm_f(out.hidden_states[-2]))
    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, f"gradient of {name} is zero"
        grads[name] = p.grad
    return pack(
        ids, labels, mask, emb, out.logits, out.loss, out.hidden_states, grads, torch.float32
    )


def f64_reference(model, ids, labels, mask, kind: str):
    """f64_mamba2 + autograd on the float32 weights promoted to float64."""
    P = {k: v.detach().double().clone().requires_grad_(True) for k, v in model.named_parameters()}
    probe = {}
    logits, hidden = f64_mamba2(
        P, model.config, ids, mask, kind, mask_conv=(kind == TF5), probe=probe
    )
    loss = lm_loss(logits, labels)
    loss.backward()
    emb = P["backbone.embeddings.weight"].detach()[ids]
    grads = {n: P[n].grad for n, _ in model.named_parameters()}
    return pack(ids, labels, mask, emb, logits, loss, hidden, grads, torch.float64), probe


def clamp_stats(probe, cfg, kind, mask) -> dict:
    """How many post-softplus dt the clamp changes, and the closest one to a bound (relative)."""
    lo, hi = dt_bounds(cfg, kind)
    dt = torch.stack(probe["dt"])  # (layers, B, L, H)
    if mask is not None:  # padded positions do not reach the loss
        dt = dt[:, mask.bool()]
    n_lo, n_hi = int((dt < lo).sum()), int((dt > hi).sum())
    n_min = int((dt < cfg.time_step_min).sum())
    margin = float("inf")
    for bnd in (lo, hi):
        if 0.0 < bnd < float("inf"):
            margin = min(margin, ((dt - bnd).abs() / bnd).min().item())
    return {
        "clamp_lo": lo,
        "clamp_hi": hi if hi < float("inf") else "inf",  # the metadata stays strict JSON
        "n_dt": dt.numel(),
        "n_below": n_lo,
        "n_above": n_hi,
        "n_below_time_step_min": n_min,
        "max_dt": float(f"{dt.max().item():.4g}"),
        "min_rel_distance_to_bound": float(f"{margin:.3e}"),
    }


# ---------------------------------------------------------------------------
# facts verified on the way (recorded in the metadata and in MAMBA2_FIXTURE.md)
# ---------------------------------------------------------------------------
@torch.no_grad()
def padding_check(model, ids, mask) -> tuple:
    """make_jamba_fixtures.padding_check (each row alone vs inside the right- / left-padded batch;
    mask vs no mask), plus use_cache=True vs False. Returns (result, logits use_cache=False,
    logits use_cache=True)."""
    res = jamba_padding_check(model, ids, mask)
    real = mask.bool()
    right = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    cached = model(input_ids=ids, attention_mask=mask, use_cache=True).logits
    res["use_cache_vs_not_real"] = (cached - right)[real].abs().max().item()
    res["use_cache_vs_not_pad"] = (cached - right)[~real].abs().max().item()
    return res, right, cached


@torch.no_grad()
def groups_cache_check(model, ids) -> float:
    """4.44.2 with n_groups > 1: prefill (chunked path, head h reads group h % G) and cached
    decoding (head h reads group h // (H/G)) disagree. Max |logits diff| of the last position
    computed by a cached decode step vs the full forward."""
    cfg = model.config
    n = ids.shape[1] - 1
    out = model(input_ids=ids[:, :n], use_cache=True)
    step = model(
        input_ids=ids[:, n:],
        cache_params=out.cache_params,
        use_cache=True,
        cache_position=torch.tensor([n]),
    )
    full = model(input_ids=ids, use_cache=False).logits[:, -1]
    assert cfg.n_groups > 1
    return (step.logits[:, -1] - full).abs().max().item()


@torch.no_grad()
def generation(model, spec) -> tuple[dict, dict]:
    """make_jamba_fixtures.generation (greedy generate with and without the cache, and a hand
    loop over full forwards), plus the cache (conv_states, ssm_states) after the prefill."""
    t, info = jamba_generation(model, spec)
    pre = model(input_ids=t["prompt_ids"], use_cache=True)
    for i in range(model.config.num_hidden_layers):
        t[f"prefill_conv_states.{i}"] = pre.cache_params.conv_states[i].clone().contiguous()
        t[f"prefill_ssm_states.{i}"] = pre.cache_params.ssm_states[i].clone().contiguous()
    assert torch.equal(pre.logits[:, -1], t["step_logits"][:, 0])
    return t, info


def cache_vs_f64(model, t, kind) -> float:
    """Max |diff| of the prefill cache vs f64_mamba2: conv_states = the last conv_kernel conv
    inputs x|B|C (zero-padded on the left), ssm_states = the final recurrent state."""
    cfg = model.config
    P = {k: v.detach().double() for k, v in model.named_parameters()}
    probe = {}
    f64_mamba2(P, cfg, t["prompt_ids"], None, kind, probe=probe)
    K, err = cfg.conv_kernel, 0.0
    for i in range(cfg.num_hidden_layers):
        xin = probe["conv_in"][i].transpose(1, 2)  # (B, C, L)
        want = F.pad(xin, (max(K - xin.shape[-1], 0), 0))[..., -K:]
        err = max(err, (t[f"prefill_conv_states.{i}"].double() - want).abs().max().item())
        err = max(err, (t[f"prefill_ssm_states.{i}"].double() - probe["ssm"][i]).abs().max().item())
    return err


# ---------------------------------------------------------------------------
def metadata(spec, cfg, extra=None) -> dict:
    md = {
        **base_metadata(spec, GENERATOR, DOC),
        "semantics": spec["semantics"],
        "hf_path": "Mamba2ForCausalLM, Mamba2Mixer.torch_forward (no CUDA kernels), model.eval(), "
        "use_cache=False, output_hidden_states=True",
        "hidden_states_note": HIDDEN_STATES_NOTE,
        "loss_note": LOSS_NOTE,
    }
    if spec["semantics"] == TF5:
        md["hf_path"] = (
            "Mamba2ForCausalLM of transformers 4.44.2 with Mamba2Mixer.torch_forward replaced by "
            "make_mamba2_fixtures.torch_forward_v5, a port of transformers 5.25.0's torch path: "
            "gated RMSNorm per group of intermediate_size/n_groups, head h reads B/C group "
            "h // (num_heads/n_groups), dt clamped to time_step_limit; model.eval(), "
            "use_cache=False, output_hidden_states=True"
        )
    if extra:
        md.update(extra)
    return md


def build_one(spec: dict, out_root: str) -> list[str]:
    name, kind = spec["name"], spec["semantics"]
    out_dir = os.path.join(out_root, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    log = [f"== {name} ({kind})"]

    torch.manual_seed(spec["seed"])
    cfg = Mamba2Config(**spec["config"])
    model = Mamba2ForCausalLM(cfg)
    perturb(model, cfg)
    model.eval()
    tied = model.lm_head.weight is model.backbone.embeddings.weight
    assert tied == cfg.tie_word_embeddings
    save_model(model, out_dir, spec["max_shard_size"])

    torch.manual_seed(spec["seed"] + 1000)
    ids, labels, mask = make_inputs(cfg, spec["batch"], spec["seq_len"], spec["lengths"])
    n_targets = int((labels[:, 1:] != -100).sum())

    ref = hf_reference(model, ids, labels, mask, kind)
    r64, probe = f64_reference(model, ids, labels, mask, kind)
    cs = clamp_stats(probe, cfg, kind, mask)
    assert cs["min_rel_distance_to_bound"] > MIN_CLAMP_MARGIN, cs
    assert cs["n_above"] == 0 and cs["max_dt"] < 0.5 * DT_LIMIT_HI, cs
    with open(os.path.join(out_dir, "config.json")) as f:
        json.load(f, parse_constant=reject_constant)  # strict JSON (no Infinity)
    e32 = {k: rel_err(ref[k], r64[k]) for k in ["logits", "loss", "inputs_embeds"]}
    e32["hidden_states"] = max(
        rel_err(ref[k], r64[k]) for k in ref if k.startswith("hidden_states.")
    )
    e32["grad"] = max(rel_err(ref[k], r64[k]) for k in ref if k.startswith("grad."))
    assert e32["logits"] < 1e-5 and e32["loss"] < 1e-6 and e32["grad"] < 1e-4, e32
    assert set(ref) == set(r64)

    extra = {"n_loss_targets": str(n_targets), "dt_clamp": json.dumps(cs, sort_keys=True)}
    P64 = {k: v.detach().double() for k, v in model.named_parameters()}
    # the other semantics gives different numbers exactly when the model has n_groups > 1
    other = TF5 if kind == TF4 else TF4
    lo_other, _ = f64_mamba2(P64, cfg, ids, mask, other, mask_conv=(other == TF5))
    real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    d_other = rel_err(lo_other[real], r64["logits"][real])
    extra["rel_logits_diff_vs_other_semantics"] = f"{d_other:.3e} ({other}, real positions)"
    log.append(f"logits under {other} semantics differ by rel {d_other:.2e}")
    if cfg.n_groups > 1:
        assert d_other > 1e-2
    if kind == TF5 and cfg.n_groups == 1:
        # n_groups = 1: 4.44.2 unmodified must agree with the port on one chunk, once its
        # time_step_min clamp is set to the port's lower bound time_step_limit[0]
        assert cs["n_above"] == 0
        with torch.no_grad():
            d_multi = rel_err(
                model(input_ids=ids, attention_mask=mask, use_cache=False).logits[real],
                ref["logits"][real],
            )
            with chunk_size(model, ids.shape[1], dt_min=cfg.time_step_limit[0]):
                d_one = rel_err(
                    model(input_ids=ids, attention_mask=mask, use_cache=False).logits[real],
                    ref["logits"][real],
                )
        assert d_one < 1e-5, d_one
        extra["tf4442_unmodified_vs_this"] = json.dumps(
            {
                "rel_logits_diff_chunk_size_%d" % cfg.chunk_size: float(f"{d_multi:.3e}"),
                "rel_logits_diff_one_chunk": float(f"{d_one:.3e}"),
            },
            sort_keys=True,
        )
        log.append("4.44.2 unmodified vs this: " + extra["tf4442_unmodified_vs_this"])
    if kind == TF5 and cfg.n_groups > 1:
        with torch.no_grad(), semantics(kind), chunk_size(model, ids.shape[1]):
            d_one = rel_err(model(input_ids=ids, use_cache=False).logits, ref["logits"])
        assert d_one < 1e-5, d_one
        log.append(f"port with one chunk vs chunk_size {cfg.chunk_size}: rel {d_one:.1e}")
    if mask is not None:
        pc, right, cached = padding_check(model, ids, mask)
        assert pc["right"] < 1e-5 and pc["left"] > 1e-2, pc
        assert pc["right_mask_vs_no_mask_real_positions"] < 1e-5, pc
        assert pc["right_mask_vs_no_mask_pad_positions"] > 1e-3, pc
        assert pc["use_cache_vs_not_real"] < 1e-5 and pc["use_cache_vs_not_pad"] > 1e-3, pc
        # 4.44.2 with use_cache=True masks the conv output as well: 5.25.0's semantics
        e_c = rel_err(cached, r64["logits"])
        assert kind == TF5 and e_c < 1e-5, e_c
        # 4.44.2 with use_cache=False (training) masks only the mixer input
        lo4, _ = f64_mamba2(P64, cfg, ids, mask, TF4, mask_conv=False)
        assert rel_err(right, lo4) < 1e-5
        ref["logits_tf4442_no_cache"] = right.float().contiguous()
        r64["logits_tf4442_no_cache"] = lo4.detach().contiguous()
        pc["tf4442_use_cache_vs_this"] = e_c
        extra["padding_check"] = json.dumps(
            {k: float(f"{v:.3e}") for k, v in pc.items()}, sort_keys=True
        )
        log.append("padding check (max |logits diff|): " + extra["padding_check"])
    if cfg.n_groups > 1 and kind == TF4:
        d = groups_cache_check(model, ids)
        assert d > 1e-2, d
        extra["cached_decode_vs_full_forward"] = (
            f"max |logits diff| {d:.3e}: 4.44.2's cached decode step maps head h to group "
            "h // (num_heads/n_groups), its chunked (prefill / no-cache) path to h % n_groups"
        )
        log.append(f"4.44.2 cached decode step vs full forward (n_groups > 1): {d:.3e}")

    md = metadata(spec, cfg, extra)
    save_deterministic(ref, os.path.join(out_dir, "reference.safetensors"), metadata=md)
    md64 = dict(md)
    md64["compute_dtype"] = "float64"
    md64["hf_path"] = (
        "make_mamba2_fixtures.f64_mamba2 (independent float64 implementation, sequential "
        "recurrence, no transformers code) + torch autograd, on the float32 weights promoted to "
        f"float64, semantics {kind}"
    )
    md64["max_rel_err_fp32_reference_vs_this"] = json.dumps(
        {k: float(f"{v:.3e}") for k, v in e32.items()}, sort_keys=True
    )
    save_deterministic(r64, os.path.join(out_dir, "reference_f64.safetensors"), metadata=md64)
    log.append(
        f"loss {ref['loss'].item():.6f} (ln V = {math.log(cfg.vocab_size):.4f}); dt clamp {cs}"
    )
    log.append(
        "fp32 (HF) vs f64 (own) rel: " + json.dumps({k: float(f"{v:.2e}") for k, v in e32.items()})
    )

    if spec["gen"]:
        gen_t, gen_info = generation(model, spec)
        gen_info["prefill_cache_vs_f64"] = float(f"{cache_vs_f64(model, gen_t, kind):.3e}")
        assert gen_info["prefill_cache_vs_f64"] < 1e-5
        gmd = {
            **versions(),
            "generator": GENERATOR,
            "doc": DOC,
            "model": name,
            "method": "model.generate(prompt_ids, attention_mask=ones, do_sample=False, "
            "max_new_tokens=%d, use_cache=True, output_logits=True, return_dict_in_generate=True), "
            "float32" % spec["gen"]["max_new_tokens"],
            "cache": "Mamba2Cache (use_cache=True): works with torch 1.13. prefill_conv_states.{i} "
            "(B, intermediate_size + 2*n_groups*state_size, conv_kernel) = the last conv_kernel "
            "conv "
            "INPUTS x|B|C (before the conv, zero-padded on the left); prefill_ssm_states.{i} "
            "(B, num_heads, head_dim, state_size), after model(prompt_ids, use_cache=True)",
            "eos_token_id": str(cfg.eos_token_id),
            "eos_in_output": "no (prompts are redrawn until no eos is generated)",
            "check": json.dumps(gen_info, sort_keys=True),
        }
        save_deterministic(gen_t, os.path.join(out_dir, "generation.safetensors"), metadata=gmd)
        log.append(
            "generation: "
            + " ".join(map(str, gen_t["sequences"].tolist()))
            + " "
            + json.dumps(gen_info)
        )

    # reload the checkpoint the way a user would (unpatched class attributes)
    re = Mamba2ForCausalLM.from_pretrained(out_dir)
    assert (re.lm_head.weight is re.backbone.embeddings.weight) == cfg.tie_word_embeddings
    with semantics(kind):
        log.append(reload_check(re, out_dir, ids, mask, ref))

    return log + files_log(out_dir, model, ref)


def main(argv=None):
    return run_generator(__doc__, MODELS, build_one, "check_mamba2_fixtures", argv)


if __name__ == "__main__":
    sys.exit(main())
