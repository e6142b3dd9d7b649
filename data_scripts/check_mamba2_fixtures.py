#!/usr/bin/env python3
"""Self-check of the Mamba-2 fixtures (make_mamba2_fixtures.py). numpy only.

For every tests/fixtures/<dir>/ whose config.json says model_type "mamba2" it checks
  * the checkpoint (single file or shards + index) is complete, its tensor names / shapes follow
    config.json and are F32; tied models store no lm_head.weight;
  * reference.safetensors (F32) and reference_f64.safetensors (F64): keys, shapes, dtypes, finite;
    inputs (labels = input_ids or -100; right padding with pad_token_id and -100 where masked);
  * `np_mamba2`, a numpy re-implementation of the forward (sequential recurrence, float64, the
    math of MAMBA2_FIXTURE.md, semantics "tf4.44.2" or "tf5.25.0" from the metadata), computed
    from model weights and input_ids alone, reproduces the stored logits (f64 file: rel 1e-10;
    float32 file: rel 1e-5), every hidden state, and for the padded fixture also
    logits_tf4442_no_cache (4.44.2 without the cache: the mask multiplies only the mixer input);
  * the loss recomputed from the logits; inputs_embeds = embedding rows;
    hidden_states.{n} = norm_f(hidden_states.{n-1}); one grad.* per parameter, not all zero;
    float32 vs float64 agree;
  * generation.safetensors: sequences = prompt + argmax of the step logits (cached and
    uncached), no eos; the prefill cache: conv_states = the last conv_kernel conv inputs,
    ssm_states = the final recurrent state (both from np_mamba2);
  * all Mamba-2 fixture directories together < 1 MB.

Usage: python3 data_scripts/check_mamba2_fixtures.py [--root tests/fixtures]
Exit code 0 when everything passes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_fixtures import np_loss, read_safetensors  # noqa: E402
from check_jamba_fixtures import check_generation as check_jamba_generation  # noqa: E402
from check_jamba_fixtures import load_checkpoint, model_dirs, rms, run_checks  # noqa: E402

REQUIRED_METADATA = [
    "torch_version", "torch_origin", "transformers_version", "safetensors_version", "numpy_version",
    "python_version", "seed", "generator", "semantics", "hidden_states_note", "loss_note",
    "n_loss_targets", "padding", "dt_clamp",
]  # fmt: skip
SIZE_LIMIT = 1_000_000
TF4, TF5 = "tf4.44.2", "tf5.25.0"


def reject_constant(name: str):
    """json parse_constant hook: Infinity / NaN are not JSON (transformers writes an infinite
    time_step_limit as a bare Infinity); ssmtune's reader rejects them, so must the fixtures."""
    raise ValueError(f"not strict JSON: {name}")


def dims(cfg: dict):
    I = int(cfg["expand"] * cfg["hidden_size"])
    H, P, G, N = cfg["num_heads"], cfg["head_dim"], cfg["n_groups"], cfg["state_size"]
    assert H * P == I and H % G == 0, "num_heads * head_dim must equal expand * hidden_size"
    return I, H, P, G, N


def expected_params(cfg: dict) -> dict:
    D, V, K = cfg["hidden_size"], cfg["vocab_size"], cfg["conv_kernel"]
    I, H, _, G, N = dims(cfg)
    C = I + 2 * G * N  # conv channels: x | B | C
    p = {"backbone.embeddings.weight": [V, D], "backbone.norm_f.weight": [D]}
    for i in range(cfg["num_hidden_layers"]):
        m = f"backbone.layers.{i}.mixer."
        p[f"backbone.layers.{i}.norm.weight"] = [D]
        p[m + "in_proj.weight"] = [I + C + H, D]  # z | x B C | dt
        p[m + "conv1d.weight"] = [C, 1, K]
        p[m + "dt_bias"] = [H]
        p[m + "A_log"] = [H]
        p[m + "D"] = [H]
        p[m + "norm.weight"] = [I]
        p[m + "out_proj.weight"] = [D, I]
        if cfg["use_conv_bias"]:
            p[m + "conv1d.bias"] = [C]
        if cfg["use_bias"]:
            p[m + "in_proj.bias"] = [I + C + H]
            p[m + "out_proj.bias"] = [D]
    if not cfg.get("tie_word_embeddings", False):
        p["lm_head.weight"] = [V, D]
    return p


