#!/usr/bin/env python3
"""Checks that `ssmtune init` writes model directories transformers loads as they are.

For two small size configs (tied embeddings without in/out_proj bias; untied with bias, no conv
bias, constant dt_proj init and rescaled out_proj) it
  1. runs `ssmtune init SIZES.json --out DIR --seed N`,
  2. loads DIR with transformers' MambaForCausalLM.from_pretrained and requires no missing,
     unexpected or mismatched keys, the config values ssmtune wrote, and the parameter count
     ssmtune printed,
  3. compares every loaded parameter bit for bit with the tensor in model.safetensors (and,
     when tied, that lm_head is the embedding),
  4. compares each tensor with what transformers' own MambaForCausalLM(config) draws: equal
     where the rule is deterministic (A_log, D, norms, zero biases, constant dt_proj), the same
     distribution where it is random (two-sample Kolmogorov-Smirnov over all layers, alpha 1e-3),
  5. runs a forward pass with labels (use_cache=False: torch 1.13 crashes in the cache path) and
     requires finite logits and a loss near ln(vocab_size).
Prints one OK line per config and a final OK; exits 1 at the first failure.

Usage: /tmp/fxenv/bin/python data_scripts/check_init_loads.py build/apps/ssmtune/ssmtune
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import MambaConfig, MambaForCausalLM

CONFIGS = {
    "tied-nobias": (
        {"vocab_size": 96, "hidden_size": 24, "num_hidden_layers": 2, "state_size": 6,
         "expand": 2, "conv_kernel": 4, "time_step_rank": 3, "use_bias": False,
         "use_conv_bias": True, "tie_word_embeddings": True},
        11,
    ),
    "untied-bias": (
        {"vocab_size": 130, "hidden_size": 20, "num_hidden_layers": 3, "state_size": 5,
         "expand": 1.5, "conv_kernel": 3, "time_step_rank": "auto", "use_bias": True,
         "use_conv_bias": False, "tie_word_embeddings": False,
         "time_step_init_scheme": "constant", "time_step_scale": 0.5,
         "rescale_prenorm_residual": True, "initializer_range": 0.05,
         "time_step_min": 0.002, "time_step_max": 0.05},
        12,
    ),
}

# Tensors whose init rule involves no randomness (lib/model/mamba_init.cpp).
DETERMINISTIC = ("mixer.A_log", "mixer.D", "norm.weight", "norm_f.weight", "in_proj.bias",
                 "out_proj.bias")


class CheckFailed(Exception):
    pass


def require(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


def kind(name: str) -> str:
    """backbone.layers.3.mixer.x_proj.weight -> mixer.x_proj.weight (pools the layers)."""
    parts = name.split(".")
    return ".".join(parts[3:]) if name.startswith("backbone.layers.") else name


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic of two samples and its critical value at alpha = 1e-3."""
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    grid = np.concatenate([a, b])
    d = np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                      - np.searchsorted(b, grid, side="right") / b.size))
    crit = math.sqrt(-0.5 * math.log(1e-3 / 2)) * math.sqrt((a.size + b.size) / (a.size * b.size))
    return float(d), crit


