#!/usr/bin/env python3
"""Self-check of tests/fixtures/peft-lora-jamba (make_jamba_peft_fixture.py).

  * layout: fixture.json, adapter_init/{adapter_config.json, adapter_model.safetensors} and
    reference.safetensors hold exactly the documented names, shapes and dtypes (JAMBA_FIXTURE.md),
    adapter_config.json agrees with fixture.json, the tensor order is the documented module order;
  * input_ids / labels are those of ../jamba-tiny/reference.safetensors;
  * peft itself: PeftModel.from_pretrained(base, adapter_init) reproduces the stored float32
    logits and losses and the documented scaling; merge_and_unload() reproduces merged_logits;
  * the documented math without peft or transformers code: the independent float64 Jamba forward
    (make_jamba_fixtures.f64_jamba) with W' = W + s B A for every target reproduces logits.f64,
    loss.f64, aux_loss.f64, total_loss.f64 and every grad.*.f64; a hand-written AdamW replays the
    K steps (losses.f64, after_step.*, after_k.*, loss_after_k.f64);
  * float32 vs float64 agreement, losses from the stored logits, size < 1 MB.

Usage: /tmp/fxenv/bin/python data_scripts/check_jamba_peft_fixture.py [--root tests/fixtures]
Exit code 0 when everything passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import transformers
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import JambaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_peft_fixture import ADAPTER_CONFIG_KEYS, Failed, expect, rel  # noqa: E402
from make_jamba_fixtures import f64_total, lm_loss  # noqa: E402

NAME = "peft-lora-jamba"
PREFIX = "base_model.model."
# registration order inside a decoder layer (= named_parameters() order of the LoRA tensors)
MIXER_ORDER = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
               "mamba": ["in_proj", "x_proj", "dt_proj", "out_proj"]}  # fmt: skip
MLP_ORDER = ["gate_proj", "up_proj", "down_proj"]


def expected_adapter(cfg, lora: dict) -> dict:
    """PEFT file name -> shape, in named_parameters() order."""
    D, I, r = cfg.hidden_size, cfg.intermediate_size, lora["r"]
    E, N, R = cfg.mamba_expand * D, cfg.mamba_d_state, cfg.mamba_dt_rank
    hd = D // cfg.num_attention_heads
    io = {
        "q_proj": (cfg.num_attention_heads * hd, D), "k_proj": (cfg.num_key_value_heads * hd, D),
        "v_proj": (cfg.num_key_value_heads * hd, D), "o_proj": (D, cfg.num_attention_heads * hd),
        "in_proj": (2 * E, D), "x_proj": (R + 2 * N, E), "dt_proj": (E, R), "out_proj": (D, E),
        "gate_proj": (I, D), "up_proj": (I, D), "down_proj": (D, I), "router": (cfg.num_experts, D),
    }  # fmt: skip
    mods = []
    for i in range(cfg.num_hidden_layers):
        kind = cfg.layers_block_type[i]
        sub = "self_attn" if kind == "attention" else "mamba"
        mods += [(f"model.layers.{i}.{sub}.{m}", m) for m in MIXER_ORDER[kind]]
        ff = f"model.layers.{i}.feed_forward."
        if cfg.layers_num_experts[i] > 1:
            mods.append((ff + "router", "router"))
            for j in range(cfg.num_experts):
                mods += [(f"{ff}experts.{j}.{m}", m) for m in MLP_ORDER]
        else:
            mods += [(ff + m, m) for m in MLP_ORDER]
    out = {}
    for mod, kind in mods:
        if kind in lora["target_modules"]:
            o, n = io[kind]
            out[f"{PREFIX}{mod}.lora_A.weight"] = (r, n)
            out[f"{PREFIX}{mod}.lora_B.weight"] = (o, r)
    return out


def expected_reference(cfg, adapter: dict, B: int, L: int, K: int,
                       losses=("loss", "aux_loss", "total_loss")) -> dict:
    """reference.safetensors key -> (dtype, shape); `losses`: the scalar losses stored."""
    V = cfg.vocab_size
    f32, f64, i64 = torch.float32, torch.float64, torch.int64
    e = {"input_ids": (i64, (B, L)), "labels": (i64, (B, L)), "logits": (f32, (B, L, V)),
         "merged_logits": (f32, (B, L, V)), "logits.f64": (f64, (B, L, V)),
         "losses.f64": (f64, (K,)), "loss_after_k.f64": (f64, (1,))}  # fmt: skip
    for k in losses:
        e[k] = (f32, (1,))
        e[k + ".f64"] = (f64, (1,))
    for n, s in adapter.items():
        e["grad." + n] = (f32, s)
        e["grad." + n + ".f64"] = (f64, s)
        e["after_k." + n] = (f64, s)
        e["after_steps." + n] = (f32, (K - 1,) + s)
    return e


def independent(base64: dict, cfg, lora: dict, scale: float, ids, labels):
    """Documented math only: W' = W + scale * B @ A for every LoRA module, then f64_jamba."""
    P = dict(base64)
    for n, A in lora.items():
        if ".lora_A." in n:
            mod = n[len(PREFIX) : -len(".lora_A.weight")]
            P[mod + ".weight"] = P[mod + ".weight"] + scale * (lora[n.replace(".lora_A.", ".lora_B.")] @ A)
    logits, lm_l, aux, total, *_ = f64_total(P, cfg, ids, labels, None)
    return logits, lm_l, aux, total