def silu(x):
    return x / (1.0 + np.exp(-x))


def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def np_mamba2(W: dict, cfg: dict, ids, mask, kind: str, mask_conv: bool, probe=None):
    """Mamba2ForCausalLM forward in float64 (MAMBA2_FIXTURE.md). Returns (logits, hidden)."""
    W = {k: v.astype(np.float64) for k, v in W.items()}
    eps, K = cfg["layer_norm_epsilon"], cfg["conv_kernel"]
    I, H, P, G, N = dims(cfg)
    Bt, L = ids.shape
    grp = np.array([h % G if kind == TF4 else h // (H // G) for h in range(H)])
    lo, hi = (cfg["time_step_min"], np.inf) if kind == TF4 else tuple(cfg["time_step_limit"])
    m = mask.astype(np.float64)[..., None] if mask is not None and Bt > 1 and L > 1 else None

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    h = W["backbone.embeddings.weight"][ids]
    hidden = []
    for i in range(cfg["num_hidden_layers"]):
        pre = f"backbone.layers.{i}.mixer."
        x = rms(h, W[f"backbone.layers.{i}.norm.weight"], eps)
        if m is not None:
            x = x * m  # mask the mixer input (every version)
        zxbcdt = lin(x, pre + "in_proj")
        z, xBC, dt = (
            zxbcdt[..., :I],
            zxbcdt[..., I : 2 * I + 2 * G * N],
            zxbcdt[..., 2 * I + 2 * G * N :],
        )
        if probe is not None:
            probe.setdefault("conv_in", []).append(xBC)
        w = W[pre + "conv1d.weight"][:, 0, :]  # (C, K): causal depthwise conv
        xp = np.concatenate([np.zeros((Bt, K - 1, xBC.shape[-1])), xBC], 1)
        c = sum(xp[:, j : j + L] * w[:, j] for j in range(K))
        if pre + "conv1d.bias" in W:
            c = c + W[pre + "conv1d.bias"]
        xBC = silu(c)
        if m is not None and mask_conv:
            xBC = xBC * m
        xs = xBC[..., :I].reshape(Bt, L, H, P)
        Bh = xBC[..., I : I + G * N].reshape(Bt, L, G, N)[:, :, grp]  # (B, L, H, N)
        Ch = xBC[..., I + G * N :].reshape(Bt, L, G, N)[:, :, grp]
        dt = np.clip(softplus(dt + W[pre + "dt_bias"]), lo, hi)  # (B, L, H)
        A = -np.exp(W[pre + "A_log"])  # (H,)
        s = np.zeros((Bt, H, P, N))
        y = np.zeros((Bt, L, H, P))
        for t in range(L):
            d = dt[:, t, :, None, None]
            s = np.exp(d * A[:, None, None]) * s + d * xs[:, t, :, :, None] * Bh[:, t, :, None, :]
            y[:, t] = (s * Ch[:, t, :, None, :]).sum(-1) + W[pre + "D"][:, None] * xs[:, t]
        if probe is not None:
            probe.setdefault("ssm", []).append(s)
        g = y.reshape(Bt, L, I) * silu(z)  # gate first, then normalise
        gs = I if kind == TF4 else I // G  # full width (4.44.2) or per group (5.25.0, mamba_ssm)
        gg = g.reshape(Bt, L, I // gs, gs)
        gg = gg / np.sqrt((gg * gg).mean(-1, keepdims=True) + eps)
        h = h + lin(W[pre + "norm.weight"] * gg.reshape(Bt, L, I), pre + "out_proj")
        hidden.append(h)
    hf = rms(h, W["backbone.norm_f.weight"], eps)
    hidden.append(hf)
    Wo = W["lm_head.weight"] if "lm_head.weight" in W else W["backbone.embeddings.weight"]
    return hf @ Wo.T, hidden


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def check_reference(path, cfg, W, want, dtype, errs, tag):
    _, meta, t = read_safetensors(path)
    n = cfg["num_hidden_layers"]
    ids = t.get("input_ids")
    if ids is None or ids.dtype != np.int64:
        errs.append(f"{tag}: input_ids missing or not I64")
        return meta, t
    B, L = ids.shape
    V, D = cfg["vocab_size"], cfg["hidden_size"]
    mask = t.get("attention_mask")
    keys = {"input_ids", "labels", "inputs_embeds", "logits", "loss"}
    keys |= {f"hidden_states.{i}" for i in range(n + 1)} | {f"grad.{k}" for k in want}
    if mask is not None:
        keys |= {"attention_mask", "logits_tf4442_no_cache"}
    if set(t) != keys:
        errs.append(f"{tag}: keys extra {sorted(set(t) - keys)} missing {sorted(keys - set(t))}")
        return meta, t
    shapes = {"labels": (B, L), "inputs_embeds": (B, L, D), "logits": (B, L, V), "loss": (1,)}
    shapes.update({f"hidden_states.{i}": (B, L, D) for i in range(n + 1)})
    shapes.update({f"grad.{k}": tuple(s) for k, s in want.items()})
    if mask is not None:
        shapes.update({"attention_mask": (B, L), "logits_tf4442_no_cache": (B, L, V)})
    for k, s in shapes.items():
        if t[k].shape != s:
            errs.append(f"{tag}: {k} shape {t[k].shape} != {s}")
        elif t[k].dtype.kind == "f" and (t[k].dtype != dtype or not np.isfinite(t[k]).all()):
            errs.append(f"{tag}: {k} dtype {t[k].dtype} or not finite")
    for k in REQUIRED_METADATA:
        if not meta.get(k):
            errs.append(f"{tag}: metadata lacks {k}")
    if errs:
        return meta, t
    lab = t["labels"]
    if not np.all((lab == ids) | (lab == -100)):
        errs.append(f"{tag}: labels must equal input_ids or -100")
    if mask is not None:
        n_real = mask.sum(1)
        ok = all(np.array_equal(mask[b], np.arange(L) < n_real[b]) for b in range(B))
        pad = mask == 0
        if not ok or not np.all(ids[pad] == cfg["pad_token_id"]) or not np.all(lab[pad] == -100):
            errs.append(f"{tag}: right padding expected (mask 1..1 0..0, pad id and -100 at pads)")
    loss, n_t = np_loss(t["logits"], lab)
    if abs(loss - float(t["loss"][0])) > (1e-12 if dtype == np.float64 else 2e-6) * abs(loss):
        errs.append(f"{tag}: loss {float(t['loss'][0])} != recomputed {loss}")
    if str(n_t) != meta["n_loss_targets"]:
        errs.append(f"{tag}: n_loss_targets {meta['n_loss_targets']} != {n_t}")
    if not np.array_equal(t["inputs_embeds"], W["backbone.embeddings.weight"][ids].astype(dtype)):
        errs.append(f"{tag}: inputs_embeds are not the embedding rows")
    tol = 1e-10 if dtype == np.float64 else 1e-5
    hn = rms(t[f"hidden_states.{n - 1}"], W["backbone.norm_f.weight"], cfg["layer_norm_epsilon"])
    if rel(hn, t[f"hidden_states.{n}"]) > tol:
        errs.append(f"{tag}: hidden_states.{n} != norm_f(hidden_states.{n - 1})")
    kind = meta["semantics"]
    logits, hidden = np_mamba2(W, cfg, ids, mask, kind, mask_conv=(kind == TF5))
    e = {"logits": rel(logits, t["logits"])}
    e["hidden_states"] = max(rel(h, t[f"hidden_states.{i}"]) for i, h in enumerate(hidden))
    if mask is not None:
        lg4, _ = np_mamba2(W, cfg, ids, mask, TF4, mask_conv=False)
        e["logits_tf4442_no_cache"] = rel(lg4, t["logits_tf4442_no_cache"])
    for k, v in e.items():
        if v > tol:
            errs.append(f"{tag}: np_mamba2 ({kind}) vs stored {k}: rel {v:.2e} > {tol}")
    for k in want:
        if not np.any(t[f"grad.{k}"]):
            errs.append(f"{tag}: grad.{k} is all zero")
    return meta, t


def check_generation(d, cfg, W, kind, errs):
    if not os.path.exists(os.path.join(d, "generation.safetensors")):
        return
    n = cfg["num_hidden_layers"]
    extra = [f"prefill_{s}_states.{i}" for s in ("conv", "ssm") for i in range(n)]
    g = check_jamba_generation(d, cfg, errs, extra)
    if g is None:
        return
    Pi = g["prompt_ids"]
    probe = {}
    np_mamba2(W, cfg, Pi, None, kind, mask_conv=False, probe=probe)
    K = cfg["conv_kernel"]
    for i in range(n):
        xin = probe["conv_in"][i].transpose(0, 2, 1)  # (B, C, L)
        xin = np.concatenate([np.zeros(xin.shape[:2] + (max(K - xin.shape[2], 0),)), xin], 2)
        if rel(xin[..., -K:], g[f"prefill_conv_states.{i}"]) > 1e-5:
            errs.append(f"generation: prefill_conv_states.{i} are not the last {K} conv inputs")
        if rel(probe["ssm"][i], g[f"prefill_ssm_states.{i}"]) > 1e-5:
            errs.append(f"generation: prefill_ssm_states.{i} is not the final state")


def check_model(d: str) -> list[str]:
    errs = []
    with open(os.path.join(d, "config.json")) as f:
        try:
            cfg = json.load(f, parse_constant=reject_constant)
        except ValueError as e:
            return [f"config.json: {e}"]
    want = expected_params(cfg)
    if cfg.get("torch_dtype") != "float32" or cfg.get("architectures") != ["Mamba2ForCausalLM"]:
        errs.append("config.json: torch_dtype float32 and architectures Mamba2ForCausalLM expected")
    W = load_checkpoint(d, errs)
    if set(W) != set(want):
        errs.append(
            f"checkpoint names: extra {sorted(set(W) - set(want))}, "
            f"missing {sorted(set(want) - set(W))}"
        )
        return errs
    for k, s in want.items():
        if list(W[k].shape) != s:
            errs.append(f"{k}: shape {list(W[k].shape)} != {s}")
    if errs:
        return errs
    meta, ref = check_reference(
        os.path.join(d, "reference.safetensors"), cfg, W, want, np.float32, errs, "f32"
    )
    meta64, ref64 = check_reference(
        os.path.join(d, "reference_f64.safetensors"), cfg, W, want, np.float64, errs, "f64"
    )
    if errs:
        return errs
    if meta["semantics"] != meta64["semantics"]:
        errs.append("f32 and f64 references have different semantics")
    for k in ["input_ids", "labels", "attention_mask"]:
        if (k in ref) != (k in ref64) or (k in ref and not np.array_equal(ref[k], ref64[k])):
            errs.append(f"f32 and f64 references differ in {k}")
    for k in ref:
        if ref[k].dtype.kind != "f":
            continue
        lim = 1e-4 if k.startswith("grad.") else 1e-5
        sc = np.abs(ref64[k]).max()
        if np.abs(ref[k] - ref64[k]).max() > lim * sc:
            errs.append(f"{k}: f32 vs f64 rel diff {np.abs(ref[k] - ref64[k]).max() / sc:.2e}")
    check_generation(d, cfg, W, meta["semantics"], errs)
    print(
        f"{os.path.basename(d)}: {'ok' if not errs else 'FAILED'} ({meta['semantics']}, loss "
        f"{float(ref['loss'][0]):.6f}, {'padded' if 'attention_mask' in ref else 'unpadded'} batch "
        f"{ref['input_ids'].shape}, {len([k for k in ref if k.startswith('grad.')])} grads)"
    )
    return errs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", default=os.path.join(HERE, "..", "tests", "fixtures"))
    args = ap.parse_args(argv)
    dirs = model_dirs(args.root, "mamba2")
    if not dirs:
        print(f"no Mamba-2 fixtures under {args.root}")
        return 1
    return run_checks(dirs, check_model, SIZE_LIMIT, "Mamba-2 model")


if __name__ == "__main__":
    sys.exit(main())
