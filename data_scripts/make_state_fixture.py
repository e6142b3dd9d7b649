#!/usr/bin/env python3
"""Generate tests/fixtures/state-tuning/: an independent float64 PyTorch reference for ssmtune's
state-based PEFT methods (initial-state tuning, state-offset tuning h and y; docs/methods.md
section 4).

The methods are written here from docs/methods.md section 4 on top of transformers'
`MambaMixer.slow_forward` (the sequential scan), not from ssmtune's C++ (lib/peft/state_tuning):
per Mamba layer i
    initial-state tuning    H0 (E, N):  the scan starts from h_0 = H0 for every sequence of the
                            batch (instead of zeros)
    state-offset tuning h   h' (E, N):  y_t[d] += sum_n C_t[n] h'[d, n]   (the recurrence keeps
                            the unmodified h_t)
    state-offset tuning y   y' (E):     y_t[d] += y'[d]
where y_t = sum_n C_t[n] h_t[d, n] + D[d] x_t[d] is the scan output before the gate SiLU(z_t).
Both offsets are additive terms of y before the gate, so where they sit relative to D x_t does
not matter. Gradients come from torch autograd.

Two variants, each with seeded N(0, 0.1^2) float64 parameter values (non-zero, so that every term
and every gradient path is exercised):
    a   initial-state tuning + state-offset tuning h   (seed 5151)
    b   state-offset tuning y only                     (seed 5252)

Everything runs in float64 on the committed base model tests/fixtures/mamba-tiny (referred to, not
copied). transformers 4.44.2 rounds to float32 inside its Mamba code even for a float64 model; those
casts are removed by make_peft_fixture.py's `float64_clean` patch (imported, so the two fixtures use
one definition); its clean slow forward (`_slow_forward_clean`) applies the three terms when a
mixer carries them in `state_terms`, which this script sets. The script checks that
  * zero parameters reproduce the plain float64 model (no terms) bit for bit, and that model agrees with mamba-tiny/reference_f64.safetensors (an independent
    float64 implementation in make_fixtures.py) to 1e-12;
  * with the non-zero values, every parameter gradient has no zero element.

reference.safetensors (all float64 except input_ids/labels, int64):
    input_ids, labels               copied from mamba-tiny/reference.safetensors, (B, L)
    <v>.<name>                      the parameter values, v in {a, b}; names as ssmtune's
                                    StateTuning::append_trainables:
                                    initial_state.layers.I.h0 (E, N), state_offset.layers.I.h (E, N),
                                    state_offset.layers.I.y (E)
    <v>.logits (B, L, V), <v>.loss (1) mean cross-entropy over labels[:, 1:] != -100 (HF shift)
    <v>.grad.<name>                 d loss / d parameter
Its metadata and fixture.json record the versions, seeds and the method.

Consumer: tests/peft_state_parity_test.cpp ([state-parity]).
Usage (environment: data_scripts/README.md; imports make_peft_fixture.py, so peft and accelerate
must be installed as described there):
    /tmp/fxenv/bin/python data_scripts/make_state_fixture.py
Deterministic: two runs give byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types

import torch
import transformers
from safetensors.torch import load_file
from transformers import MambaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, HERE)
from make_fixtures import save_deterministic  # noqa: E402
from make_peft_fixture import float64_clean, forward_loss, versions  # noqa: E402

GENERATOR = "data_scripts/make_state_fixture.py"
BASE_NAME = "mamba-tiny"
OUT_NAME = "state-tuning"
INIT_STD = 0.1

VARIANTS = [
    dict(prefix="a", seed=5151, initial_state=True, state_offset="h"),
    dict(prefix="b", seed=5252, initial_state=False, state_offset="y"),
]


def load_base():
    model = MambaForCausalLM.from_pretrained(os.path.join(FIXTURES, BASE_NAME)).to(torch.float64)
    model.eval()  # Mamba has no dropout; use_mambapy is off, so slow_forward runs
    for p in model.parameters():
        p.requires_grad_(False)  # frozen base: only the state parameters get gradients
    return model


def run(model, params: dict, ids, labels):
    """(logits, loss) in float64 with `params` (ssmtune name -> tensor) as the state terms that
    make_peft_fixture's clean slow forward applies; params = None runs it without terms."""
    # float64_clean and forward_loss take a peft model and only use its .base_model.model
    shim = types.SimpleNamespace(base_model=types.SimpleNamespace(model=model))
    layers = model.backbone.layers
    for blk in layers:
        blk.mixer.state_terms = {}
    for name, t in (params or {}).items():
        _, _, i, key = name.split(".")  # "<method>.layers.<i>.<h0|h|y>"
        layers[int(i)].mixer.state_terms[key] = t
    with float64_clean(shim):
        return forward_loss(shim, ids, labels)