def replay_adamw(base64, cfg, init, scale, ids, labels, tr):
    return adamw_replay(lambda p: independent(base64, cfg, p, scale, ids, labels)[3], init, tr)


def adamw_replay(objective, init: dict, tr: dict):
    """Hand-written AdamW (torch.optim.AdamW's formula, float64) for tr["steps"] steps on the
    tensors `init` (name -> tensor), objective(name -> tensor) -> scalar. Returns (losses before
    each step, parameters after each step, objective after the last step)."""
    lr, (b1, b2), eps, wd = tr["lr"], tr["betas"], tr["eps"], tr["weight_decay"]
    p = {n: t.double().clone() for n, t in init.items()}
    m = {n: torch.zeros_like(t) for n, t in p.items()}
    v = {n: torch.zeros_like(t) for n, t in p.items()}
    losses, after = [], []
    for k in range(tr["steps"]):
        leaves = {n: t.clone().requires_grad_(True) for n, t in p.items()}
        total = objective(leaves)
        names = list(leaves)
        grads = dict(zip(names, torch.autograd.grad(total, [leaves[n] for n in names])))
        losses.append(total.item())
        t = k + 1
        for n in p:
            g = grads[n]
            p[n] = p[n] * (1 - lr * wd)
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            p[n] = p[n] - (lr / (1 - b1**t)) * m[n] / (v[n].sqrt() / math.sqrt(1 - b2**t) + eps)
        after.append({n: x.clone() for n, x in p.items()})
    with torch.no_grad():
        total = objective(p)
    return losses, after, total.item()


def check_adapter(ad: str, lora: dict, want: dict):
    """adapter_init/: exactly adapter_config.json (agreeing with fixture.json's `lora`) and
    adapter_model.safetensors holding the tensors `want` (name -> shape), float32, no zeros.
    Returns (the adapter tensors, the LoRA scaling)."""
    expect(sorted(os.listdir(ad)) == ["adapter_config.json", "adapter_model.safetensors"], f"{ad}: files")
    with open(os.path.join(ad, "adapter_config.json")) as f:
        acfg = json.load(f)
    expect(set(acfg) == ADAPTER_CONFIG_KEYS, f"adapter_config.json keys {sorted(set(acfg) ^ ADAPTER_CONFIG_KEYS)}")
    for k in ["r", "lora_alpha", "use_rslora", "lora_dropout", "bias", "task_type", "target_modules"]:
        expect(acfg[k] == lora[k], f"adapter_config.json {k}={acfg[k]!r}, fixture.json {lora[k]!r}")
    expect(acfg["peft_type"] == "LORA" and acfg["use_dora"] is False and acfg["rank_pattern"] == {}, "type")
    scale = lora["lora_alpha"] / lora["r"]
    expect(scale == lora["scaling"] and not lora["use_rslora"], "scaling")
    expect(list(want) == lora["tensors"], "fixture.json lora.tensors: names or order")
    with safe_open(os.path.join(ad, "adapter_model.safetensors"), "pt") as f:
        expect(f.metadata() == {"format": "pt"}, "adapter metadata")
    init = load_file(os.path.join(ad, "adapter_model.safetensors"))
    expect(set(init) == set(want), "adapter tensor names")
    for n, s in want.items():
        expect(tuple(init[n].shape) == s and init[n].dtype == torch.float32, f"{n}: {tuple(init[n].shape)}")
        expect(torch.count_nonzero(init[n]) == init[n].numel(), f"{n} has zeros")
    return init, scale


