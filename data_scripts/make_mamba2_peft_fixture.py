#!/usr/bin/env python3
"""Generate the Hugging Face `peft` LoRA reference fixture for Mamba-2:
tests/fixtures/peft-lora-mamba2/.

The Mamba-2 counterpart of make_jamba_peft_fixture.py (same layout and key names where they
apply; no aux loss, so `loss` is the whole objective):
  1. loads the committed base model tests/fixtures/mamba2-tiny (referred to, not copied) and its
     reference batch (input_ids / labels, no padding),
  2. wraps it with `peft.get_peft_model` (LoraConfig below: the mixer's in_proj and out_proj, the
     only nn.Linear of a Mamba-2 block; r = 4, alpha = 8, dropout 0) and overwrites every lora_A /
     lora_B with seeded N(0, 0.1^2) values,
  3. saves that adapter with `save_pretrained(<dir>/adapter_init)`,
  4. float32 run: peft 0.12.0 + transformers 4.44.2 with the tf5.25.0 mixer port of
     make_mamba2_fixtures (the semantics of mamba2-tiny): logits, loss, LoRA gradients;
     merge_and_unload() and its logits,
  5. float64 run: make_mamba2_fixtures.f64_mamba2 (independent implementation) with
     W' = W + (alpha / r) B A for every target, autograd for the LoRA gradients (transformers'
     torch path casts to float32 inside, so peft in float64 would not be float64),
  6. K = 5 torch.optim.AdamW steps in float64 on the LoRA parameters over the same math, storing
     the adapter after every step,
  7. writes reference.safetensors + fixture.json and runs check_mamba2_peft_fixture.py.

Usage (environment: data_scripts/README.md and PEFT_FIXTURE.md):
    /tmp/fxenv/bin/python data_scripts/make_mamba2_peft_fixture.py
Deterministic: two runs give byte-identical files. Documentation: data_scripts/MAMBA2_FIXTURE.md.
"""

from __future__ import annotations

import json
import os
import sys

import accelerate
import peft
import torch
from peft import LoraConfig
from transformers import Mamba2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_mamba2_fixtures as m2  # noqa: E402
from make_jamba_fixtures import deterministic_torch, lm_loss, versions  # noqa: E402
from make_jamba_peft_fixture import ADAMW, FIXTURES, INIT_STD, K_STEPS  # noqa: E402
from make_jamba_peft_fixture import f32_vs_f64, lora_json, save_adapter  # noqa: E402
from make_jamba_peft_fixture import reference_metadata, start_fixture, store_training  # noqa: E402
from make_jamba_peft_fixture import peft_build, train_json  # noqa: E402
from make_peft_fixture import lora_config as peft_lora_config  # noqa: E402
from make_peft_fixture import lora_params, write_fixture  # noqa: E402

GENERATOR = "data_scripts/make_mamba2_peft_fixture.py"
DOC = "data_scripts/MAMBA2_FIXTURE.md"
NAME = "peft-lora-mamba2"
BASE_NAME = "mamba2-tiny"
BASE_NAME_OR_PATH = (
    "tests/fixtures/mamba2-tiny"  # informative only, relative to the repository root
)
SEED = 4650
LORA = dict(r=4, lora_alpha=8, use_rslora=False, target_modules=["in_proj", "out_proj"])
PREFIX = "base_model.model."


def lora_config() -> LoraConfig:
    return peft_lora_config({"lora": LORA})


def scaling() -> float:
    return LORA["lora_alpha"] / LORA["r"]


def build(init: dict | None, dtype=torch.float32):
    # no dropout anywhere (lora_dropout = 0; Mamba-2 has none)
    return peft_build(Mamba2ForCausalLM, BASE_NAME, BASE_NAME_OR_PATH, lora_config(), init, dtype)


def make_init() -> dict:
    pm = build(None)
    g = torch.Generator().manual_seed(SEED)
    return {
        n: INIT_STD * torch.randn(p.shape, generator=g, dtype=torch.float32)
        for n, p in lora_params(pm)
    }


def merged_params(base64: dict, lora: dict, scale: float) -> dict:
    """The documented LoRA math: W' = W + scale * B @ A for every module with an adapter."""
    P = dict(base64)
    for n, A in lora.items():
        if ".lora_A." in n:
            mod = n[len(PREFIX) : -len(".lora_A.weight")]
            B = lora[n.replace(".lora_A.", ".lora_B.")]
            P[mod + ".weight"] = P[mod + ".weight"] + scale * (B @ A)
    return P


def f64_loss(base64: dict, cfg, lora: dict, ids, labels):
    """(logits, loss) in float64 from f64_mamba2 with the LoRA-merged weights."""
    logits, _ = m2.f64_mamba2(merged_params(base64, lora, scaling()), cfg, ids, None, m2.TF5)
    return logits, lm_loss(logits, labels)


