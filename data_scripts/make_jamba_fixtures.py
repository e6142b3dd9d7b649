#!/usr/bin/env python3
"""Generate the Jamba reference fixtures under tests/fixtures/jamba-*/.

For every model below this script
  1. builds a `transformers.JambaForCausalLM` (transformers 4.44.2, CPU, eager attention, Mamba
     slow path: `use_mamba_kernels=False`) with random (seeded) weights,
  2. perturbs the weights away from the HF init (`perturb`), so that every term matters,
  3. saves it in HF format (`save_pretrained(..., safe_serialization=True)`, float32; `jamba-odd`
     sharded),
  4. runs the HF forward in float32 with labels, output_hidden_states and output_router_logits
     (right-padded batch with attention_mask for `jamba-odd`, no mask for `jamba-tiny`),
     back-propagates the total loss (LM + router_aux_loss_coef * aux) and stores logits,
     LM loss, aux loss, total loss, router logits, hidden states and every parameter gradient in
     `<model>/reference.safetensors`,
  5. repeats 4 with the model in float64 (`model.double()`), with transformers' float32 casts
     patched out (`float64_clean`), into `<model>/reference_f64.safetensors`, and cross-checks it
     against an independent float64 implementation (`f64_jamba`, no transformers code),
  6. runs greedy `generate` with the cache (HybridMambaAttentionDynamicCache), without it, and a
     hand-written greedy loop over full forwards; all three must agree; `<model>/generation.safetensors`,
  7. verifies facts the documentation states (padding side, padding_idx, hidden-states layout,
     reload via from_pretrained), then runs data_scripts/check_jamba_fixtures.py (numpy only).

Usage (environment: data_scripts/README.md):
    /tmp/fxenv/bin/python data_scripts/make_jamba_fixtures.py --out tests/fixtures [--only jamba-tiny]

Deterministic: two runs give byte-identical files. Documentation: data_scripts/JAMBA_FIXTURE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import math
import os
import platform
import shutil
import sys

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from transformers import JambaConfig, JambaForCausalLM
from transformers.models.jamba import modeling_jamba

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_fixtures import inv_softplus, save_deterministic, torch_origin  # noqa: E402

GENERATOR = "data_scripts/make_jamba_fixtures.py"
DOC = "data_scripts/JAMBA_FIXTURE.md"

# dt = softplus(dt_proj.bias) drawn log-uniform in [DT_MIN, DT_MAX] (as make_fixtures.py)
DT_MIN, DT_MAX = 1e-3, 2.0
# Selected experts must not be near a tie: smallest allowed gap between the k-th and the
# (k+1)-th largest routing probability of any token (float32 vs float64 must pick the same).
MIN_TOPK_MARGIN = 1e-3
# Greedy generation: smallest allowed gap between the best and second-best logit of any step.
MIN_ARGMAX_MARGIN = 1e-3

MODELS = [
    dict(
        name="jamba-tiny",
        seed=5150,
        config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            # attention at layers 1, 3; MoE at layers 0, 3  ->  0: mamba+MoE, 1: attention+MLP,
            # 2: mamba+MLP, 3: attention+MoE (all four combinations)
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=3,
            expert_layer_offset=0,
            num_experts=4,
            num_experts_per_tok=2,
            mamba_d_state=8,
            mamba_d_conv=4,
            mamba_expand=2,
            mamba_dt_rank=2,  # "auto" would give ceil(16/16) = 1, see JAMBA_FIXTURE.md
            mamba_conv_bias=True,
            mamba_proj_bias=False,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            router_aux_loss_coef=0.1,
            hidden_act="silu",
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            use_mamba_kernels=False,
        ),
        batch=2,
        seq_len=9,
        lengths=None,  # no padding, no attention_mask
        max_shard_size=None,
        gen=dict(batch=2, prompt_len=5, max_new_tokens=12),
    ),
    dict(
        name="jamba-odd",
        seed=5155,  # 5151..5154 route some token within 1e-4 of a tie (MIN_TOPK_MARGIN)
        config=dict(
            vocab_size=37,
            hidden_size=18,
            intermediate_size=12,  # < hidden_size on purpose (and keeps the fixture small)
            num_hidden_layers=5,
            num_attention_heads=3,  # head_dim 6
            num_key_value_heads=1,
            # attention at layer 2; MoE at layers 0, 2, 4
            attn_layer_period=3,
            attn_layer_offset=2,
            expert_layer_period=2,
            expert_layer_offset=0,
            num_experts=4,
            num_experts_per_tok=2,
            mamba_d_state=5,
            mamba_d_conv=3,
            mamba_expand=1,
            mamba_dt_rank=3,
            mamba_conv_bias=False,
            mamba_proj_bias=True,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            router_aux_loss_coef=0.05,
            hidden_act="silu",
            pad_token_id=4,
            bos_token_id=1,
            eos_token_id=2,
            use_mamba_kernels=False,
        ),
        batch=3,
        seq_len=11,
        lengths=[11, 8, 5],  # right padding
        max_shard_size="50KB",
        gen=dict(batch=1, prompt_len=4, max_new_tokens=12),
    ),
]

HIDDEN_STATES_NOTE = (
    "hidden_states.{i} is entry i of JambaModel's output_hidden_states tuple (transformers %s), "
    "num_hidden_layers+1 entries: for i < num_hidden_layers it is the INPUT of decoder layer i "
    "(hidden_states.0 = the embedding output, hidden_states.i = output of layer i-1), and "
    "hidden_states.{num_hidden_layers} = final_layernorm(output of the last layer), i.e. the tensor fed to "
    "lm_head. The un-normalised output of the last layer is not in HF's tuple; it is stored as "
    "last_layer_output."
) % transformers.__version__

LOSS_NOTE = (
    "loss = LM loss alone: mean over positions with labels[:, 1:] != -100 of "
    "cross_entropy(logits[:, :-1], labels[:, 1:]) (HF shifts internally; labels[:, 0] never used). "
    "aux_loss = load_balancing_loss_func(router logits of all MoE layers, num_experts, "
    "num_experts_per_tok, attention_mask). total_loss = loss + router_aux_loss_coef * aux_loss "
    "(= HF's output.loss with output_router_logits=True); every grad.* is d total_loss / d param. "
    "All stored with shape [1]."
)


# ---------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------
def make_config(spec: dict) -> JambaConfig:
    cfg = JambaConfig(**spec["config"])
    cfg._attn_implementation = "eager"  # the only one torch 1.13 has; not written to config.json
    return cfg


@torch.no_grad()
def perturb(model: JambaForCausalLM, cfg: JambaConfig) -> None:
    """Move every parameter away from the HF init (uses the global torch RNG).

    HF's Jamba init is N(0, 0.02) for every Linear/Conv1d weight, zero biases, A_log = ln(1..N),
    D = 1, norms = 1 and a zero embedding row at pad_token_id: with it the activations are tiny
    and several terms vanish. Instead: weights ~ N(0, 1/fan_in) (unit-variance outputs),
    embedding and lm_head ~ N(0, 1/D) (logits std ~ 1), every RMSNorm gain 1 + 0.1 randn,
    D = 1 + 0.1 randn, A_log = ln(1..N) + 0.1 randn, in/out_proj and conv biases 0.1 randn,
    dt_proj.bias = inv_softplus(dt) with dt log-uniform in [1e-3, 2]."""
    D = cfg.hidden_size
    N = cfg.mamba_d_state
    for name, p in model.named_parameters():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            p.normal_(0.0, 1.0 / math.sqrt(D))
        elif name.endswith("layernorm.weight"):  # input_/pre_ff_/final_/dt_/b_/c_layernorm
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif name.endswith("mamba.D"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif name.endswith("mamba.A_log"):
            base = torch.log(torch.arange(1, N + 1, dtype=torch.float32))
            p.copy_(base.expand_as(p) + 0.1 * torch.randn_like(p))
        elif name.endswith("dt_proj.bias"):
            u = torch.rand_like(p)
            dt = torch.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
            p.copy_(inv_softplus(dt))
        elif name.endswith(".bias"):  # mamba in_proj / out_proj / conv1d
            p.copy_(0.1 * torch.randn_like(p))
        elif name.endswith("conv1d.weight"):  # (E, 1, K): fan_in = K
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))
        elif name.endswith(".weight") and p.dim() == 2:  # every other Linear (router included)
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
        else:
            raise AssertionError(f"perturb: unhandled parameter {name}")


def make_inputs(cfg: JambaConfig, batch: int, seq_len: int, lengths):
    """input_ids, labels, attention_mask (None without padding). Uses the global torch RNG."""
    pad = cfg.pad_token_id
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), dtype=torch.int64)
    # pad_token_id as an ordinary (attended, predicted) token: shows what padding_idx does
    ids[0, 2] = pad
    ids[batch - 1, 3] = pad
    labels = ids.clone()
    labels[0, 0] = -100  # start of a row (never used after the shift)
    labels[0, seq_len // 2] = -100  # middle of a row
    labels[batch - 1, 1] = -100  # first position that actually enters the loss
    labels[batch - 1, seq_len - 3] = -100
    if batch > 2:
        labels[1, seq_len // 3] = -100
    mask = None
    if lengths is not None:
        assert len(lengths) == batch and max(lengths) == seq_len
        mask = torch.zeros(batch, seq_len, dtype=torch.int64)
        for b, n in enumerate(lengths):
            mask[b, :n] = 1
            ids[b, n:] = pad  # right padding
            labels[b, n:] = -100
    return ids, labels, mask


# ---------------------------------------------------------------------------
# small math helpers (own code)
# ---------------------------------------------------------------------------
def lm_loss(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


def aux_loss_fn(router_logits, num_experts: int, top_k: int, mask=None):
    """Switch-style load-balancing loss as transformers 4.44.2 computes it, in the logits' dtype.

    router_logits: sequence of (B*L, E) tensors (one per MoE layer, rows b*L + t).
    z = all of them stacked (layer-major); p = softmax(z); S = top-k indices of p;
    f[j, e] = mean over the kept tokens of [S_j == e]   (j = 0..k-1, NOT summed or divided by k);
    P[e] = mean over the kept tokens of p[:, e];
    aux = E * sum_{j, e} f[j, e] * P[e].   Kept tokens: all (mask None) or mask == 1."""
    z = torch.cat(list(router_logits), dim=0)
    p = torch.softmax(z, dim=-1)
    sel = torch.topk(p, top_k, dim=-1).indices
    onehot = F.one_hot(sel, num_experts).to(p.dtype)  # (T, k, E), no gradient
    if mask is None:
        f = onehot.mean(0)
        P = p.mean(0)
    else:
        m = mask.reshape(-1).to(p.dtype).repeat(len(router_logits))  # layer-major, like z
        f = (onehot * m[:, None, None]).sum(0) / m.sum()
        P = (p * m[:, None]).sum(0) / m.sum()
    return num_experts * (f * P[None, :]).sum()


def topk_margin(router_logits, top_k: int) -> float:
    """min over tokens of p_(k) - p_(k+1) (sorted routing probabilities)."""
    z = torch.cat([r.detach().double() for r in router_logits], dim=0)
    s = torch.sort(torch.softmax(z, -1), dim=-1, descending=True).values
    return float((s[:, top_k - 1] - s[:, top_k]).min()) if s.shape[1] > top_k else float("inf")


# ---------------------------------------------------------------------------
# float64 without transformers' float32 roundings (patched module forwards, own code)
# ---------------------------------------------------------------------------
def _rmsnorm(self, x):
    # JambaRMSNorm minus the float32 round trip (identical for float32 input)
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _attention(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
               output_attentions=False, use_cache=False, cache_position=None):
    # JambaAttention (eager) with the softmax in the input dtype; no cache
    assert past_key_value is None and not output_attentions
    b, n, _ = hidden_states.shape
    hd = self.head_dim

    def heads(t, h):
        return t.view(b, n, h, hd).transpose(1, 2)

    q = heads(self.q_proj(hidden_states), self.num_heads)
    k = heads(self.k_proj(hidden_states), self.num_key_value_heads)
    v = heads(self.v_proj(hidden_states), self.num_key_value_heads)
    g = self.num_key_value_groups  # query head h reads kv head h // g
    k = k[:, :, None].expand(b, self.num_key_value_heads, g, n, hd).reshape(b, self.num_heads, n, hd)
    v = v[:, :, None].expand(b, self.num_key_value_heads, g, n, hd).reshape(b, self.num_heads, n, hd)
    s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)
    if attention_mask is not None:  # additive 4-D mask from JambaModel._update_causal_mask
        s = s + attention_mask[:, :, :, :n]
    a = torch.softmax(s, dim=-1)
    o = torch.matmul(a, v).transpose(1, 2).contiguous().reshape(b, n, self.hidden_size)
    return self.o_proj(o), None, None


def _mamba(self, input_states, cache_params=None):
    # JambaMambaMixer.slow_forward, no cache, without A_log.float(), B.float(), u.float() and
    # ssm_state.to(dtype)
    assert cache_params is None
    b, n, _ = input_states.shape
    xz = self.in_proj(input_states).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    u = self.act(self.conv1d(x)[..., :n])  # (b, E, n)
    dbc = self.x_proj(u.transpose(1, 2))
    dt, Bm, Cm = torch.split(dbc, [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    dt = self.dt_layernorm(dt)
    Bm = self.b_layernorm(Bm)
    Cm = self.c_layernorm(Cm)
    delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)  # (b, E, n)
    A = -torch.exp(self.A_log)
    dA = torch.exp(A[None, :, None, :] * delta[:, :, :, None])
    dBu = delta[:, :, :, None] * Bm[:, None, :, :] * u[:, :, :, None]
    state = torch.zeros(b, self.intermediate_size, self.ssm_state_size, dtype=input_states.dtype)
    ys = []
    for t in range(n):
        state = dA[:, :, t, :] * state + dBu[:, :, t, :]
        ys.append(torch.matmul(state, Cm[:, t, :].unsqueeze(-1))[:, :, 0])
    y = torch.stack(ys, dim=-1) + u * self.D[None, :, None]
    y = y * self.act(z)
    return self.out_proj(y.transpose(1, 2))


MARGINS: list | None = None  # when a list, _moe appends each call's top-k margin


def _moe(self, hidden_states):
    # JambaSparseMoeBlock with the routing softmax in the input dtype
    b, n, d = hidden_states.shape
    x = hidden_states.reshape(-1, d)
    logits = self.router(x)
    w, sel = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
    if MARGINS is not None:
        MARGINS.append(topk_margin([logits], self.top_k))
    out = torch.zeros_like(x)
    for e, expert in enumerate(self.experts):
        slot, tok = torch.where(sel.t() == e)  # (slot, token) order, as HF's loop
        if tok.numel():
            out.index_add_(0, tok, expert(x[tok]) * w[tok, slot, None])
    return out.view(b, n, d), logits


@contextlib.contextmanager
def float64_clean():
    """While active, transformers 4.44.2's Jamba modules compute in their input dtype:
    JambaRMSNorm (float32 round trip), JambaAttention (softmax dtype=float32),
    JambaMambaMixer.slow_forward (A_log/B/u cast to float32), JambaSparseMoeBlock (routing softmax
    dtype=float). JambaForCausalLM's logits.float() and load_balancing_loss_func's
    expert_mask.float() are avoided by `forward_parts`. Asserted to change nothing in float32."""
    saved = {
        (modeling_jamba.JambaRMSNorm, "forward"): _rmsnorm,
        (modeling_jamba.JambaAttention, "forward"): _attention,
        (modeling_jamba.JambaMambaMixer, "slow_forward"): _mamba,
        (modeling_jamba.JambaSparseMoeBlock, "forward"): _moe,
    }
    old = {k: getattr(*k) for k in saved}
    for (cls, attr), fn in saved.items():
        setattr(cls, attr, fn)
    try:
        yield
    finally:
        for (cls, attr), fn in old.items():
            setattr(cls, attr, fn)


def forward_parts(lm: JambaForCausalLM, ids, labels, mask):
    """(outputs of lm.model, logits, LM loss, aux loss, total loss) in the model's dtype.
    `lm` may be the JambaForCausalLM inside a peft model. Use inside float64_clean for float64."""
    cfg = lm.config
    outs = lm.model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True,
                    output_router_logits=True, return_dict=True)
    logits = lm.lm_head(outs.last_hidden_state)
    lm_l = lm_loss(logits, labels)
    aux = aux_loss_fn(outs.router_logits, cfg.num_experts, cfg.num_experts_per_tok, mask)
    return outs, logits, lm_l, aux, lm_l + cfg.router_aux_loss_coef * aux


# ---------------------------------------------------------------------------
# Independent float64 implementation (no transformers code): ground truth for the checks
# ---------------------------------------------------------------------------
def rms_norm(x, w, eps):
    """RMSNorm in the input dtype: w * x / sqrt(mean(x^2) + eps) over the last axis."""
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(P: dict, x, name: str):
    """x @ P[name.weight]^T (+ P[name.bias] if present)."""
    y = x @ P[name + ".weight"].T
    return y + P[name + ".bias"] if name + ".bias" in P else y


def f64_jamba(P: dict, cfg, ids: torch.Tensor, mask=None):
    """Jamba forward from the parameter dict P (HF names). Returns (logits, hidden_states list as
    HF's tuple, last_layer_output, {layer: router logits (B*L, E)}, aux loss)."""
    D, eps, L = cfg.hidden_size, cfg.rms_norm_eps, ids.shape[1]
    E_m, N, R, K = cfg.mamba_expand * D, cfg.mamba_d_state, cfg.mamba_dt_rank, cfg.mamba_d_conv
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = D // H
    assert cfg.hidden_act == "silu"
    Bt = ids.shape[0]

    def rms(x, w):
        return rms_norm(x, w, eps)

    def lin(x, name):
        return linear(P, x, name)

    def mlp(x, pre):
        return lin(F.silu(lin(x, pre + "gate_proj")) * lin(x, pre + "up_proj"), pre + "down_proj")

    allowed = torch.ones(L, L, dtype=torch.bool).tril()[None]  # (1, Lq, Lk) causal
    if mask is not None:
        allowed = allowed & mask.bool()[:, None, :]

    def attention(x, pre):
        q = lin(x, pre + "q_proj").view(Bt, L, H, hd).transpose(1, 2)
        k = lin(x, pre + "k_proj").view(Bt, L, KV, hd).transpose(1, 2)
        v = lin(x, pre + "v_proj").view(Bt, L, KV, hd).transpose(1, 2)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(Bt, L, D)
        return lin(o, pre + "o_proj")

    def mamba(x, pre):
        xz = lin(x, pre + "in_proj")
        xi, z = xz[..., :E_m], xz[..., E_m:]
        w = P[pre + "conv1d.weight"][:, 0, :]
        xp = F.pad(xi, (0, 0, K - 1, 0))
        c = sum(xp[:, j : j + L, :] * w[:, j] for j in range(K))
        if pre + "conv1d.bias" in P:
            c = c + P[pre + "conv1d.bias"]
        u = F.silu(c)
        dbc = u @ P[pre + "x_proj.weight"].T
        dt = rms(dbc[..., :R], P[pre + "dt_layernorm.weight"])
        Bm = rms(dbc[..., R : R + N], P[pre + "b_layernorm.weight"])
        Cm = rms(dbc[..., R + N :], P[pre + "c_layernorm.weight"])
        delta = F.softplus(lin(dt, pre + "dt_proj"))
        A = -torch.exp(P[pre + "A_log"])
        s = torch.zeros(Bt, E_m, N, dtype=x.dtype)
        ys = []
        for t in range(L):
            s = torch.exp(delta[:, t, :, None] * A) * s + delta[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
            ys.append((s * Cm[:, t, None, :]).sum(-1))
        y = (torch.stack(ys, 1) + u * P[pre + "D"]) * F.silu(z)
        return lin(y, pre + "out_proj")

    def moe(x, pre):
        z = lin(x, pre + "router")  # (B, L, E)
        p = torch.softmax(z, -1)
        topv, topi = torch.topk(p, cfg.num_experts_per_tok, dim=-1)
        gate = torch.zeros_like(p).scatter(-1, topi, topv)  # top-k probabilities, not renormalised
        y = sum(gate[..., e : e + 1] * mlp(x, f"{pre}experts.{e}.") for e in range(cfg.num_experts))
        return y, z.reshape(Bt * L, -1)

    emb = P["model.embed_tokens.weight"]
    # nn.Embedding(padding_idx=pad_token_id): the lookup of the pad token sends no gradient to its row
    h = torch.where((ids == cfg.pad_token_id)[..., None], emb.detach()[ids], emb[ids])
    hidden, routers = [], {}
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}."
        hidden.append(h)
        x = rms(h, P[pre + "input_layernorm.weight"])
        if cfg.layers_block_type[i] == "attention":
            h = h + attention(x, pre + "self_attn.")
        else:
            h = h + mamba(x, pre + "mamba.")
        x = rms(h, P[pre + "pre_ff_layernorm.weight"])
        if cfg.layers_num_experts[i] > 1:
            y, routers[i] = moe(x, pre + "feed_forward.")
        else:
            y = mlp(x, pre + "feed_forward.")
        h = h + y
    last = h
    hf = rms(h, P["model.final_layernorm.weight"])
    hidden.append(hf)
    W = P["lm_head.weight"] if "lm_head.weight" in P else P["model.embed_tokens.weight"]
    logits = hf @ W.T
    aux = aux_loss_fn([routers[i] for i in sorted(routers)], cfg.num_experts, cfg.num_experts_per_tok, mask)
    return logits, hidden, last, routers, aux


def f64_total(P, cfg, ids, labels, mask):
    logits, hidden, last, routers, aux = f64_jamba(P, cfg, ids, mask)
    lm_l = lm_loss(logits, labels)
    return logits, lm_l, aux, lm_l + cfg.router_aux_loss_coef * aux, hidden, last, routers


# ---------------------------------------------------------------------------
# reference runs
# ---------------------------------------------------------------------------
def moe_layers(cfg) -> list:
    return [i for i in range(cfg.num_hidden_layers) if cfg.layers_num_experts[i] > 1]


def pack(cfg, ids, labels, mask, logits, lm_l, aux, total, hidden, last, routers: dict, grads: dict, dtype):
    t = {"input_ids": ids.clone(), "labels": labels.clone()}
    if mask is not None:
        t["attention_mask"] = mask.clone()
    t["logits"] = logits.detach().to(dtype)
    t["loss"] = lm_l.detach().to(dtype).reshape(1)
    t["aux_loss"] = aux.detach().to(dtype).reshape(1)
    t["total_loss"] = total.detach().to(dtype).reshape(1)
    for i, hs in enumerate(hidden):
        t[f"hidden_states.{i}"] = hs.detach().to(dtype)
    t["last_layer_output"] = last.detach().to(dtype)
    k = cfg.num_experts_per_tok
    for i, z in routers.items():
        t[f"router_logits.{i}"] = z.detach().to(dtype)
        w, sel = torch.topk(torch.softmax(z.detach(), dim=-1), k, dim=-1)
        t[f"router_weights.{i}"] = w.to(dtype)
        t[f"router_selected.{i}"] = sel.to(torch.int64)
    for n, g in grads.items():
        t[f"grad.{n}"] = g.detach().to(dtype)
    return {k_: v.contiguous() for k_, v in t.items()}


def hf_reference(model: JambaForCausalLM, ids, labels, mask):
    """Unmodified transformers forward/backward in float32."""
    cfg = model.config
    model.eval()
    model.zero_grad(set_to_none=True)
    last = {}
    hook = model.model.layers[-1].register_forward_hook(lambda m, i, o: last.__setitem__("h", o[0].detach()))
    out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True,
                output_router_logits=True, use_cache=False, return_dict=True)
    hook.remove()
    out.loss.backward()

    # the losses as documented
    lm_l = lm_loss(out.logits, labels)
    total = lm_l + cfg.router_aux_loss_coef * out.aux_loss
    assert torch.equal(total, out.loss), (total, out.loss)
    mine = aux_loss_fn(out.router_logits, cfg.num_experts, cfg.num_experts_per_tok, mask)
    assert abs(mine.item() - out.aux_loss.item()) <= 1e-6 * out.aux_loss.item(), (mine, out.aux_loss)

    # hidden-states layout
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    layers = moe_layers(cfg)
    assert len(out.router_logits) == len(layers)
    with torch.no_grad():
        assert torch.equal(out.hidden_states[0], model.model.embed_tokens(ids))
        assert torch.equal(out.hidden_states[-1], model.model.final_layernorm(last["h"]))

    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient (an expert without tokens?)"
        assert torch.count_nonzero(p.grad) > 0, f"gradient of {name} is all zero"
        grads[name] = p.grad
    routers = dict(zip(layers, out.router_logits))
    t = pack(cfg, ids, labels, mask, out.logits, lm_l, out.aux_loss, out.loss, out.hidden_states, last["h"],
             routers, grads, torch.float32)
    return t, out