def check_layout(ref: dict, want_ref: dict) -> None:
    """reference.safetensors holds exactly want_ref (key -> (dtype, shape)), all finite."""
    expect(set(ref) == set(want_ref), f"reference keys {sorted(set(ref) ^ set(want_ref))}")
    for k, (dt, s) in want_ref.items():
        expect(ref[k].dtype == dt and tuple(ref[k].shape) == s, f"{k}: {ref[k].dtype} {tuple(ref[k].shape)}")
        if ref[k].is_floating_point():
            expect(bool(torch.isfinite(ref[k]).all()), f"{k} not finite")


def open_fixture(d: str, model_cls, expected_adapter, expected_reference):
    """The parts every peft fixture check starts with: fixture.json, the base model (float32 and
    its float64 parameters), adapter_init/ (check_adapter), reference.safetensors (check_layout)
    with the inputs of the base fixture. Returns (fx, base, base64, want, init, scale, ref)."""
    with open(os.path.join(d, "fixture.json")) as f:
        fx = json.load(f)
    base_dir = os.path.normpath(os.path.join(d, fx["base_model"]))
    base = model_cls.from_pretrained(base_dir)
    base.eval()
    base64 = {k: v.detach().double() for k, v in base.named_parameters()}
    want = expected_adapter(base.config, fx["lora"])
    init, scale = check_adapter(os.path.join(d, fx["adapter_init"]), fx["lora"], want)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    B, L = ref["input_ids"].shape
    check_layout(ref, expected_reference(base.config, want, B, L, fx["train"]["steps"]))
    base_ref = load_file(os.path.join(base_dir, "reference.safetensors"))
    ids, labels = ref["input_ids"], ref["labels"]
    expect(torch.equal(ids, base_ref["input_ids"]) and torch.equal(labels, base_ref["labels"]), "inputs")
    expect(int((labels[:, 1:] != -100).sum()) == fx["n_loss_targets"], "n_loss_targets")
    return fx, base, base64, want, init, scale, ref


def fixture_size(d: str) -> str:
    """The fixture directory must stay below 1 MiB; returns the final log line."""
    total_bytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    expect(total_bytes < 1 << 20, f"{d}: {total_bytes} bytes")
    return f"ok ({total_bytes} bytes)"


