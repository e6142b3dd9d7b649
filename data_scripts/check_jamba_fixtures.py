#!/usr/bin/env python3
"""Self-check of the Jamba fixtures (make_jamba_fixtures.py, make_jamba_peft_fixture.py). numpy only.

For every tests/fixtures/<dir>/ whose config.json says model_type "jamba" it checks
  * the checkpoint (single file or shards + index) is complete, its tensor names / shapes follow
    config.json (layer kinds from attn_/expert_layer_period/offset) and are F32;
  * reference.safetensors (F32) and reference_f64.safetensors (F64) hold exactly the documented
    keys with the right shapes and dtypes, all finite;
  * inputs: labels = input_ids or -100, right padding (mask 1...1 0...0, pad_token_id and -100
    at padded positions), pad_token_id also occurs as an ordinary token;
  * recomputed in float64 with numpy: the LM loss from the logits, the load-balancing loss from
    the router logits (+ attention_mask), total = loss + coef * aux, router_weights /
    router_selected from the router logits, hidden_states.0 = embedding rows,
    hidden_states.{n} = final_layernorm(last_layer_output), logits = hidden_states.{n} @ W^T;
  * one grad.* per checkpoint tensor (= per parameter; tied models store no lm_head.weight),
    not all zero; the untied embedding gradient's pad_token_id row is zero (padding_idx);
    float32 vs float64 agree;
  * generation.safetensors: prompt is the start of sequences, every new token is the argmax of
    its step logits (cached and uncached), no eos;
  * peft-lora-jamba (when present): adapter files, reference keys / shapes / dtypes, finite,
    losses from the stored logits;
  * all Jamba fixture directories together < 1.5 MB.

Usage: python3 data_scripts/check_jamba_fixtures.py [--root tests/fixtures]
Exit code 0 when everything passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_fixtures import np_loss, read_safetensors  # noqa: E402

REQUIRED_METADATA = [
    "torch_version", "torch_origin", "transformers_version", "safetensors_version", "numpy_version",
    "python_version", "seed", "generator", "hidden_states_note", "loss_note", "router_aux_loss_coef",
    "n_loss_targets", "n_aux_tokens", "padding", "padding_idx_note", "min_topk_margin",
]  # fmt: skip
PEFT_DIR = "peft-lora-jamba"
SIZE_LIMIT = 1_500_000


def layer_kinds(cfg: dict):
    n = cfg["num_hidden_layers"]
    attn = [i % cfg["attn_layer_period"] == cfg["attn_layer_offset"] for i in range(n)]
    moe = [i % cfg["expert_layer_period"] == cfg["expert_layer_offset"] and cfg["num_experts"] > 1 for i in range(n)]
    return attn, moe


def expected_params(cfg: dict) -> dict:
    D, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    E, N, K, R = cfg["mamba_expand"] * D, cfg["mamba_d_state"], cfg["mamba_d_conv"], cfg["mamba_dt_rank"]
    H, KV, X = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_experts"]
    hd = D // H
    attn, moe = layer_kinds(cfg)
    p = {"model.embed_tokens.weight": [V, D], "model.final_layernorm.weight": [D]}
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        p[pre + "input_layernorm.weight"] = [D]
        p[pre + "pre_ff_layernorm.weight"] = [D]
        if attn[i]:
            p[pre + "self_attn.q_proj.weight"] = [H * hd, D]
            p[pre + "self_attn.k_proj.weight"] = [KV * hd, D]
            p[pre + "self_attn.v_proj.weight"] = [KV * hd, D]
            p[pre + "self_attn.o_proj.weight"] = [D, H * hd]
        else:
            m = pre + "mamba."
            p[m + "in_proj.weight"] = [2 * E, D]
            p[m + "conv1d.weight"] = [E, 1, K]
            p[m + "x_proj.weight"] = [R + 2 * N, E]
            p[m + "dt_proj.weight"] = [E, R]
            p[m + "dt_proj.bias"] = [E]
            p[m + "A_log"] = [E, N]
            p[m + "D"] = [E]
            p[m + "out_proj.weight"] = [D, E]
            p[m + "dt_layernorm.weight"] = [R]
            p[m + "b_layernorm.weight"] = [N]
            p[m + "c_layernorm.weight"] = [N]
            if cfg["mamba_conv_bias"]:
                p[m + "conv1d.bias"] = [E]
            if cfg["mamba_proj_bias"]:
                p[m + "in_proj.bias"] = [2 * E]
                p[m + "out_proj.bias"] = [D]
        ff = pre + "feed_forward."
        mlps = [f"{ff}experts.{j}." for j in range(X)] if moe[i] else [ff]
        if moe[i]:
            p[ff + "router.weight"] = [X, D]
        for m in mlps:
            p[m + "gate_proj.weight"] = [I, D]
            p[m + "up_proj.weight"] = [I, D]
            p[m + "down_proj.weight"] = [D, I]
    if cfg.get("tie_word_embeddings", False) is False:
        p["lm_head.weight"] = [V, D]
    return p


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def topk(p, k):
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(p, idx, -1), idx


def np_aux(router_logits: list, X: int, k: int, mask) -> float:
    z = np.concatenate([r.astype(np.float64) for r in router_logits], 0)
    p = softmax(z)
    _, sel = topk(p, k)
    onehot = np.zeros((len(z), k, X))
    for j in range(k):
        onehot[np.arange(len(z)), j, sel[:, j]] = 1.0
    m = np.ones(len(z)) if mask is None else np.tile(mask.reshape(-1).astype(np.float64), len(router_logits))
    f = (onehot * m[:, None, None]).sum(0) / m.sum()
    P = (p * m[:, None]).sum(0) / m.sum()
    return float(X * (f * P[None, :]).sum())


def rms(x, w, eps):
    x = x.astype(np.float64)
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def load_checkpoint(d: str, errs: list) -> dict:
    idx = os.path.join(d, "model.safetensors.index.json")
    out = {}
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        for sh in sorted(set(wm.values())):
            h, meta, t = read_safetensors(os.path.join(d, sh))
            if meta != {"format": "pt"}:
                errs.append(f"{sh}: metadata {meta}")
            for k, v in h.items():
                if wm.get(k) != sh:
                    errs.append(f"{k} is in {sh} but the index says {wm.get(k)}")
                if v["dtype"] != "F32":
                    errs.append(f"{k}: dtype {v['dtype']}")
            out.update(t)
        if set(wm) != set(out):
            errs.append("index weight_map and shard contents differ")
    else:
        h, _, out = read_safetensors(os.path.join(d, "model.safetensors"))
        for k, v in h.items():
            if v["dtype"] != "F32":
                errs.append(f"{k}: dtype {v['dtype']}")
    return out


def check_reference(path, cfg, W, want, dtype, errs, tag):
    n_errs = len(errs)
    _, meta, ref = read_safetensors(path)
    D, V, nl, X, k = (cfg[x] for x in ["hidden_size", "vocab_size", "num_hidden_layers", "num_experts",
                                       "num_experts_per_tok"])
    _, moe = layer_kinds(cfg)
    ids, labels = ref["input_ids"], ref["labels"]
    B, L = ids.shape
    mask = ref.get("attention_mask")
    keys = {"input_ids": (np.int64, (B, L)), "labels": (np.int64, (B, L)), "logits": (dtype, (B, L, V)),
            "loss": (dtype, (1,)), "aux_loss": (dtype, (1,)), "total_loss": (dtype, (1,)),
            "last_layer_output": (dtype, (B, L, D))}  # fmt: skip
    if mask is not None:
        keys["attention_mask"] = (np.int64, (B, L))
    for i in range(nl + 1):
        keys[f"hidden_states.{i}"] = (dtype, (B, L, D))
    for i in range(nl):
        if moe[i]:
            keys[f"router_logits.{i}"] = (dtype, (B * L, X))
            keys[f"router_weights.{i}"] = (dtype, (B * L, k))
            keys[f"router_selected.{i}"] = (np.int64, (B * L, k))
    for n, s in want.items():
        keys["grad." + n] = (dtype, tuple(s))
    if set(ref) != set(keys):
        errs.append(f"{tag}: keys differ: extra {sorted(set(ref) - set(keys))}, missing {sorted(set(keys) - set(ref))}")
        return meta, ref
    for n, (dt, s) in keys.items():
        if ref[n].dtype != dt or ref[n].shape != s:
            errs.append(f"{tag}: {n} is {ref[n].dtype} {ref[n].shape}, expected {np.dtype(dt)} {s}")
        elif ref[n].dtype.kind == "f" and not np.isfinite(ref[n]).all():
            errs.append(f"{tag}: {n} not finite")
    if len(errs) > n_errs:
        return meta, ref

    tol = 2e-6 if dtype == np.float32 else 1e-12
    # inputs
    pad = cfg["pad_token_id"]
    if not ((ids >= 0) & (ids < V)).all():
        errs.append(f"{tag}: input_ids out of range")
    if not np.array_equal(labels[labels != -100], ids[labels != -100]) or not (labels == -100).any():
        errs.append(f"{tag}: labels must equal input_ids except for some -100")
    if mask is not None:
        n = mask.sum(1)
        if not all(np.array_equal(mask[b], (np.arange(L) < n[b]).astype(np.int64)) for b in range(B)):
            errs.append(f"{tag}: attention_mask is not right padding")
        if not ((ids[mask == 0] == pad).all() and (labels[mask == 0] == -100).all()) or mask.all():
            errs.append(f"{tag}: padded positions must hold pad_token_id / -100 (and exist)")
        if not (ids[mask == 1] == pad).any():
            errs.append(f"{tag}: pad_token_id should also occur as an ordinary token")
    elif not (ids == pad).any():
        errs.append(f"{tag}: pad_token_id should occur in input_ids")

    # losses
    loss, nt = np_loss(ref["logits"], labels)
    if not math.isclose(loss, float(ref["loss"][0]), rel_tol=tol):
        errs.append(f"{tag}: numpy LM loss {loss!r} != stored {float(ref['loss'][0])!r}")
    if meta.get("n_loss_targets", str(nt)) != str(nt):
        errs.append(f"{tag}: n_loss_targets {meta.get('n_loss_targets')} != {nt}")
    routers = [ref[f"router_logits.{i}"] for i in range(nl) if moe[i]]
    aux = np_aux(routers, X, k, mask)
    if not math.isclose(aux, float(ref["aux_loss"][0]), rel_tol=1e-5 if dtype == np.float32 else 1e-12):
        errs.append(f"{tag}: numpy aux loss {aux!r} != stored {float(ref['aux_loss'][0])!r}")
    n_aux = int(mask.sum()) if mask is not None else B * L
    if meta.get("n_aux_tokens", str(n_aux)) != str(n_aux):
        errs.append(f"{tag}: n_aux_tokens {meta.get('n_aux_tokens')} != {n_aux}")
    coef = cfg["router_aux_loss_coef"]
    if meta.get("router_aux_loss_coef", repr(coef)) != repr(coef):
        errs.append(f"{tag}: metadata router_aux_loss_coef differs from config.json")
    tot = float(ref["loss"][0]) + coef * float(ref["aux_loss"][0])
    if not math.isclose(tot, float(ref["total_loss"][0]), rel_tol=tol):
        errs.append(f"{tag}: loss + coef * aux = {tot!r} != total_loss {float(ref['total_loss'][0])!r}")
    for i in range(nl):
        if moe[i]:
            w, sel = topk(softmax(ref[f"router_logits.{i}"].astype(np.float64)), k)
            if not np.array_equal(sel, ref[f"router_selected.{i}"]):
                errs.append(f"{tag}: router_selected.{i} is not the top-k of softmax(router_logits.{i})")
            if np.abs(w - ref[f"router_weights.{i}"]).max() > (1e-6 if dtype == np.float32 else 1e-14):
                errs.append(f"{tag}: router_weights.{i} != top-k softmax probabilities")

    # hidden states / logits from the weights
    emb = W["model.embed_tokens.weight"]
    if not np.array_equal(ref["hidden_states.0"], emb[ids].astype(dtype)):
        errs.append(f"{tag}: hidden_states.0 != embedding rows")
    hf = rms(ref["last_layer_output"], W["model.final_layernorm.weight"], cfg["rms_norm_eps"])
    sc = np.abs(ref[f"hidden_states.{nl}"]).max()
    if np.abs(hf - ref[f"hidden_states.{nl}"]).max() > (1e-6 if dtype == np.float32 else 1e-13) * sc:
        errs.append(f"{tag}: hidden_states.{nl} != final_layernorm(last_layer_output)")
    head = W.get("lm_head.weight", emb).astype(np.float64)
    lg = ref[f"hidden_states.{nl}"].astype(np.float64) @ head.T
    if np.abs(lg - ref["logits"]).max() > (1e-6 if dtype == np.float32 else 1e-13) * np.abs(lg).max():
        errs.append(f"{tag}: logits != hidden_states.{nl} @ W^T")

    # gradients
    for n in want:
        g = ref["grad." + n]
        if n == "model.embed_tokens.weight" and not cfg.get("tie_word_embeddings", False):
            if np.any(g[pad] != 0):
                errs.append(f"{tag}: untied embedding gradient row pad_token_id={pad} must be zero (padding_idx)")
            g = np.delete(g, pad, axis=0)
        if not np.any(g != 0):
            errs.append(f"{tag}: grad.{n} is all zero")
    for kname in REQUIRED_METADATA:
        if not meta.get(kname):
            errs.append(f"{tag}: metadata lacks {kname}")
    return meta, ref


def check_generation(d, cfg, errs, extra_keys=()):
    """generation.safetensors: keys (+ extra_keys), sequences = prompt + argmax of the cached and
    uncached step logits, no eos, metadata. Returns the tensors (None when the keys differ)."""
    _, meta, g = read_safetensors(os.path.join(d, "generation.safetensors"))
    want = {"prompt_ids", "sequences", "step_logits", "step_logits_uncached"} | set(extra_keys)
    if set(g) != want:
        errs.append(f"generation: keys {sorted(g)}")
        return None
    P, S = g["prompt_ids"], g["sequences"]
    B, T = S.shape[0], S.shape[1] - P.shape[1]
    V = cfg["vocab_size"]
    for k in ["step_logits", "step_logits_uncached"]:
        lg = g[k]
        if lg.shape != (B, T, V) or lg.dtype != np.float32 or not np.isfinite(lg).all():
            errs.append(f"generation: {k} {lg.shape} {lg.dtype}")
        elif not np.array_equal(lg.argmax(-1), S[:, P.shape[1]:]):
            errs.append(f"generation: sequences are not the argmax of {k}")
    if not np.array_equal(S[:, : P.shape[1]], P) or S.dtype != np.int64:
        errs.append("generation: sequences must start with prompt_ids (I64)")
    if (S[:, P.shape[1]:] == cfg["eos_token_id"]).any():
        errs.append("generation: eos in the generated tokens")
    if np.abs(g["step_logits"] - g["step_logits_uncached"]).max() > 1e-4:
        errs.append("generation: cached and uncached step logits differ")
    for k in ["cache", "method", "transformers_version", "check"]:
        if not meta.get(k):
            errs.append(f"generation: metadata lacks {k}")
    return g


def check_model(d: str) -> list[str]:
    errs = []
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    want = expected_params(cfg)
    ckpt_want = want
    if cfg.get("torch_dtype") != "float32" or cfg.get("use_mamba_kernels") is not False:
        errs.append("config.json: torch_dtype float32 and use_mamba_kernels false expected")
    W = load_checkpoint(d, errs)
    if set(W) != set(ckpt_want):
        errs.append(f"checkpoint names: extra {sorted(set(W) - set(ckpt_want))}, missing {sorted(set(ckpt_want) - set(W))}")
        return errs
    for k, s in ckpt_want.items():
        if list(W[k].shape) != s:
            errs.append(f"{k}: shape {list(W[k].shape)} != {s}")
    if errs:
        return errs
    meta, ref = check_reference(os.path.join(d, "reference.safetensors"), cfg, W, want, np.float32, errs, "f32")
    meta64, ref64 = check_reference(os.path.join(d, "reference_f64.safetensors"), cfg, W, want, np.float64, errs, "f64")
    if errs:
        return errs
    for k in ["input_ids", "labels", "attention_mask"] + [x for x in ref if x.startswith("router_selected.")]:
        if (k in ref) != (k in ref64) or (k in ref and not np.array_equal(ref[k], ref64[k])):
            errs.append(f"f32 and f64 references differ in {k}")
    for k in ref:
        if ref[k].dtype.kind != "f":
            continue
        lim = 1e-4 if k.startswith("grad.") else 1e-5
        sc = np.abs(ref64[k]).max()
        if np.abs(ref[k] - ref64[k]).max() > lim * sc:
            errs.append(f"{k}: f32 vs f64 rel diff {np.abs(ref[k] - ref64[k]).max() / sc:.2e}")
    check_generation(d, cfg, errs)
    print(f"{os.path.basename(d)}: {'ok' if not errs else 'FAILED'} (loss {float(ref['loss'][0]):.6f}, aux "
          f"{float(ref['aux_loss'][0]):.6f}, total {float(ref['total_loss'][0]):.6f}, "
          f"{'padded' if 'attention_mask' in ref else 'unpadded'} batch {ref['input_ids'].shape}, "
          f"{len([k for k in ref if k.startswith('grad.')])} grads)")
    return errs


def check_peft(d: str, root: str) -> list[str]:
    errs = []
    with open(os.path.join(d, "fixture.json")) as f:
        fx = json.load(f)
    base = os.path.normpath(os.path.join(d, fx["base_model"]))
    with open(os.path.join(base, "config.json")) as f:
        cfg = json.load(f)
    ad = os.path.join(d, "adapter_init")
    if sorted(os.listdir(ad)) != ["adapter_config.json", "adapter_model.safetensors"]:
        errs.append("adapter_init: files")
    with open(os.path.join(ad, "adapter_config.json")) as f:
        acfg = json.load(f)
    lora = fx["lora"]
    r = lora["r"]
    _, meta, init = read_safetensors(os.path.join(ad, "adapter_model.safetensors"))
    if meta != {"format": "pt"} or set(init) != set(lora["tensors"]):
        errs.append("adapter_model.safetensors: metadata or names")
        return errs
    if sorted(acfg["target_modules"]) != lora["target_modules"] or acfg["r"] != r:
        errs.append("adapter_config.json vs fixture.json")
    params = expected_params(cfg)
    for n in lora["tensors"]:
        mod = n[len("base_model.model."): -len(".lora_A.weight")]
        out_f, in_f = params[mod + ".weight"]
        s = (r, in_f) if ".lora_A." in n else (out_f, r)
        if init[n].shape != s or init[n].dtype != np.float32 or not np.all(init[n] != 0):
            errs.append(f"{n}: {init[n].shape} {init[n].dtype}")
    _, rmeta, ref = read_safetensors(os.path.join(d, "reference.safetensors"))
    for k, v in ref.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            errs.append(f"{k} not finite")
    _, _, bref = read_safetensors(os.path.join(base, "reference.safetensors"))
    if not (np.array_equal(ref["input_ids"], bref["input_ids"]) and np.array_equal(ref["labels"], bref["labels"])):
        errs.append("inputs differ from the base model's reference")
    for sfx, tol in [("", 2e-6), (".f64", 1e-12)]:
        loss, _ = np_loss(ref["logits" + sfx], ref["labels"])
        if not math.isclose(loss, float(ref["loss" + sfx][0]), rel_tol=tol):
            errs.append(f"loss{sfx} {float(ref['loss' + sfx][0])!r} != numpy {loss!r}")
        t = float(ref["loss" + sfx][0]) + cfg["router_aux_loss_coef"] * float(ref["aux_loss" + sfx][0])
        if not math.isclose(t, float(ref["total_loss" + sfx][0]), rel_tol=tol):
            errs.append(f"total_loss{sfx} != loss + coef * aux")
    K = fx["train"]["steps"]
    want = {"input_ids", "labels", "logits", "merged_logits", "logits.f64", "losses.f64", "loss_after_k.f64"}
    want |= {k + s for k in ["loss", "aux_loss", "total_loss"] for s in ["", ".f64"]}
    for n in lora["tensors"]:
        shapes = {"grad." + n: (np.float32, init[n].shape), "grad." + n + ".f64": (np.float64, init[n].shape),
                  "after_k." + n: (np.float64, init[n].shape),
                  "after_steps." + n: (np.float32, (K - 1,) + init[n].shape)}  # fmt: skip
        for key, (dt, s) in shapes.items():
            want.add(key)
            if key not in ref or ref[key].shape != s or ref[key].dtype != dt:
                errs.append(f"{key} missing or wrong shape / dtype")
    if set(ref) != want:
        errs.append(f"reference keys: extra {sorted(set(ref) - want)}, missing {sorted(want - set(ref))}")
    if ref["losses.f64"].shape != (K,) or not ref["losses.f64"][-1] < ref["losses.f64"][0]:
        errs.append("losses.f64")
    print(f"{os.path.basename(d)}: {'ok' if not errs else 'FAILED'} ({len(lora['tensors'])} LoRA tensors, "
          f"{len(ref)} reference tensors)")
    return errs


def model_dirs(root: str, model_type: str) -> list[str]:
    """The fixture directories under root whose config.json has this model_type."""
    dirs = []
    for x in sorted(os.listdir(root)):
        c = os.path.join(root, x, "config.json")
        if os.path.exists(c):
            with open(c) as f:
                if json.load(f).get("model_type") == model_type:
                    dirs.append(os.path.join(root, x))
    return dirs


def run_checks(dirs: list, check, size_limit: int, label: str) -> int:
    """check(d) -> list of problems, for every directory; all together < size_limit bytes.
    Prints the problems and a summary; returns the exit code."""
    failed = 0
    total = 0
    for d in dirs:
        total += sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
        for e in check(d):
            print("  " + e)
            failed += 1
    if total >= size_limit:
        print(f"  {label} fixtures take {total} bytes >= {size_limit}")
        failed += 1
    print(f"{len(dirs)} {label} dirs checked ({total} bytes), {failed} problems")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join(HERE, "..", "tests", "fixtures"))
    args = ap.parse_args(argv)
    dirs = model_dirs(args.root, "jamba")
    if not dirs:
        print(f"no Jamba fixtures under {args.root}")
        return 1
    peft = os.path.join(args.root, PEFT_DIR)
    if os.path.isdir(peft):
        dirs.append(peft)

    def check(d):
        return check_peft(d, args.root) if os.path.basename(d) == PEFT_DIR else check_model(d)

    return run_checks(dirs, check, SIZE_LIMIT, "Jamba")


if __name__ == "__main__":
    sys.exit(main())