def check_one(binary: str, label: str, sizes: dict, seed: int, work: str) -> str:
    sizes_path = os.path.join(work, f"{label}.json")
    out = os.path.join(work, label)
    with open(sizes_path, "w") as f:
        json.dump(sizes, f)
    run = subprocess.run([binary, "init", sizes_path, "--out", out, "--seed", str(seed)],
                         capture_output=True, text=True)
    require(run.returncode == 0, f"ssmtune init exited {run.returncode}: {run.stdout}{run.stderr}")
    summary = run.stdout.strip().splitlines()[-1]

    # 2. transformers loads it with nothing missing or left over.
    model, info = MambaForCausalLM.from_pretrained(out, output_loading_info=True)
    model.eval()
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        require(not info[key], f"{label}: from_pretrained reports {key}: {info[key]}")
    written = json.load(open(os.path.join(out, "config.json")))
    require(written["model_type"] == "mamba" and written["architectures"] == ["MambaForCausalLM"]
            and written["torch_dtype"] == "float32", f"{label}: config.json header {written}")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "state_size",
                "intermediate_size", "conv_kernel", "time_step_rank", "use_bias",
                "use_conv_bias", "tie_word_embeddings", "time_step_init_scheme",
                "rescale_prenorm_residual"):
        require(getattr(model.config, key) == written[key],
                f"{label}: config.{key} loads as {getattr(model.config, key)!r}, "
                f"file says {written[key]!r}")

    n_params = sum(p.numel() for p in model.parameters())  # a tied lm_head counts once
    require(f"{n_params:,} parameters" in summary,
            f"{label}: transformers counts {n_params:,} parameters, ssmtune said: {summary}")

    # 3. Loaded parameters are the file's bytes.
    stored = load_file(os.path.join(out, "model.safetensors"))
    params = dict(model.named_parameters())  # a tied lm_head appears once, as the embedding
    tied = sizes["tie_word_embeddings"]
    require(("lm_head.weight" in stored) == (not tied), f"{label}: lm_head stored = {not tied}")
    if tied:
        require(model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr(),
                f"{label}: lm_head is not tied to the embedding")
    require(set(params) == set(stored),
            f"{label}: parameters {sorted(set(params) ^ set(stored))} differ between model and file")
    for name, p in params.items():
        a = p.detach().numpy()
        require(a.dtype == np.float32 and a.shape == stored[name].shape,
                f"{label}: {name} is {a.dtype} {a.shape}, file {stored[name].dtype} "
                f"{stored[name].shape}")
        require(np.array_equal(a.view(np.uint32), stored[name].view(np.uint32)),
                f"{label}: {name} differs from model.safetensors")

    # 4. Same rules as transformers' own init.
    torch.manual_seed(seed)
    reference = MambaForCausalLM(MambaConfig.from_pretrained(out))
    ref = {n: p.detach().numpy() for n, p in reference.named_parameters()}
    require(set(ref) == set(stored), f"{label}: transformers' fresh model has other parameters")
    pooled: dict[str, tuple[list, list]] = {}
    for name, ours in stored.items():
        if name.endswith(DETERMINISTIC) or (name.endswith("dt_proj.weight")
                                            and sizes.get("time_step_init_scheme") == "constant"):
            require(np.array_equal(ours, ref[name]),
                    f"{label}: {name} max |ours - transformers| = "
                    f"{np.max(np.abs(ours - ref[name]))}")
        else:
            pooled.setdefault(kind(name), ([], []))
            pooled[kind(name)][0].append(ours.ravel())
            pooled[kind(name)][1].append(ref[name].ravel())
    worst = (0.0, "")
    for k, (ours, theirs) in pooled.items():
        d, crit = ks_two_sample(np.concatenate(ours), np.concatenate(theirs))
        require(d < crit, f"{label}: {k}: KS statistic {d:.3f} >= {crit:.3f} against "
                          "transformers' init")
        worst = max(worst, (d / crit, k))

    # 5. A forward pass.
    torch.manual_seed(0)
    ids = torch.randint(0, sizes["vocab_size"], (2, 9))
    with torch.no_grad():
        out_fw = model(ids, labels=ids, use_cache=False)
    require(bool(torch.isfinite(out_fw.logits).all()), f"{label}: non-finite logits")
    loss, ln_v = float(out_fw.loss), math.log(sizes["vocab_size"])
    require(abs(loss - ln_v) < 1.0, f"{label}: loss {loss:.3f} far from ln(V) = {ln_v:.3f}")
    return (f"OK {label}: {summary}\n   loads with no missing/unexpected keys, {len(stored)} "
            f"tensors bit-identical, {len(pooled)} random kinds match transformers' init "
            f"(largest KS/critical {worst[0]:.2f}, {worst[1]}), loss {loss:.3f} vs ln V "
            f"{ln_v:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ssmtune", help="path to the ssmtune binary")
    args = ap.parse_args()
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory(prefix="ssmtune-init-check-") as work:
        for label, (sizes, seed) in CONFIGS.items():
            try:
                print(check_one(os.path.abspath(args.ssmtune), label, sizes, seed, work))
            except CheckFailed as e:
                print(f"FAIL {e}")
                return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
