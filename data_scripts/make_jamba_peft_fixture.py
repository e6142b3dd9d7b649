#!/usr/bin/env python3
"""Generate the Hugging Face `peft` LoRA reference fixture for Jamba: tests/fixtures/peft-lora-jamba/.

The Jamba counterpart of make_peft_fixture.py (same layout and key names where they apply):
  1. loads the committed base model tests/fixtures/jamba-tiny (referred to, not copied) and its
     reference batch (input_ids / labels, no padding),
  2. wraps it with `peft.get_peft_model` (LoraConfig below: attention q/k/v/o_proj, the MoE router,
     gate/up/down_proj of every expert and of the dense MLPs, Mamba in/x/dt/out_proj; r = 4,
     alpha = 8, dropout 0) and overwrites every lora_A / lora_B with seeded N(0, 0.1^2) values,
  3. saves that adapter with `save_pretrained(<dir>/adapter_init)`,
  4. float32 run (unmodified peft + transformers, output_router_logits=True): logits, LM loss,
     aux loss, total loss, LoRA gradients of the total loss; merge_and_unload() and its logits,
  5. float64 run: the same model `.double()` with transformers' float32 casts patched out
     (make_jamba_fixtures.float64_clean); peft's LoRA layers run unmodified,
  6. K = 5 AdamW steps in float64 on the LoRA parameters (objective: the total loss), storing
     the adapter after every step,
  7. writes reference.safetensors + fixture.json and runs check_jamba_peft_fixture.py, which
     re-derives everything with an independent float64 implementation.

Usage (environment: data_scripts/README.md and PEFT_FIXTURE.md):
    /tmp/fxenv/bin/python data_scripts/make_jamba_peft_fixture.py
Deterministic: two runs give byte-identical files. Documentation: data_scripts/JAMBA_FIXTURE.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import accelerate
import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import JambaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, HERE)
import make_jamba_fixtures as mj  # noqa: E402
from make_peft_fixture import adamw_json, normalise_adapter_config, saved_name  # noqa: E402
from make_peft_fixture import write_fixture  # noqa: E402

GENERATOR = "data_scripts/make_jamba_peft_fixture.py"
NAME = "peft-lora-jamba"
BASE_NAME = "jamba-tiny"
BASE_NAME_OR_PATH = "tests/fixtures/jamba-tiny"  # informative only, relative to the repository root
SEED = 4549  # chosen so that no routing comes within 1e-3 of a tie in any of the 5 steps
INIT_STD = 0.1
K_STEPS = 5
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
LORA = dict(
    r=4,
    lora_alpha=8,
    use_rslora=False,
    target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj",  # attention
        "router",  # MoE router (a plain nn.Linear: peft 0.12.0 wraps it like any other)
        "gate_proj", "up_proj", "down_proj",  # experts and dense MLPs (same module names)
        "in_proj", "x_proj", "dt_proj", "out_proj",  # Mamba mixer
    ],
)  # fmt: skip


def lora_config() -> LoraConfig:
    return LoraConfig(r=LORA["r"], lora_alpha=LORA["lora_alpha"], use_rslora=LORA["use_rslora"],
                      target_modules=list(LORA["target_modules"]), lora_dropout=0.0, bias="none",
                      task_type="CAUSAL_LM")


def scaling() -> float:
    return LORA["lora_alpha"] / LORA["r"]


def lora_params(pm) -> list:
    out = [(saved_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n for n, _ in out)
    return out


def build(init: dict | None, dtype=torch.float32):
    pm = peft_build(JambaForCausalLM, BASE_NAME, BASE_NAME_OR_PATH, lora_config(), init, dtype)
    assert inner(pm).config._attn_implementation == "eager"
    return pm  # no dropout anywhere (lora_dropout = 0, attention_dropout = 0)


def peft_build(model_cls, base_name: str, name_or_path: str, config, init: dict | None, dtype):
    """tests/fixtures/<base_name> + peft LoRA (config), adapter set to `init` (saved name ->
    float32 tensor) if given, converted to dtype, eval mode."""
    base = model_cls.from_pretrained(os.path.join(FIXTURES, base_name))
    base.name_or_path = name_or_path
    pm = get_peft_model(base, config)
    if init is not None:
        with torch.no_grad():
            for n, p in lora_params(pm):
                p.copy_(init[n])
    pm = pm.to(dtype)
    pm.eval()
    return pm


def make_init() -> dict:
    pm = build(None)
    g = torch.Generator().manual_seed(SEED)
    return {n: INIT_STD * torch.randn(p.shape, generator=g, dtype=torch.float32) for n, p in lora_params(pm)}


def inner(pm) -> JambaForCausalLM:
    return pm.base_model.model


def run_f32(init, ids, labels):
    pm = build(init)
    pm.zero_grad(set_to_none=True)
    out = pm(input_ids=ids, labels=labels, output_router_logits=True, use_cache=False, return_dict=True)
    out.loss.backward()
    cfg = inner(pm).config
    lm_l = mj.lm_loss(out.logits, labels)
    assert torch.equal(lm_l + cfg.router_aux_loss_coef * out.aux_loss, out.loss)
    t = {
        "logits": out.logits.detach(),
        "loss": lm_l.detach().reshape(1),
        "aux_loss": out.aux_loss.detach().reshape(1),
        "total_loss": out.loss.detach().reshape(1),
    }
    for n, p in lora_params(pm):
        assert p.grad is not None and torch.count_nonzero(p.grad) == p.grad.numel(), n
        t["grad." + n] = p.grad.detach().clone()
    margin = mj.topk_margin(out.router_logits, cfg.num_experts_per_tok)
    sel = [torch.topk(torch.softmax(z.detach(), -1), cfg.num_experts_per_tok, -1).indices for z in out.router_logits]

    # the float64 patch must not change float32 results
    with torch.no_grad(), mj.float64_clean():
        _, lg, _, _, tot = mj.forward_parts(inner(pm), ids, labels, None)
    assert torch.equal(lg, out.logits) and torch.equal(tot, out.loss), "float64_clean changes float32 results"

    merged = pm.merge_and_unload()
    assert type(merged) is JambaForCausalLM
    with torch.no_grad():
        t["merged_logits"] = merged(input_ids=ids, use_cache=False).logits
    return t, margin, sel


def run_f64(init, ids, labels):
    pm = build(init, torch.float64)
    pm.zero_grad(set_to_none=True)
    mj.MARGINS = []
    with mj.float64_clean():
        outs, logits, lm_l, aux, total = mj.forward_parts(inner(pm), ids, labels, None)
        total.backward()
    margin = min(mj.MARGINS)
    mj.MARGINS = None
    k = inner(pm).config.num_experts_per_tok
    sel = [torch.topk(torch.softmax(z.detach(), -1), k, -1).indices for z in outs.router_logits]
    t = {
        "logits.f64": logits.detach(),
        "loss.f64": lm_l.detach().reshape(1),
        "aux_loss.f64": aux.detach().reshape(1),
        "total_loss.f64": total.detach().reshape(1),
    }
    for n, p in lora_params(pm):
        assert p.dtype == torch.float64
        t["grad." + n + ".f64"] = p.grad.detach().clone()
    return t, margin, sel


def train(init, ids, labels, dtype):
    """K AdamW steps on the LoRA parameters (objective: total loss), same batch every step."""
    pm = build(init, dtype)
    named = lora_params(pm)
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, **ADAMW)
    losses, after, margins = [], [], []
    mj.MARGINS = margins
    try:
        with mj.float64_clean():
            for _ in range(K_STEPS):
                opt.zero_grad(set_to_none=True)
                *_, total = mj.forward_parts(inner(pm), ids, labels, None)
                losses.append(total.item())
                total.backward()
                opt.step()
                after.append({n: p.detach().clone() for n, p in named})
            with torch.no_grad():
                *_, total_after = mj.forward_parts(inner(pm), ids, labels, None)
    finally:
        mj.MARGINS = None
    return losses, after, total_after.item(), min(margins)


def lora_json(lora: dict, scale: float, seed: int, names: list) -> dict:
    """fixture.json "lora" block of the Jamba and Mamba-2 peft fixtures."""
    return {
        "r": lora["r"],
        "lora_alpha": lora["lora_alpha"],
        "use_rslora": lora["use_rslora"],
        "scaling": scale,
        "scaling_formula": "lora_alpha / r",
        "target_modules": sorted(lora["target_modules"]),
        "lora_dropout": 0.0,
        "bias": "none",
        "task_type": "CAUSAL_LM",
        "init": f"lora_A and lora_B ~ {INIT_STD} * N(0, 1), float32, torch.Generator seeded "
        f"{seed}, drawn in the order of `tensors`",
        "seed": seed,
        "tensors": names,
    }


def train_json() -> dict:
    """fixture.json "train" block: K_STEPS float64 AdamW steps with ADAMW on one batch."""
    return {**adamw_json(K_STEPS, ADAMW), "grad_clip": None, "schedule": "constant"}


def reference_metadata(fx: dict, generator: str, name: str, base_name: str, **extra) -> dict:
    """reference.safetensors metadata of the Jamba / Mamba-2 peft fixtures (from fixture.json)."""
    return {
        "generator": generator,
        "fixture": name,
        "base_model": "../" + base_name,
        "versions": json.dumps(fx["versions"], sort_keys=True),
        "lora": json.dumps({k: v for k, v in fx["lora"].items() if k != "tensors"}, sort_keys=True),
        "train": json.dumps(fx["train"], sort_keys=True),
        "objective": fx["objective"],
        "doc": fx["doc"],
        **extra,
    }


def fixture_json(names: list, n_targets: int, info: dict) -> dict:
    return {
        "generator": GENERATOR,
        "doc": "data_scripts/JAMBA_FIXTURE.md",
        "base_model": "../" + BASE_NAME,
        "adapter_init": "adapter_init",
        "reference": "reference.safetensors",
        "inputs": f"input_ids/labels of ../{BASE_NAME}/reference.safetensors (copied into reference.safetensors); "
        "no attention_mask",
        "n_loss_targets": n_targets,
        "objective": "total_loss = loss + router_aux_loss_coef * aux_loss (HF output.loss with "
        "output_router_logits=True); router_aux_loss_coef from ../jamba-tiny/config.json",
        "versions": {
            "python": mj.platform.python_version(),
            "torch": torch.__version__,
            "torch_origin": mj.torch_origin(),
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
            "safetensors": mj.safetensors.__version__,
            "numpy": mj.np.__version__,
        },
        "lora": lora_json(LORA, scaling(), SEED, names),
        "train": train_json(),
        "checks": info,
    }


def start_fixture(name: str, base_name: str):
    """Empty tests/fixtures/<name>/ and the unpadded batch of the base fixture's reference.
    Returns (out_dir, log, input_ids, labels, number of loss targets)."""
    out_dir = os.path.join(FIXTURES, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    base_ref = load_file(os.path.join(FIXTURES, base_name, "reference.safetensors"))
    assert "attention_mask" not in base_ref
    ids, labels = base_ref["input_ids"], base_ref["labels"]
    return out_dir, [f"== {name}"], ids, labels, int((labels[:, 1:] != -100).sum())


def save_adapter(pm, out_dir: str, init: dict):
    """peft save_pretrained into <out_dir>/adapter_init (sorted target_modules, no README.md);
    the file must hold exactly `init`. Returns (adapter config, tensor names in module order)."""
    pm.create_or_update_model_card = lambda *_a, **_k: None  # no README.md (needs Jinja2, unused)
    pm.save_pretrained(os.path.join(out_dir, "adapter_init"))
    cfg = normalise_adapter_config(os.path.join(out_dir, "adapter_init", "adapter_config.json"))
    saved = load_file(os.path.join(out_dir, "adapter_init", "adapter_model.safetensors"))
    names = [n for n, _ in lora_params(pm)]
    assert list(get_peft_model_state_dict(pm).keys()) == names
    assert set(saved) == set(names) and all(torch.equal(saved[n], init[n]) for n in names)
    return cfg, names


def store_training(t: dict, names: list, losses: list, after: list, loss_after: float) -> None:
    """The AdamW keys of reference.safetensors: losses.f64 (before each step), after_steps.<n>
    (steps 1..K-1 stacked, rounded to float32: keeps the fixture small; the float64 run itself is
    not rounded), after_k.<n> (float64), loss_after_k.f64."""
    t["losses.f64"] = torch.tensor(losses, dtype=torch.float64)
    t["loss_after_k.f64"] = torch.tensor([loss_after], dtype=torch.float64)
    for n in names:
        t[f"after_steps.{n}"] = torch.stack([after[k][n] for k in range(K_STEPS - 1)]).float()
        t[f"after_k.{n}"] = after[-1][n]


def f32_vs_f64(t: dict, names: list, losses) -> dict:
    """Relative float32 vs float64 errors of the stored values (asserted small); the last loss of
    `losses` is the objective."""
    e = {"logits": mj.rel_err(t["logits"], t["logits.f64"])}
    for k in losses:
        e[k] = mj.rel_err(t[k], t[k + ".f64"])
    e["grad"] = max(mj.rel_err(t["grad." + n], t["grad." + n + ".f64"]) for n in names)
    e["merged_vs_unmerged_logits"] = mj.rel_err(t["merged_logits"], t["logits"])
    assert e["logits"] < 1e-5 and e[losses[-1]] < 1e-6 and e["grad"] < 1e-4, e
    assert e["merged_vs_unmerged_logits"] < 1e-5, e
    return e


def build_fixture() -> list:
    out_dir, log, ids, labels, n_targets = start_fixture(NAME, BASE_NAME)

    init = make_init()
    pm = build(init)
    cfg, names = save_adapter(pm, out_dir, init)
    router = inner(pm).model.layers[0].feed_forward.router
    assert router.scaling["default"] == scaling(), router.scaling
    del pm

    t = {"input_ids": ids.clone(), "labels": labels.clone()}
    t32, margin32, sel32 = run_f32(init, ids, labels)
    t64, margin64, sel64 = run_f64(init, ids, labels)
    assert all(torch.equal(a, b) for a, b in zip(sel32, sel64)), "float32 / float64 routing differs"
    t.update(t32)
    t.update(t64)
    losses, after, loss_after, margin_train = train(init, ids, labels, torch.float64)
    assert losses[0] == t["total_loss.f64"].item()
    store_training(t, names, losses, after, loss_after)
    assert min(margin32, margin64, margin_train) > mj.MIN_TOPK_MARGIN, (margin32, margin64, margin_train)

    # the same 5 steps with peft in float32 (not stored): how far a float32 run lands
    losses32, after32, _, _ = train(init, ids, labels, torch.float32)
    e_train32 = max((after32[-1][n].double() - after[-1][n]).abs().max().item() for n in names)
    e_upd32 = max(mj.rel_err(after32[-1][n].double() - init[n].double(), after[-1][n] - init[n].double()) for n in names)

    e = f32_vs_f64(t, names, ("loss", "aux_loss", "total_loss"))
    assert losses[-1] < losses[0] and loss_after < losses[-1]
    info = {
        "f32_vs_f64_rel": {k: float(f"{v:.2e}") for k, v in e.items()},
        "min_topk_margin": {"f32": float(f"{margin32:.3e}"), "f64": float(f"{margin64:.3e}"),
                            "f64_training_all_steps": float(f"{margin_train:.3e}")},
        "peft_float32_adamw_vs_after_k": {"max_abs": float(f"{e_train32:.2e}"), "update_rel": float(f"{e_upd32:.2e}")},
    }  # fmt: skip
    min_grad = min(t["grad." + n + ".f64"].abs().max().item() for n in names)
    log += [
        f"scaling {scaling()}; {len(names)} LoRA tensors, {sum(init[n].numel() for n in names)} parameters",
        f"loss f32 {t['loss'].item():.7f} aux {t['aux_loss'].item():.7f} total {t['total_loss'].item():.7f}; "
        f"total f64 {t['total_loss.f64'].item():.15f}",
        "losses.f64 " + " ".join(f"{x:.6f}" for x in losses) + f" -> {loss_after:.6f}",
        f"smallest per-tensor max |grad| (f64) {min_grad:.3e}",
        "checks " + json.dumps(info),
    ]

    fx = fixture_json(names, n_targets, info)
    md = reference_metadata(fx, GENERATOR, NAME, BASE_NAME)
    return log + write_fixture(out_dir, t, fx, md, cfg)


def main(argv=None) -> int:
    mj.deterministic_torch()
    print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}")
    for line in build_fixture():
        print(line)
    import check_jamba_peft_fixture

    return check_jamba_peft_fixture.main([])


if __name__ == "__main__":
    sys.exit(main())