def hf_reference_f64(model: JambaForCausalLM, ids, labels, mask):
    """The same forward/backward with model.double(), transformers' float32 casts patched out."""
    global MARGINS
    cfg = model.config
    m64 = copy.deepcopy(model).double()
    m64.eval()
    m64.zero_grad(set_to_none=True)
    last = {}
    hook = m64.model.layers[-1].register_forward_hook(lambda m, i, o: last.__setitem__("h", o[0].detach()))
    MARGINS = []
    with float64_clean():
        outs, logits, lm_l, aux, total = forward_parts(m64, ids, labels, mask)
        total.backward()
    margin = min(MARGINS)
    MARGINS = None
    hook.remove()
    assert logits.dtype == torch.float64
    grads = {n: p.grad for n, p in m64.named_parameters()}
    routers = dict(zip(moe_layers(cfg), outs.router_logits))
    t = pack(cfg, ids, labels, mask, logits, lm_l, aux, total, outs.hidden_states, last["h"], routers, grads,
             torch.float64)
    return t, margin


def check_patch_is_noop(model, ids, labels, mask, ref) -> None:
    """float64_clean must not change float32 results (the patched forwards are faithful)."""
    with torch.no_grad(), float64_clean():
        _, logits, lm_l, aux, total = forward_parts(model, ids, labels, mask)
    assert torch.equal(logits, ref["logits"]), (logits - ref["logits"]).abs().max()
    assert torch.equal(total.reshape(1), ref["total_loss"]), (total, ref["total_loss"])