def param_shapes(v: dict, n_layer: int, E: int, N: int) -> dict:
    """ssmtune's names and shapes, in StateTuning::append_trainables order."""
    out = {}
    if v["initial_state"]:
        for i in range(n_layer):
            out[f"initial_state.layers.{i}.h0"] = (E, N)
    for i in range(n_layer):
        out[f"state_offset.layers.{i}.{v['state_offset']}"] = (E, N) if v["state_offset"] == "h" else (E,)
    return out


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def main() -> int:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()  # silences the 'fast path is not available' notice
    base_ref = load_file(os.path.join(FIXTURES, BASE_NAME, "reference.safetensors"))
    f64_ref = load_file(os.path.join(FIXTURES, BASE_NAME, "reference_f64.safetensors"))
    ids, labels = base_ref["input_ids"], base_ref["labels"]
    model = load_base()
    cfg = model.config
    n_layer, E, N = cfg.num_hidden_layers, cfg.intermediate_size, cfg.state_size
    print(" ".join(f"{k} {v}" for k, v in versions().items()))

    with torch.no_grad():
        plain_logits, plain_loss = run(model, None, ids, labels)
    e = rel(plain_logits, f64_ref["logits"])
    print(f"plain clean float64 vs mamba-tiny reference_f64: logits rel err {e:.2e}")
    assert e < 1e-12 and rel(plain_loss.reshape(1), f64_ref["loss"]) < 1e-12, e

    t = {"input_ids": ids.clone(), "labels": labels.clone()}
    fx_variants = {}
    for v in VARIANTS:
        shapes = param_shapes(v, n_layer, E, N)
        # Zero parameters: the state terms must change no bit of the plain model.
        zeros = {n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()}
        with torch.no_grad():
            z_logits, z_loss = run(model, zeros, ids, labels)
        assert torch.equal(z_logits, plain_logits) and torch.equal(z_loss, plain_loss), v["prefix"]

        g = torch.Generator().manual_seed(v["seed"])
        params = {
            n: (INIT_STD * torch.randn(s, generator=g, dtype=torch.float64)).requires_grad_()
            for n, s in shapes.items()
        }
        logits, loss = run(model, params, ids, labels)
        loss.backward()
        p = v["prefix"]
        t[f"{p}.logits"] = logits.detach().contiguous()
        t[f"{p}.loss"] = loss.detach().reshape(1)
        for n, x in params.items():
            assert x.grad is not None and torch.count_nonzero(x.grad) == x.grad.numel(), (p, n)
            t[f"{p}.{n}"] = x.detach().clone()
            t[f"{p}.grad.{n}"] = x.grad.detach().clone()
        print(
            f"{p}: initial_state {v['initial_state']} state_offset {v['state_offset']}: loss {loss.item():.15f} "
            f"(plain {plain_loss.item():.15f}), logits moved {rel(logits.detach(), plain_logits):.3f} rel, "
            + ", ".join(f"|grad {n}|max {params[n].grad.abs().max().item():.3e}" for n in shapes)
        )
        fx_variants[p] = {
            "initial_state": v["initial_state"],
            "state_offset": v["state_offset"],
            "seed": v["seed"],
            "init": f"{INIT_STD} * N(0, 1), float64, torch.Generator seeded {v['seed']}, "
            "drawn in the order of `tensors`",
            "tensors": list(shapes),
        }

    method = (
        "float64; transformers MambaMixer.slow_forward without its float32 casts "
        "(make_peft_fixture.float64_clean) plus docs/methods.md section 4: h_0 = H0 for every "
        "sequence; y_t += C_t h'; y_t += y' (both before the gate); autograd gradients; frozen base"
    )
    fx = {
        "generator": GENERATOR,
        "base_model": "../" + BASE_NAME,
        "reference": "reference.safetensors",
        "inputs": f"input_ids/labels of ../{BASE_NAME}/reference.safetensors (copied into reference.safetensors)",
        "method": method,
        "loss": "mean cross-entropy of logits[:, :-1] vs labels[:, 1:] over labels != -100",
        "versions": versions(),
        "variants": fx_variants,
        "consumer": "tests/peft_state_parity_test.cpp",
    }
    md = {
        "generator": GENERATOR,
        "base_model": "../" + BASE_NAME,
        "method": method,
        "versions": json.dumps(fx["versions"], sort_keys=True),
        "variants": json.dumps(fx_variants, sort_keys=True),
    }
    out_dir = os.path.join(FIXTURES, OUT_NAME)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    t = {k: x.contiguous() for k, x in t.items()}
    path = os.path.join(out_dir, "reference.safetensors")
    save_deterministic(t, path, metadata=md)
    with open(os.path.join(out_dir, "fixture.json"), "w") as f:
        f.write(json.dumps(fx, indent=2, sort_keys=True) + "\n")
    back = load_file(path)
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)
    size = os.path.getsize(path)
    assert size < 300_000, size
    print(f"wrote {os.path.relpath(path, ROOT)} ({size} B), {len(t)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
