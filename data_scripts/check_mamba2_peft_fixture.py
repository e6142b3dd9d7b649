#!/usr/bin/env python3
"""Self-check of tests/fixtures/peft-lora-mamba2 (make_mamba2_peft_fixture.py).

  * layout: fixture.json, adapter_init/{adapter_config.json, adapter_model.safetensors} and
    reference.safetensors hold exactly the documented names, shapes and dtypes, adapter_config.json
    agrees with fixture.json, the tensor order is the module order (in_proj, out_proj per layer);
  * input_ids / labels are those of ../mamba2-tiny/reference.safetensors;
  * peft itself: PeftModel.from_pretrained(base, adapter_init) (with the tf5.25.0 mixer port)
    reproduces the stored float32 logits and loss; merge_and_unload() reproduces merged_logits;
  * the documented math: numpy's np_mamba2 (check_mamba2_fixtures.py) on W' = W + s B A
    reproduces logits.f64; the loss from the stored logits; a hand-written AdamW
    (check_jamba_peft_fixture.adamw_replay over f64_mamba2) replays the K steps;
  * float32 vs float64 agreement, size < 1 MB.

Usage: /tmp/fxenv/bin/python data_scripts/check_mamba2_peft_fixture.py [--root tests/fixtures]
Exit code 0 when everything passes.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from peft import PeftModel
from transformers import Mamba2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_mamba2_fixtures as m2  # noqa: E402
from check_jamba_peft_fixture import adamw_replay, check_main, fixture_size  # noqa: E402
from check_jamba_peft_fixture import expected_reference as jamba_expected_reference  # noqa: E402
from check_jamba_peft_fixture import open_fixture  # noqa: E402
from check_mamba2_fixtures import np_mamba2  # noqa: E402
from check_peft_fixture import expect, rel  # noqa: E402
from make_jamba_fixtures import lm_loss  # noqa: E402
from make_mamba2_peft_fixture import PREFIX, merged_params  # noqa: E402

NAME = "peft-lora-mamba2"


def expected_adapter(cfg, lora: dict) -> dict:
    """PEFT file name -> shape, in named_parameters() order."""
    D, r = cfg.hidden_size, lora["r"]
    I = int(cfg.expand * D)
    io = {"in_proj": (2 * I + 2 * cfg.n_groups * cfg.state_size + cfg.num_heads, D),
          "out_proj": (D, I)}  # fmt: skip
    out = {}
    for i in range(cfg.num_hidden_layers):
        for kind in ["in_proj", "out_proj"]:  # Mamba2Mixer registration order
            if kind in lora["target_modules"]:
                o, n = io[kind]
                mod = f"{PREFIX}backbone.layers.{i}.mixer.{kind}"
                out[f"{mod}.lora_A.weight"] = (r, n)
                out[f"{mod}.lora_B.weight"] = (o, r)
    return out


def expected_reference(cfg, adapter: dict, B: int, L: int, K: int) -> dict:
    return jamba_expected_reference(cfg, adapter, B, L, K, losses=("loss",))


def check(root: str) -> list:
    d = os.path.join(root, NAME)
    log = [f"== {NAME}"]
    fx, base, base64, want, init, scale, ref = open_fixture(
        d, Mamba2ForCausalLM, expected_adapter, expected_reference
    )
    expect(fx["semantics"] == m2.TF5, "semantics")
    cfg, tr = base.config, fx["train"]
    ids, labels = ref["input_ids"], ref["labels"]
    base_dir = os.path.normpath(os.path.join(d, fx["base_model"]))
    ad = os.path.join(d, fx["adapter_init"])
    for sfx, tol in [("", 2e-6), (".f64", 1e-13)]:
        e = rel(
            lm_loss(ref["logits" + sfx].double(), labels).reshape(1), ref["loss" + sfx].double()
        )
        expect(e < tol, f"loss{sfx} vs logits rel {e}")

    # peft reload (float32), with the mixer semantics of the base fixture
    pm = PeftModel.from_pretrained(base, ad)
    pm.eval()
    mixer = pm.base_model.model.backbone.layers[0].mixer
    expect(mixer.in_proj.scaling == {"default": scale}, "peft scaling")
    with torch.no_grad(), m2.semantics(m2.TF5):
        out = pm(input_ids=ids, labels=labels, use_cache=False)
        e1, e2 = rel(out.logits, ref["logits"]), rel(out.loss.reshape(1), ref["loss"])
        expect(max(e1, e2) < 1e-6, f"PeftModel.from_pretrained: logits {e1}, loss {e2}")
        merged = pm.merge_and_unload()
        ml = merged(input_ids=ids, use_cache=False).logits
    log.append(f"peft reload: logits rel {e1:.1e}, loss rel {e2:.1e}")
    e4, e5 = rel(ml, ref["merged_logits"]), rel(ref["merged_logits"], ref["logits"])
    expect(e4 < 1e-6 and e5 < 1e-5, f"merged logits: reload {e4}, vs unmerged {e5}")
    log.append(f"merge: reload rel {e4:.1e}; merged vs unmerged rel {e5:.1e}")

    # the documented math in numpy: W' = W + s B A, then np_mamba2
    Wn = {k: v.numpy() for k, v in merged_params(base64, {n: t.double() for n, t in init.items()},
                                                 scale).items()}  # fmt: skip
    with open(os.path.join(base_dir, "config.json")) as f:
        cfg_json = json.load(f)
    lg, _ = np_mamba2(Wn, cfg_json, ids.numpy(), None, m2.TF5, mask_conv=False)
    e6 = rel(torch.from_numpy(lg), ref["logits.f64"])
    expect(e6 < 1e-12, f"np_mamba2 with merged LoRA vs logits.f64: {e6}")
    log.append(f"numpy forward with W + sBA vs logits.f64: rel {e6:.1e}")

    e_l, e_t = rel(ref["logits"], ref["logits.f64"]), rel(ref["loss"], ref["loss.f64"])
    e_g = max(rel(ref["grad." + n], ref["grad." + n + ".f64"]) for n in want)
    expect(e_l < 1e-5 and e_t < 1e-6 and e_g < 1e-4, f"f32 vs f64: {e_l} {e_t} {e_g}")
    log.append(f"f32 vs f64: logits rel {e_l:.1e}, loss rel {e_t:.1e}, worst grad rel {e_g:.1e}")

    def objective(p):
        P = merged_params(base64, p, scale)
        return lm_loss(m2.f64_mamba2(P, cfg, ids, None, m2.TF5)[0], labels)

    leaves = {n: t.double().requires_grad_(True) for n, t in init.items()}
    objective(leaves).backward()
    e_g64 = max(rel(leaves[n].grad, ref["grad." + n + ".f64"]) for n in want)
    expect(e_g64 < 1e-10, f"f64 gradients: {e_g64}")
    losses, after, loss_after = adamw_replay(objective, init, tr)
    e_L = rel(torch.tensor(losses, dtype=torch.float64), ref["losses.f64"])
    e_a = rel(torch.tensor([loss_after], dtype=torch.float64), ref["loss_after_k.f64"])
    e_p = max(rel(after[-1][n], ref[f"after_k.{n}"]) for n in want)
    e_s = max(rel(torch.stack([after[k][n] for k in range(tr["steps"] - 1)]).float(),
                  ref[f"after_steps.{n}"]) for n in want)  # fmt: skip
    expect(e_p < 1e-10 and e_L < 1e-12 and e_a < 1e-12 and e_s < 2e-7,
           f"AdamW replay: params {e_p} losses {e_L} after {e_a} steps {e_s}")  # fmt: skip
    expect(losses[-1] < losses[0] and loss_after < losses[-1], "AdamW: loss does not decrease")
    log.append(
        f"AdamW replay: after_k rel {e_p:.1e}, losses rel {e_L:.1e}, after_steps rel {e_s:.1e}"
    )

    return log + [fixture_size(d)]


def main(argv=None) -> int:
    return check_main(__doc__, NAME, check, argv)


if __name__ == "__main__":
    sys.exit(main())