def independent_check(model, ids, labels, mask, r64: dict) -> dict:
    """f64_jamba + autograd vs the patched-HF float64 run: max rel errors."""
    P = {k: v.detach().double().clone().requires_grad_(True) for k, v in model.named_parameters()}
    logits, lm_l, aux, total, hidden, last, routers = f64_total(P, model.config, ids, labels, mask)
    total.backward()
    e = {
        "logits": rel_err(logits, r64["logits"]),
        "loss": rel_err(lm_l.reshape(1), r64["loss"]),
        "aux_loss": rel_err(aux.reshape(1), r64["aux_loss"]),
        "total_loss": rel_err(total.reshape(1), r64["total_loss"]),
        "hidden_states": max(rel_err(h, r64[f"hidden_states.{i}"]) for i, h in enumerate(hidden)),
        "last_layer_output": rel_err(last, r64["last_layer_output"]),
        "router_logits": max(rel_err(z, r64[f"router_logits.{i}"]) for i, z in routers.items()),
        "grad": max(rel_err(P[n].grad, r64[f"grad.{n}"]) for n in P),
    }
    return e


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# ---------------------------------------------------------------------------
# facts verified on the way (recorded in the metadata and in JAMBA_FIXTURE.md)
# ---------------------------------------------------------------------------
@torch.no_grad()
def padding_check(model, ids, mask) -> dict:
    """Each row of the padded batch alone (unpadded) vs inside the right-padded batch (as stored)
    and inside a left-padded batch with the same mask semantics: max |logits diff| over real
    positions."""
    res = {"right": 0.0, "left": 0.0}
    lengths = mask.sum(1).tolist()
    L = ids.shape[1]
    pad = model.config.pad_token_id
    right = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    left_ids = torch.full_like(ids, pad)
    left_mask = torch.zeros_like(mask)
    for b, n in enumerate(lengths):
        left_ids[b, L - n :] = ids[b, :n]
        left_mask[b, L - n :] = 1
    left = model(input_ids=left_ids, attention_mask=left_mask, use_cache=False).logits
    for b, n in enumerate(lengths):
        alone = model(input_ids=ids[b : b + 1, :n], use_cache=False).logits[0]
        res["right"] = max(res["right"], (right[b, :n] - alone).abs().max().item())
        res["left"] = max(res["left"], (left[b, L - n :] - alone).abs().max().item())
    # the mask does not change any real position with right padding (attention is causal, and
    # the Mamba mixer never sees the mask): only pad positions and the aux loss differ
    nomask = model(input_ids=ids, use_cache=False).logits
    real = mask.bool()
    res["right_mask_vs_no_mask_real_positions"] = (nomask - right)[real].abs().max().item()
    res["right_mask_vs_no_mask_pad_positions"] = (nomask - right)[~real].abs().max().item()
    return res