def check_main(doc: str, name: str, check, argv=None) -> int:
    """Command line of the peft fixture checks: --root; check(root) -> log lines or Failed."""
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(description=doc, formatter_class=fmt)
    ap.add_argument("--root", default=os.path.join(HERE, "..", "tests", "fixtures"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    try:
        for line in check(args.root):
            print(line)
    except (Failed, OSError, KeyError) as e:
        print(f"FAIL {name}: {e}")
        return 1
    print(f"check of {name}: all ok")
    return 0


def check(root: str) -> list:
    d = os.path.join(root, NAME)
    log = [f"== {NAME}"]
    fx, base, base64, want, init, scale, ref = open_fixture(d, JambaForCausalLM, expected_adapter,
                                                            expected_reference)
    cfg, tr = base.config, fx["train"]
    ids, labels = ref["input_ids"], ref["labels"]
    base_dir = os.path.normpath(os.path.join(d, fx["base_model"]))
    ad = os.path.join(d, fx["adapter_init"])
    coef = cfg.router_aux_loss_coef
    for sfx, tol in [("", 2e-6), (".f64", 1e-13)]:
        e = rel(lm_loss(ref["logits" + sfx].double(), labels).reshape(1), ref["loss" + sfx].double())
        expect(e < tol, f"loss{sfx} vs logits rel {e}")
        tot = ref["loss" + sfx].double() + coef * ref["aux_loss" + sfx].double()
        expect(rel(tot, ref["total_loss" + sfx].double()) < tol, f"total_loss{sfx} != loss + coef * aux")

    # peft reload (float32)
    pm = PeftModel.from_pretrained(base, ad)
    pm.eval()
    expect(pm.base_model.model.model.layers[0].feed_forward.router.scaling == {"default": scale}, "peft scaling")
    with torch.no_grad():
        out = pm(input_ids=ids, labels=labels, output_router_logits=True, use_cache=False)
    e1, e2 = rel(out.logits, ref["logits"]), rel(out.loss.reshape(1), ref["total_loss"])
    e3 = rel(out.aux_loss.reshape(1), ref["aux_loss"])
    expect(max(e1, e2, e3) < 1e-6, f"PeftModel.from_pretrained: logits {e1}, total {e2}, aux {e3}")
    log.append(f"peft reload: logits rel {e1:.1e}, total loss rel {e2:.1e}, aux rel {e3:.1e}")
    merged = pm.merge_and_unload()
    with torch.no_grad():
        ml = merged(input_ids=ids, use_cache=False).logits
    e4, e5 = rel(ml, ref["merged_logits"]), rel(ref["merged_logits"], ref["logits"])
    expect(e4 < 1e-6 and e5 < 1e-5, f"merged logits: reload {e4}, vs unmerged {e5}")
    log.append(f"merge: reload rel {e4:.1e}; merged vs unmerged rel {e5:.1e}")

    # independent float64 math
    base64 = {k: v.detach().double() for k, v in JambaForCausalLM.from_pretrained(base_dir).named_parameters()}
    leaves = {n: t.double().requires_grad_(True) for n, t in init.items()}
    logits, lm_l, aux, total = independent(base64, cfg, leaves, scale, ids, labels)
    total.backward()
    errs = {
        "logits": rel(logits, ref["logits.f64"]),
        "loss": rel(lm_l.reshape(1), ref["loss.f64"]),
        "aux": rel(aux.reshape(1), ref["aux_loss.f64"]),
        "total": rel(total.reshape(1), ref["total_loss.f64"]),
        "grad": max(rel(leaves[n].grad, ref["grad." + n + ".f64"]) for n in want),
    }
    expect(max(errs["logits"], errs["loss"], errs["aux"], errs["total"]) < 1e-12 and errs["grad"] < 1e-10,
           f"independent f64: {errs}")
    log.append("independent f64 vs stored f64: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))

    e_l, e_t = rel(ref["logits"], ref["logits.f64"]), rel(ref["total_loss"], ref["total_loss.f64"])
    e_g = max(rel(ref["grad." + n], ref["grad." + n + ".f64"]) for n in want)
    expect(e_l < 1e-5 and e_t < 1e-6 and e_g < 1e-4, f"f32 vs f64: logits {e_l} total {e_t} grad {e_g}")
    log.append(f"f32 vs f64: logits rel {e_l:.1e}, total loss rel {e_t:.1e}, worst grad rel {e_g:.1e}")

    losses, after, loss_after = replay_adamw(base64, cfg, init, scale, ids, labels, tr)
    e_L = rel(torch.tensor(losses, dtype=torch.float64), ref["losses.f64"])
    e_a = rel(torch.tensor([loss_after], dtype=torch.float64), ref["loss_after_k.f64"])
    e_p = max(rel(after[-1][n], ref[f"after_k.{n}"]) for n in want)
    e_d = max(rel(after[-1][n] - init[n].double(), ref[f"after_k.{n}"] - init[n].double()) for n in want)
    # steps 1..K-1 are stored rounded to float32: exactly the rounded replay values expected
    # unless a value sits next to a float32 rounding boundary (then 1 ulp)
    e_s = max(rel(torch.stack([after[k][n] for k in range(tr["steps"] - 1)]).float(), ref[f"after_steps.{n}"])
              for n in want)  # fmt: skip
    expect(e_p < 1e-10 and e_d < 1e-8 and e_L < 1e-12 and e_a < 1e-12 and e_s < 2e-7,
           f"AdamW replay: params {e_p} updates {e_d} losses {e_L} after {e_a} steps {e_s}")
    expect(losses[-1] < losses[0] and loss_after < losses[-1], "AdamW: loss does not decrease")
    log.append(f"AdamW replay: after_k rel {e_p:.1e}, update rel {e_d:.1e}, losses rel {e_L:.1e}, "
               f"after_steps (float32) rel {e_s:.1e}")

    return log + [fixture_size(d)]


def main(argv=None) -> int:
    return check_main(__doc__, NAME, check, argv)


if __name__ == "__main__":
    sys.exit(main())
