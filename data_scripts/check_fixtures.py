#!/usr/bin/env python3
"""Self-check of the fixtures written by make_fixtures.py. Needs only numpy.

For every tests/fixtures/<model>/ it checks
  * the checkpoint (single file or shards + model.safetensors.index.json) is complete and its
    tensor names / shapes / dtypes match config.json,
  * the loss recomputed with numpy (float64) from the stored logits and labels matches the stored
    loss, for reference.safetensors (float32) and reference_f64.safetensors (float64),
  * the float32 and float64 references agree,
  * there is one grad.<name> per trainable parameter (= checkpoint tensor names), with the
    parameter's shape, and hidden_states.0..num_hidden_layers plus the required metadata.

Usage: python3 data_scripts/check_fixtures.py [--root tests/fixtures]
Exit code 0 when everything passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "F16": np.float16}
REQUIRED_METADATA = [
    "torch_version",
    "transformers_version",
    "safetensors_version",
    "seed",
    "generator",
    "hidden_states_note",
]


def read_safetensors(path: str, load: bool = True):
    """Minimal reader: returns (header dict without __metadata__, metadata, {name: ndarray})."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + n :]
    tensors = {}
    end_max = 0
    for name, info in header.items():
        b, e = info["data_offsets"]
        end_max = max(end_max, e)
        if not load:
            continue
        raw = bytes(data[b:e])
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        tensors[name] = arr.reshape(info["shape"])
    assert end_max == len(data), f"{path}: data section has {len(data)} bytes, header covers {end_max}"
    return header, meta, tensors


def expected_params(cfg: dict) -> dict:
    D, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    E, N, K = cfg["intermediate_size"], cfg["state_size"], cfg["conv_kernel"]
    R = cfg["time_step_rank"]
    if R == "auto":
        R = math.ceil(D / 16)
    assert E == int(cfg["expand"] * D), "intermediate_size != int(expand * hidden_size)"
    p = {"backbone.embeddings.weight": [V, D], "backbone.norm_f.weight": [D]}
    for i in range(L):
        pre = f"backbone.layers.{i}."
        p[pre + "norm.weight"] = [D]
        p[pre + "mixer.in_proj.weight"] = [2 * E, D]
        p[pre + "mixer.conv1d.weight"] = [E, 1, K]
        p[pre + "mixer.x_proj.weight"] = [R + 2 * N, E]
        p[pre + "mixer.dt_proj.weight"] = [E, R]
        p[pre + "mixer.dt_proj.bias"] = [E]
        p[pre + "mixer.A_log"] = [E, N]
        p[pre + "mixer.D"] = [E]
        p[pre + "mixer.out_proj.weight"] = [D, E]
        if cfg.get("use_conv_bias", True):
            p[pre + "mixer.conv1d.bias"] = [E]
        if cfg.get("use_bias", False):
            p[pre + "mixer.in_proj.bias"] = [2 * E]
            p[pre + "mixer.out_proj.bias"] = [D]
    if not cfg.get("tie_word_embeddings", True):
        p["lm_head.weight"] = [V, D]
    return p


def np_loss(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """HF causal-LM loss in float64: mean CE of logits[:, :-1] vs labels[:, 1:], ignore -100."""
    lg = logits[:, :-1].astype(np.float64).reshape(-1, logits.shape[-1])
    lb = labels[:, 1:].reshape(-1)
    keep = lb != -100
    lg, lb = lg[keep], lb[keep]
    m = lg.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(lg - m).sum(axis=1)))
    nll = lse - lg[np.arange(len(lb)), lb]
    return float(nll.mean()), int(keep.sum())