def padding_idx_check(model, ids, labels, mask, ref) -> str:
    """Gradient of the embedding row pad_token_id vs the same run without padding_idx."""
    cfg = model.config
    pad = cfg.pad_token_id
    emb = model.model.embed_tokens
    assert emb.padding_idx == pad
    m2 = copy.deepcopy(model)
    m2.model.embed_tokens.padding_idx = None
    m2.zero_grad(set_to_none=True)
    out = m2(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True, use_cache=False)
    out.loss.backward()
    g_no = m2.model.embed_tokens.weight.grad
    g = ref["grad.model.embed_tokens.weight"]
    others = torch.ones(cfg.vocab_size, dtype=torch.bool)
    others[pad] = False
    assert torch.equal(g[others], g_no[others]), "padding_idx changed rows other than pad_token_id"
    assert (ids == pad).any()
    if cfg.tie_word_embeddings:
        # tied: the row keeps only the lm_head contribution  (dL/dW_out)[pad]
        hf = ref["hidden_states.%d" % cfg.num_hidden_layers]
        logits = (hf @ model.lm_head.weight.detach().T).requires_grad_(True)
        lm_l = lm_loss(logits, labels)  # the total loss reaches lm_head only through the logits
        (gl,) = torch.autograd.grad(lm_l, logits)
        head_part = (gl.reshape(-1, cfg.vocab_size).T @ hf.reshape(-1, cfg.hidden_size))[pad]
        e = (g[pad] - head_part).abs().max().item()
        assert e < 1e-6 * head_part.abs().max().item() + 1e-9, e
        diff = (g_no[pad] - g[pad]).abs().max().item()
        assert diff > 0
        return (f"tied: grad row {pad} (pad_token_id) = lm_head contribution only (matches dL/dlogits^T h to "
                f"{e:.1e}); the embedding-lookup contribution (max |.| {diff:.3e} here) is dropped")
    assert torch.count_nonzero(g[pad]) == 0 and torch.count_nonzero(g_no[pad]) > 0
    return (f"untied: grad row {pad} (pad_token_id) is exactly zero although the token occurs "
            f"{int((ids == pad).sum())} times in input_ids (without padding_idx its max |.| would be "
            f"{g_no[pad].abs().max().item():.3e})")