def run_f32(init, ids, labels):
    pm = build(init)
    pm.zero_grad(set_to_none=True)
    with m2.semantics(m2.TF5):
        out = pm(input_ids=ids, labels=labels, use_cache=False, return_dict=True)
        out.loss.backward()
        assert torch.equal(lm_loss(out.logits, labels), out.loss)
        t = {"logits": out.logits.detach(), "loss": out.loss.detach().reshape(1)}
        for n, p in lora_params(pm):
            assert p.grad is not None and torch.count_nonzero(p.grad) == p.grad.numel(), n
            t["grad." + n] = p.grad.detach().clone()
        merged = pm.merge_and_unload()
        assert type(merged) is Mamba2ForCausalLM
        with torch.no_grad():
            t["merged_logits"] = merged(input_ids=ids, use_cache=False).logits
    return t


def run_f64(base64, cfg, init, ids, labels):
    leaves = {n: v.double().clone().requires_grad_(True) for n, v in init.items()}
    logits, loss = f64_loss(base64, cfg, leaves, ids, labels)
    loss.backward()
    t = {"logits.f64": logits.detach(), "loss.f64": loss.detach().reshape(1)}
    for n, p in leaves.items():
        t["grad." + n + ".f64"] = p.grad.detach().clone()
    return t


def train(base64, cfg, init, ids, labels):
    """K torch.optim.AdamW steps in float64 on the LoRA parameters, same batch every step."""
    leaves = {n: v.double().clone().requires_grad_(True) for n, v in init.items()}
    opt = torch.optim.AdamW(list(leaves.values()), **ADAMW)
    losses, after = [], []
    for _ in range(K_STEPS):
        opt.zero_grad(set_to_none=True)
        _, loss = f64_loss(base64, cfg, leaves, ids, labels)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        after.append({n: p.detach().clone() for n, p in leaves.items()})
    with torch.no_grad():
        _, loss_after = f64_loss(base64, cfg, leaves, ids, labels)
    return losses, after, loss_after.item()


def fixture_json(names: list, n_targets: int, info: dict) -> dict:
    return {
        "generator": GENERATOR,
        "doc": DOC,
        "base_model": "../" + BASE_NAME,
        "semantics": m2.TF5,
        "adapter_init": "adapter_init",
        "reference": "reference.safetensors",
        "inputs": f"input_ids/labels of ../{BASE_NAME}/reference.safetensors (copied into "
        "reference.safetensors); no attention_mask",
        "n_loss_targets": n_targets,
        "objective": "loss = mean CE of logits[:, :-1] vs labels[:, 1:] (HF output.loss)",
        "versions": {
            **versions(),
            "peft_version": peft.__version__,
            "accelerate_version": accelerate.__version__,
        },
        "lora": lora_json(LORA, scaling(), SEED, names),
        "train": train_json(),
        "checks": info,
    }


def build_fixture() -> list:
    out_dir, log, ids, labels, n_targets = start_fixture(NAME, BASE_NAME)
    base = Mamba2ForCausalLM.from_pretrained(os.path.join(FIXTURES, BASE_NAME))
    cfg = base.config
    base64 = {k: v.detach().double() for k, v in base.named_parameters()}

    init = make_init()
    pm = build(init)
    acfg, names = save_adapter(pm, out_dir, init)
    assert pm.base_model.model.backbone.layers[0].mixer.in_proj.scaling["default"] == scaling()
    del pm

    t = {"input_ids": ids.clone(), "labels": labels.clone()}
    t.update(run_f32(init, ids, labels))
    t.update(run_f64(base64, cfg, init, ids, labels))
    losses, after, loss_after = train(base64, cfg, init, ids, labels)
    assert losses[0] == t["loss.f64"].item()
    store_training(t, names, losses, after, loss_after)

    e = f32_vs_f64(t, names, ("loss",))
    assert losses[-1] < losses[0] and loss_after < losses[-1]
    info = {"f32_peft_vs_f64_independent_rel": {k: float(f"{v:.2e}") for k, v in e.items()}}
    log += [
        f"scaling {scaling()}; {len(names)} LoRA tensors, "
        f"{sum(init[n].numel() for n in names)} parameters",
        f"loss f32 {t['loss'].item():.7f}; f64 {t['loss.f64'].item():.15f}",
        "losses.f64 " + " ".join(f"{x:.6f}" for x in losses) + f" -> {loss_after:.6f}",
        "checks " + json.dumps(info),
    ]

    fx = fixture_json(names, n_targets, info)
    md = reference_metadata(fx, GENERATOR, NAME, BASE_NAME, semantics=m2.TF5)
    return log + write_fixture(out_dir, t, fx, md, acfg)


def main(argv=None) -> int:
    deterministic_torch()
    print(" ".join(f"{k} {v}" for k, v in versions().items()) + f" peft {peft.__version__}")
    for line in build_fixture():
        print(line)
    import check_mamba2_peft_fixture

    return check_mamba2_peft_fixture.main([])


if __name__ == "__main__":
    sys.exit(main())