def check_model(d: str) -> list[str]:
    errs = []
    name = os.path.basename(d)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    want = expected_params(cfg)
    torch_dtype = cfg.get("torch_dtype")
    st_dtype = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[torch_dtype]

    # ---- checkpoint
    idx = os.path.join(d, "model.safetensors.index.json")
    ckpt = {}
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        shards = sorted(set(wm.values()))
        for sh in shards:
            if not os.path.exists(os.path.join(d, sh)):
                errs.append(f"shard {sh} named in the index is missing")
                continue
            h, _, _ = read_safetensors(os.path.join(d, sh), load=False)
            for k, v in h.items():
                if wm.get(k) != sh:
                    errs.append(f"{k} is in {sh} but the index says {wm.get(k)}")
                ckpt[k] = v
        if set(wm) != set(ckpt):
            errs.append("index weight_map and shard contents differ")
    else:
        h, _, _ = read_safetensors(os.path.join(d, "model.safetensors"), load=False)
        ckpt = h
    if set(ckpt) != set(want):
        errs.append(f"checkpoint names differ: extra {set(ckpt) - set(want)}, missing {set(want) - set(ckpt)}")
    for k, v in ckpt.items():
        if k in want and v["shape"] != want[k]:
            errs.append(f"{k}: shape {v['shape']} != expected {want[k]}")
        if v["dtype"] != st_dtype:
            errs.append(f"{k}: dtype {v['dtype']} != {st_dtype} (config torch_dtype {torch_dtype})")

    # ---- references
    _, meta, ref = read_safetensors(os.path.join(d, "reference.safetensors"))
    _, meta64, ref64 = read_safetensors(os.path.join(d, "reference_f64.safetensors"))
    for k in REQUIRED_METADATA:
        if not meta.get(k):
            errs.append(f"reference.safetensors metadata lacks {k}")

    ids, labels = ref["input_ids"], ref["labels"]
    B, L = ids.shape
    V, D, nl = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    if ids.dtype != np.int64 or labels.dtype != np.int64:
        errs.append("input_ids/labels must be I64")
    if not ((ids >= 0) & (ids < V)).all():
        errs.append("input_ids out of range")
    if not (np.array_equal(labels[labels != -100], ids[labels != -100]) and (labels == -100).any()):
        errs.append("labels must equal input_ids except for some -100")
    if ref["logits"].shape != (B, L, V) or ref["logits"].dtype != np.float32:
        errs.append(f"logits shape/dtype {ref['logits'].shape} {ref['logits'].dtype}")
    if ref["loss"].shape != (1,):
        errs.append(f"loss shape {ref['loss'].shape} != (1,)")
    for i in range(nl + 1):
        hs = ref.get(f"hidden_states.{i}")
        if hs is None or hs.shape != (B, L, D):
            errs.append(f"hidden_states.{i} missing or wrong shape")
    if f"hidden_states.{nl + 1}" in ref:
        errs.append("too many hidden_states")

    loss, n = np_loss(ref["logits"], labels)
    stored = float(ref["loss"][0])
    if not math.isclose(loss, stored, rel_tol=2e-6):
        errs.append(f"numpy loss {loss!r} != stored loss {stored!r}")
    if meta.get("n_loss_targets") != str(n):
        errs.append(f"n_loss_targets {meta.get('n_loss_targets')} != {n}")
    loss64, _ = np_loss(ref64["logits"], ref64["labels"])
    if not math.isclose(loss64, float(ref64["loss"][0]), rel_tol=1e-12):
        errs.append(f"f64: numpy loss {loss64!r} != stored {float(ref64['loss'][0])!r}")
    if not (np.array_equal(ref64["input_ids"], ids) and np.array_equal(ref64["labels"], labels)):
        errs.append("f64 reference uses different inputs")
    scale = np.abs(ref64["logits"]).max()
    if np.abs(ref["logits"] - ref64["logits"]).max() > 1e-5 * scale:
        errs.append("f32 and f64 logits disagree")
    if not math.isclose(stored, float(ref64["loss"][0]), rel_tol=1e-5):
        errs.append("f32 and f64 loss disagree")

    grads = {k[5:]: v for k, v in ref.items() if k.startswith("grad.")}
    if set(grads) != set(want):
        errs.append(f"grad names differ: extra {set(grads) - set(want)}, missing {set(want) - set(grads)}")
    for k, g in grads.items():
        if k in want and list(g.shape) != want[k]:
            errs.append(f"grad.{k}: shape {list(g.shape)} != {want[k]}")
        if not np.isfinite(g).all() or not np.any(g != 0):
            errs.append(f"grad.{k} is non-finite or all zero")
        g64 = ref64.get("grad." + k)
        if g64 is None:
            errs.append(f"f64 reference lacks grad.{k}")
        elif np.abs(g - g64).max() > 1e-4 * np.abs(g64).max():
            errs.append(f"grad.{k}: f32 vs f64 max diff {np.abs(g - g64).max():.3e}")

    status = "ok" if not errs else "FAILED"
    print(f"{name}: {status} (loss {stored:.6f}, numpy {loss:.6f}, {n} targets, {len(grads)} grads, ckpt {torch_dtype})")
    return errs


def model_type(d: str) -> str:
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f).get("model_type", "mamba")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--root", default=os.path.join(here, "..", "tests", "fixtures"))
    args = ap.parse_args(argv)
    dirs = sorted(
        os.path.join(args.root, x)
        for x in os.listdir(args.root)
        if os.path.exists(os.path.join(args.root, x, "reference.safetensors"))
        and os.path.exists(os.path.join(args.root, x, "config.json"))  # models, not peft-lora
        and model_type(os.path.join(args.root, x)) == "mamba"  # jamba-*: check_jamba_fixtures.py
    )
    if not dirs:
        print(f"no fixtures under {args.root}")
        return 1
    failed = 0
    for d in dirs:
        for e in check_model(d):
            print("  " + e)
            failed += 1
    print(f"{len(dirs)} fixture dirs checked, {failed} problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