@torch.no_grad()
def generation(model, spec) -> tuple[dict, dict]:
    """Greedy generation with and without the cache and by a hand-written loop."""
    cfg = model.config
    g = spec["gen"]
    torch.manual_seed(spec["seed"] + 2000)
    avoid = {cfg.pad_token_id, cfg.eos_token_id}
    allowed = torch.tensor([t for t in range(cfg.vocab_size) if t not in avoid])
    for attempt in range(100):
        prompt = allowed[torch.randint(0, len(allowed), (g["batch"], g["prompt_len"]))]
        T = g["max_new_tokens"]
        kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=T, do_sample=False,
                  return_dict_in_generate=True, output_logits=True, pad_token_id=cfg.pad_token_id,
                  eos_token_id=cfg.eos_token_id)
        cached = model.generate(prompt, use_cache=True, **kw)
        uncached = model.generate(prompt, use_cache=False, **kw)
        # hand-written greedy loop over full forwards (no cache object at all)
        seq = prompt.clone()
        loop_logits = []
        for _ in range(T):
            lg = model(input_ids=seq, use_cache=False).logits[:, -1]
            loop_logits.append(lg)
            seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], dim=1)
        loop_logits = torch.stack(loop_logits, 1)
        step_logits = torch.stack(cached.logits, 1)
        top2 = torch.topk(loop_logits.double(), 2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).min().item()
        new = seq[:, prompt.shape[1] :]
        if (new == cfg.eos_token_id).any() or margin < MIN_ARGMAX_MARGIN:
            continue  # draw another prompt (deterministic)
        break
    else:
        raise AssertionError("no usable prompt")
    assert torch.equal(cached.sequences, seq) and torch.equal(uncached.sequences, seq)
    t = {
        "prompt_ids": prompt.contiguous(),
        "sequences": seq.contiguous(),
        "step_logits": step_logits.float().contiguous(),
        "step_logits_uncached": loop_logits.float().contiguous(),
    }
    info = {
        "prompt_attempt": attempt,
        "cached_vs_uncached_sequences": "identical (generate use_cache=True, use_cache=False, hand loop)",
        "max_abs_step_logits_cached_vs_full_forward": float(f"{(step_logits - loop_logits).abs().max().item():.3e}"),
        "min_top1_top2_logit_gap": float(f"{margin:.4e}"),
        "uncached_generate_vs_loop_logits": float(
            f"{(torch.stack(uncached.logits, 1) - loop_logits).abs().max().item():.3e}"),
    }
    return t, info


