#!/usr/bin/env python3
"""Self-check of the peft LoRA fixtures written by make_peft_fixture.py.

For tests/fixtures/peft-lora and tests/fixtures/peft-lora-rs it checks
  * layout: fixture.json, adapter_init/{adapter_config.json, adapter_model.safetensors} and
    reference.safetensors hold exactly the documented names, shapes and dtypes
    (data_scripts/PEFT_FIXTURE.md), and adapter_config.json agrees with fixture.json;
  * input_ids / labels are those of the base model's reference;
  * peft itself: PeftModel.from_pretrained(base, adapter_init) reproduces the stored float32
    logits and loss, its scaling is the documented one, merge_and_unload() reproduces
    merged_logits;
  * the documented formulas, without peft or transformers code: an independent float64 Mamba
    forward (make_fixtures.f64_forward) with W' = W + s B A and s = alpha/r or alpha/sqrt(r)
    reproduces logits.f64, loss.f64 and every grad.*.f64; a hand-written AdamW / global-norm
    clipping / linear warmup schedule replays both K-step runs (losses, lrs, grad norms,
    after_k*);
  * float32 vs float64 agreement, the loss recomputed from the stored logits, size < 1 MB.

Usage: /tmp/fxenv/bin/python data_scripts/check_peft_fixture.py [--root tests/fixtures]
Exit code 0 when everything passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import MambaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_fixtures import f64_forward  # noqa: E402  (independent float64 Mamba forward)

FIXTURES = ["peft-lora", "peft-lora-rs"]
PREFIX = "base_model.model."
ADAPTER_CONFIG_KEYS = {
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out",
    "inference_mode", "init_lora_weights", "layer_replication", "layers_pattern",
    "layers_to_transform", "loftq_config", "lora_alpha", "lora_dropout", "megatron_config",
    "megatron_core", "modules_to_save", "peft_type", "r", "rank_pattern", "revision",
    "target_modules", "task_type", "use_dora", "use_rslora",
}  # fmt: skip
MODULE_ORDER = ["in_proj", "x_proj", "dt_proj", "out_proj"]  # MambaMixer registration order


class Failed(Exception):
    pass


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise Failed(msg)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (per tensor: LoRA gradients span 1e-10 .. 1e-1 between tensors)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def module_shapes(cfg) -> dict:
    """Module name (no prefix) -> (out_features, in_features) of the LoRA-able linears."""
    D, E, N, R = cfg.hidden_size, cfg.intermediate_size, cfg.state_size, cfg.time_step_rank
    io = {"in_proj": (2 * E, D), "x_proj": (R + 2 * N, E), "dt_proj": (E, R), "out_proj": (D, E)}
    return {f"backbone.layers.{i}.mixer.{m}": io[m] for i in range(cfg.num_hidden_layers) for m in io}


def expected_adapter(cfg, lora: dict) -> dict:
    """PEFT file name -> shape, in named_parameters() order."""
    out = {}
    shapes = module_shapes(cfg)
    for i in range(cfg.num_hidden_layers):
        for m in MODULE_ORDER:
            if m not in lora["target_modules"]:
                continue
            mod = f"backbone.layers.{i}.mixer.{m}"
            o, n = shapes[mod]
            out[f"{PREFIX}{mod}.lora_A.weight"] = (lora["r"], n)
            out[f"{PREFIX}{mod}.lora_B.weight"] = (o, lora["r"])
    return out


def expected_reference(cfg, adapter: dict, B: int, L: int, K: int) -> dict:
    """Key -> (dtype, shape) of reference.safetensors."""
    V = cfg.vocab_size
    e = {
        "input_ids": (torch.int64, (B, L)),
        "labels": (torch.int64, (B, L)),
        "logits": (torch.float32, (B, L, V)),
        "loss": (torch.float32, (1,)),
        "merged_logits": (torch.float32, (B, L, V)),
        "logits.f64": (torch.float64, (B, L, V)),
        "loss.f64": (torch.float64, (1,)),
        "losses.f64": (torch.float64, (K,)),
        "loss_after_k.f64": (torch.float64, (1,)),
        "losses_clip_sched.f64": (torch.float64, (K,)),
        "loss_after_k_clip_sched.f64": (torch.float64, (1,)),
        "lrs_clip_sched.f64": (torch.float64, (K,)),
        "grad_norms_clip_sched.f64": (torch.float64, (K,)),
    }
    for n, s in adapter.items():
        e["grad." + n] = (torch.float32, s)
        e["grad." + n + ".f64"] = (torch.float64, s)
        e["after_k." + n] = (torch.float64, s)
        e["after_k_clip_sched." + n] = (torch.float64, s)
    return e


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


def independent_loss(base64: dict, cfg, lora: dict, scale: float, ids, labels):
    """Documented math only: W' = W + scale * B @ A, then the float64 Mamba forward.
    base64: HF name -> float64 tensor; lora: PEFT file name -> float64 tensor (may need grad)."""
    P = dict(base64)
    for n, A in lora.items():
        if ".lora_A." not in n:
            continue
        mod = n[len(PREFIX) : -len(".lora_A.weight")]
        Bm = lora[n.replace(".lora_A.", ".lora_B.")]
        P[mod + ".weight"] = P[mod + ".weight"] + scale * (Bm @ A)
    logits = f64_forward(P, cfg, ids)
    return logits, ce_loss(logits, labels)


def replay_adamw(base64, cfg, init: dict, scale, ids, labels, tr: dict, clip_sched: bool):
    """Hand-written torch.optim.AdamW (single-tensor path), clip_grad_norm_ and
    get_linear_schedule_with_warmup, as documented in PEFT_FIXTURE.md."""
    lr0, (b1, b2), eps, wd = tr["lr"], tr["betas"], tr["eps"], tr["weight_decay"]
    K = tr["steps"]
    p = {n: t.double().clone() for n, t in init.items()}
    m = {n: torch.zeros_like(t) for n, t in p.items()}
    v = {n: torch.zeros_like(t) for n, t in p.items()}
    losses, lrs, norms = [], [], []
    for k in range(K):
        leaves = {n: t.clone().requires_grad_(True) for n, t in p.items()}
        _, loss = independent_loss(base64, cfg, leaves, scale, ids, labels)
        names = list(leaves)
        grads = dict(zip(names, torch.autograd.grad(loss, [leaves[n] for n in names])))
        losses.append(loss.item())
        lr = lr0
        if clip_sched:
            c = tr["clip_sched"]
            total = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
            norms.append(total)
            coef = min(1.0, c["grad_clip"]["max_norm"] / (total + 1e-6))
            grads = {n: g * coef for n, g in grads.items()}
            w, T = c["schedule"]["num_warmup_steps"], c["schedule"]["num_training_steps"]
            lam = k / max(1, w) if k < w else max(0.0, (T - k) / max(1, T - w))
            lr = lr0 * lam
        lrs.append(lr)
        t = k + 1
        for n in p:
            g = grads[n]
            p[n] = p[n] * (1 - lr * wd)
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            denom = v[n].sqrt() / math.sqrt(1 - b2**t) + eps
            p[n] = p[n] - (lr / (1 - b1**t)) * m[n] / denom
    with torch.no_grad():
        _, loss_after = independent_loss(base64, cfg, p, scale, ids, labels)
    return p, losses, lrs, norms, loss_after.item()


def check_one(root: str, name: str) -> list:
    d = os.path.join(root, name)
    log = [f"== {name}"]
    with open(os.path.join(d, "fixture.json")) as f:
        fx = json.load(f)
    lora, tr = fx["lora"], fx["train"]
    base_dir = os.path.normpath(os.path.join(d, fx["base_model"]))
    base = MambaForCausalLM.from_pretrained(base_dir)
    base.eval()
    cfg = base.config
    base64 = {k: v.detach().double() for k, v in base.named_parameters()}

    # --- adapter_init in PEFT's layout
    ad = os.path.join(d, fx["adapter_init"])
    expect(sorted(os.listdir(ad)) == ["adapter_config.json", "adapter_model.safetensors"], f"{ad}: files")
    with open(os.path.join(ad, "adapter_config.json")) as f:
        acfg = json.load(f)
    expect(set(acfg) == ADAPTER_CONFIG_KEYS, f"adapter_config.json keys: {sorted(set(acfg) ^ ADAPTER_CONFIG_KEYS)}")
    for k in ["r", "lora_alpha", "use_rslora", "lora_dropout", "bias", "task_type"]:
        expect(acfg[k] == lora[k], f"adapter_config.json {k}={acfg[k]!r}, fixture.json {lora[k]!r}")
    expect(acfg["target_modules"] == lora["target_modules"], "target_modules")
    expect(acfg["peft_type"] == "LORA" and acfg["use_dora"] is False and acfg["fan_in_fan_out"] is False, "type")
    expect(acfg["rank_pattern"] == {} and acfg["alpha_pattern"] == {}, "patterns")
    scale = lora["lora_alpha"] / (math.sqrt(lora["r"]) if lora["use_rslora"] else lora["r"])
    expect(scale == lora["scaling"], f"scaling {lora['scaling']} != documented formula {scale}")

    want = expected_adapter(cfg, lora)
    expect(list(want) == lora["tensors"], "fixture.json lora.tensors order")
    with safe_open(os.path.join(ad, "adapter_model.safetensors"), "pt") as f:
        expect(f.metadata() == {"format": "pt"}, f"adapter metadata {f.metadata()}")
    init = load_file(os.path.join(ad, "adapter_model.safetensors"))
    expect(set(init) == set(want), f"adapter tensors {sorted(set(init) ^ set(want))}")
    for n, s in want.items():
        expect(tuple(init[n].shape) == s and init[n].dtype == torch.float32, f"{n}: {init[n].shape} {init[n].dtype}")
        expect(torch.count_nonzero(init[n]) == init[n].numel(), f"{n} has zeros")

    # --- reference.safetensors layout
    ref = load_file(os.path.join(d, "reference.safetensors"))
    B, L = ref["input_ids"].shape
    want_ref = expected_reference(cfg, want, B, L, tr["steps"])
    expect(set(ref) == set(want_ref), f"reference keys {sorted(set(ref) ^ set(want_ref))}")
    for k, (dt, s) in want_ref.items():
        expect(ref[k].dtype == dt and tuple(ref[k].shape) == s, f"{k}: {ref[k].dtype} {tuple(ref[k].shape)}")
        if ref[k].is_floating_point():
            expect(bool(torch.isfinite(ref[k]).all()), f"{k} not finite")
    base_ref = load_file(os.path.join(base_dir, "reference.safetensors"))
    ids, labels = ref["input_ids"], ref["labels"]
    expect(torch.equal(ids, base_ref["input_ids"]) and torch.equal(labels, base_ref["labels"]), "inputs")
    expect(B >= 2, "batch >= 2")
    expect(int((labels[:, 1:] != -100).sum()) == fx["n_loss_targets"], "n_loss_targets")

    # --- loss from the stored logits (rounding of the f32 logits -> 2e-6)
    e = rel(ce_loss(ref["logits"].double(), labels), ref["loss"].double()[0])
    expect(e < 2e-6, f"loss vs logits rel {e}")
    e = rel(ce_loss(ref["logits.f64"], labels), ref["loss.f64"][0])
    expect(e < 1e-13, f"loss.f64 vs logits.f64 rel {e}")

    # --- peft reload (float32): the same code path as the generator -> same bits expected;
    # 1e-6 allows for a different BLAS/thread count.
    pm = PeftModel.from_pretrained(base, ad)
    pm.eval()
    expect(pm.base_model.model.backbone.layers[0].mixer.in_proj.scaling == {"default": scale}, "peft scaling")
    with torch.no_grad():
        out = pm(input_ids=ids, labels=labels, use_cache=False)
    e1, e2 = rel(out.logits, ref["logits"]), rel(out.loss.reshape(1), ref["loss"])
    expect(e1 < 1e-6 and e2 < 1e-6, f"PeftModel.from_pretrained logits rel {e1}, loss rel {e2}")
    log.append(f"peft reload: logits rel {e1:.1e}, loss rel {e2:.1e}")
    merged = pm.merge_and_unload()
    with torch.no_grad():
        mlog = merged(input_ids=ids, use_cache=False).logits
    e3, e4 = rel(mlog, ref["merged_logits"]), rel(ref["merged_logits"], ref["logits"])
    expect(e3 < 1e-6 and e4 < 1e-5, f"merged logits: reload rel {e3}, vs unmerged rel {e4}")
    log.append(f"merge: reload rel {e3:.1e}; merged vs unmerged rel {e4:.1e}")

    # --- independent float64 math (no peft / transformers code) vs the stored float64 run.
    # Both are float64 implementations of the same math in a different operation order: 1e-12.
    leaves = {n: t.double().requires_grad_(True) for n, t in init.items()}
    logits, loss = independent_loss(base64, cfg, leaves, scale, ids, labels)
    loss.backward()
    e_l, e_s = rel(logits, ref["logits.f64"]), rel(loss.reshape(1), ref["loss.f64"])
    e_g = max(rel(leaves[n].grad, ref["grad." + n + ".f64"]) for n in want)
    expect(e_l < 1e-12 and e_s < 1e-12 and e_g < 1e-10, f"independent f64: logits {e_l} loss {e_s} grad {e_g}")
    log.append(f"independent f64 vs stored f64: logits rel {e_l:.1e}, loss rel {e_s:.1e}, worst grad rel {e_g:.1e}")

    # --- float32 vs float64 (float32 rounding through a 2-layer model)
    e_l, e_s = rel(ref["logits"], ref["logits.f64"]), rel(ref["loss"], ref["loss.f64"])
    e_g = max(rel(ref["grad." + n], ref["grad." + n + ".f64"]) for n in want)
    expect(e_l < 1e-5 and e_s < 1e-6 and e_g < 1e-4, f"f32 vs f64: logits {e_l} loss {e_s} grad {e_g}")
    log.append(f"f32 vs f64: logits rel {e_l:.1e}, loss rel {e_s:.1e}, worst grad rel {e_g:.1e}")

    # --- AdamW replays
    for clip_sched, sfx in [(False, ""), (True, "_clip_sched")]:
        p, losses, lrs, norms, loss_after = replay_adamw(base64, cfg, init, scale, ids, labels, tr, clip_sched)
        e_p = max(rel(p[n], ref[f"after_k{sfx}.{n}"]) for n in want)
        e_d = max(rel(p[n] - init[n].double(), ref[f"after_k{sfx}.{n}"] - init[n].double()) for n in want)
        e_L = rel(torch.tensor(losses, dtype=torch.float64), ref[f"losses{sfx}.f64"])
        e_a = rel(torch.tensor([loss_after], dtype=torch.float64), ref[f"loss_after_k{sfx}.f64"])
        expect(e_p < 1e-10 and e_d < 1e-8 and e_L < 1e-12 and e_a < 1e-12,
               f"AdamW{sfx} replay: params {e_p} deltas {e_d} losses {e_L} after {e_a}")  # fmt: skip
        msg = f"AdamW{sfx or '_plain'} replay: params rel {e_p:.1e}, update rel {e_d:.1e}, losses rel {e_L:.1e}"
        if clip_sched:
            e_r = rel(torch.tensor(lrs, dtype=torch.float64), ref["lrs_clip_sched.f64"])
            e_n = rel(torch.tensor(norms, dtype=torch.float64), ref["grad_norms_clip_sched.f64"])
            expect(e_r < 1e-15 and e_n < 1e-12, f"lrs {e_r}, grad norms {e_n}")
            msg += f", lrs rel {e_r:.1e}, grad norms rel {e_n:.1e}"
        expect(losses[-1] < losses[0] and loss_after < losses[-1], f"AdamW{sfx}: loss does not decrease")
        log.append(msg)

    # --- size
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    expect(total < 1 << 20, f"{d}: {total} bytes")
    log.append(f"ok ({total} bytes)")
    return log


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join(HERE, "..", "tests", "fixtures"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    failed = 0
    for name in FIXTURES:
        try:
            for line in check_one(args.root, name):
                print(line)
        except (Failed, OSError, KeyError) as e:
            print(f"FAIL {name}: {e}")
            failed += 1
    print("check_peft_fixture: " + ("all ok" if not failed else f"{failed} fixture(s) FAILED"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