# ---------------------------------------------------------------------------
def versions() -> dict:
    return {
        "torch_origin": torch_origin(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
    }


def base_metadata(spec, generator: str, doc: str) -> dict:
    """Metadata keys every reference*.safetensors of the Jamba and Mamba-2 generators has."""
    return {
        **versions(),
        "generator": generator,
        "doc": doc,
        "seed": str(spec["seed"]),
        "model": spec["name"],
        "device": "cpu",
        "compute_dtype": "float32",
        "weights_saved_dtype": "float32",
        "batch": str(spec["batch"]),
        "seq_len": str(spec["seq_len"]),
        "padding": "right (attention_mask stored)" if spec["lengths"] else "none (attention_mask=None)",
    }


def metadata(spec, cfg, extra=None) -> dict:
    md = {
        **base_metadata(spec, GENERATOR, DOC),
        "layers_block_type": json.dumps(cfg.layers_block_type),
        "moe_layers": json.dumps(moe_layers(cfg)),
        "router_aux_loss_coef": repr(cfg.router_aux_loss_coef),
        "num_experts": str(cfg.num_experts),
        "num_experts_per_tok": str(cfg.num_experts_per_tok),
        "attn_implementation": "eager",
        "hf_path": "JambaForCausalLM, eager attention, JambaMambaMixer.slow_forward (use_mamba_kernels=False), "
        "model.eval(), use_cache=False, output_hidden_states=True, output_router_logits=True",
        "hidden_states_note": HIDDEN_STATES_NOTE,
        "loss_note": LOSS_NOTE,
        "router_note": "router_logits.{i}: (B*L, num_experts), row b*L+t, layer i (absolute index); "
        "router_weights.{i} / router_selected.{i}: top-k of softmax(router_logits) (descending), "
        "the un-renormalised expert weights and expert indices",
    }
    if extra:
        md.update(extra)
    return md


def build_one(spec: dict, out_root: str) -> list[str]:
    name = spec["name"]
    out_dir = os.path.join(out_root, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    log = [f"== {name}"]

    torch.manual_seed(spec["seed"])
    cfg = make_config(spec)
    model = JambaForCausalLM(cfg)
    perturb(model, cfg)
    model.eval()
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    save_kw = dict(safe_serialization=True)
    if spec["max_shard_size"]:
        save_kw["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(out_dir, **save_kw)

    torch.manual_seed(spec["seed"] + 1000)
    ids, labels, mask = make_inputs(cfg, spec["batch"], spec["seq_len"], spec["lengths"])
    n_targets = int((labels[:, 1:] != -100).sum())
    n_aux = int(mask.sum()) if mask is not None else ids.numel()

    ref, out = hf_reference(model, ids, labels, mask)
    margin32 = topk_margin(out.router_logits, cfg.num_experts_per_tok)
    assert margin32 > MIN_TOPK_MARGIN, margin32
    check_patch_is_noop(model, ids, labels, mask, ref)

    r64, margin64 = hf_reference_f64(model, ids, labels, mask)
    assert margin64 > MIN_TOPK_MARGIN
    for i in moe_layers(cfg):
        assert torch.equal(ref[f"router_selected.{i}"], r64[f"router_selected.{i}"]), "f32/f64 routing differs"
    e_ind = independent_check(model, ids, labels, mask, r64)
    assert max(e_ind.values()) < 1e-12, e_ind
    e32 = {k: rel_err(ref[k], r64[k]) for k in ["logits", "loss", "aux_loss", "total_loss"]}
    e32["grad"] = max(rel_err(ref[k], r64[k]) for k in ref if k.startswith("grad."))
    assert e32["logits"] < 1e-5 and e32["total_loss"] < 1e-6 and e32["grad"] < 1e-4, e32
    assert set(k for k in ref) == set(k for k in r64)

    pad_note = padding_idx_check(model, ids, labels, mask, ref)
    extra = {
        "n_loss_targets": str(n_targets),
        "n_aux_tokens": str(n_aux),
        "min_topk_margin": f"{margin32:.4e}",
        "padding_idx_note": pad_note,
    }
    if mask is not None:
        pc = padding_check(model, ids, mask)
        assert pc["right"] < 1e-4 and pc["left"] > 1e-2 and pc["right_mask_vs_no_mask_real_positions"] < 1e-5, pc
        assert pc["right_mask_vs_no_mask_pad_positions"] > 1e-3, pc
        extra["padding_check"] = json.dumps({k: float(f"{v:.3e}") for k, v in pc.items()}, sort_keys=True)
        log.append("padding check (max |logits diff| vs row alone): " + extra["padding_check"])

    md = metadata(spec, cfg, extra)
    save_deterministic(ref, os.path.join(out_dir, "reference.safetensors"), metadata=md)
    md64 = dict(md)
    md64["compute_dtype"] = "float64"
    md64["hf_path"] = (
        "copy.deepcopy(model).double() of the same float32 weights, run through transformers' JambaModel with "
        "make_jamba_fixtures.float64_clean (transformers' float32 casts in JambaRMSNorm, eager attention softmax, "
        "JambaMambaMixer.slow_forward and the MoE routing softmax replaced by the same math in float64); "
        "lm_head, LM loss and load-balancing loss computed in float64 by forward_parts; cross-checked against "
        "the independent implementation f64_jamba"
    )
    md64["min_topk_margin"] = f"{margin64:.4e}"
    md64["max_rel_err_vs_independent_f64"] = json.dumps({k: float(f"{v:.3e}") for k, v in e_ind.items()}, sort_keys=True)
    md64["max_rel_err_fp32_reference_vs_this"] = json.dumps({k: float(f"{v:.3e}") for k, v in e32.items()}, sort_keys=True)
    save_deterministic(r64, os.path.join(out_dir, "reference_f64.safetensors"), metadata=md64)
    log.append(
        f"loss {ref['loss'].item():.6f} aux {ref['aux_loss'].item():.6f} total {ref['total_loss'].item():.6f} "
        f"(ln V = {math.log(cfg.vocab_size):.4f}); min top-k margin {margin32:.3e}"
    )
    log.append("fp32 vs f64 rel: " + json.dumps({k: float(f"{v:.2e}") for k, v in e32.items()}))
    log.append("f64 vs independent f64 rel: " + json.dumps({k: float(f"{v:.1e}") for k, v in e_ind.items()}))
    log.append(pad_note)

    gen_t, gen_info = generation(model, spec)
    gmd = {
        **versions(),
        "generator": GENERATOR,
        "doc": DOC,
        "model": name,
        "method": "model.generate(prompt_ids, attention_mask=ones, do_sample=False, max_new_tokens=%d, "
        "use_cache=True, output_logits=True, return_dict_in_generate=True), float32" % spec["gen"]["max_new_tokens"],
        "cache": "HybridMambaAttentionDynamicCache (use_cache=True): works with torch 1.13",
        "eos_token_id": str(cfg.eos_token_id),
        "eos_in_output": "no (prompts are redrawn until no eos is generated, so stopping rules do not matter)",
        "check": json.dumps(gen_info, sort_keys=True),
    }
    save_deterministic(gen_t, os.path.join(out_dir, "generation.safetensors"), metadata=gmd)
    log.append("generation: " + " ".join(map(str, gen_t["sequences"].tolist())) + " " + json.dumps(gen_info))

    # reload the checkpoint the way a user would
    re = JambaForCausalLM.from_pretrained(out_dir)
    assert re.config._attn_implementation == "eager"
    log.append(reload_check(re, out_dir, ids, mask, ref))

    return log + files_log(out_dir, model, ref)


def reload_check(re, out_dir: str, ids, mask, ref: dict) -> str:
    """`re` = the saved model reloaded by from_pretrained: its logits must equal the stored ones
    exactly, and reference.safetensors must read back unchanged. Returns the log line."""
    re.eval()
    with torch.no_grad():
        lg = re(input_ids=ids, attention_mask=mask, use_cache=False).logits
    diff = (lg - ref["logits"]).abs().max().item()
    assert diff == 0.0, diff
    back = load_file(os.path.join(out_dir, "reference.safetensors"))
    assert all(torch.equal(back[k], ref[k]) for k in ref)
    return f"reload via from_pretrained: max |logits diff| = {diff:.1e}"


def deterministic_torch() -> None:
    """The settings every fixture generator runs under: deterministic kernels, one thread,
    float32 default, transformers quiet."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def run_generator(doc: str, models: list, build_one, check_module: str, argv=None) -> int:
    """Command line shared by the fixture generators (--out, --only): deterministic torch settings,
    build_one(spec, out) for every selected spec of `models`, then `check_module`.main on --out."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output root, normally tests/fixtures")
    ap.add_argument("--only", action="append", help="build only this model (repeatable)")
    args = ap.parse_args(argv)
    deterministic_torch()
    os.makedirs(args.out, exist_ok=True)
    print(" ".join(f"{k} {v}" for k, v in versions().items()))
    names = [m["name"] for m in models]
    for n in args.only or []:
        if n not in names:
            ap.error(f"unknown model {n}; known: {names}")
    for spec in models:
        if args.only and spec["name"] not in args.only:
            continue
        for line in build_one(spec, args.out):
            print(line)

    return importlib.import_module(check_module).main(["--root", args.out])


def files_log(out_dir: str, model, ref: dict) -> list[str]:
    """Log lines: the files written (with sizes), parameter and gradient counts."""
    files = sorted(os.listdir(out_dir))
    n_params = sum(p.numel() for p in model.parameters())
    return [
        "files: " + ", ".join(f"{f} ({os.path.getsize(os.path.join(out_dir, f))} B)" for f in files),
        f"{n_params} parameters, {len([k for k in ref if k.startswith('grad.')])} gradients",
    ]


def main(argv=None):
    return run_generator(__doc__, MODELS, build_one, "check_jamba_fixtures", argv)


if __name__ == "__main__":
    sys.exit(main())
