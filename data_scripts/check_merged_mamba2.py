#!/usr/bin/env python3
"""Checks that transformers + peft load the Mamba-2 models and adapters ssmtune writes.

The Mamba-2 counterpart of check_merged_jamba.py / check_hf_interop.py. transformers 4.44.2's
Mamba-2 CPU path is wrong for sequences longer than one chunk (MAMBA2_FIXTURE.md), so every
transformers / peft forward here runs with make_mamba2_fixtures.torch_forward_v5 (the port of
transformers 5.25.0's torch path, = mamba_ssm's math, which ssmtune implements) patched over
Mamba2Mixer.torch_forward. In a temporary directory, for two bases made by `ssmtune init`
(vocab 12 = the tiny_unk tokenizer fixture, hidden 32, 2 layers, 8 heads of 8, state 8;
sequences of 6 to 24 tokens, so several chunks each):
  "untied": n_groups 2, chunk_size 4, in_proj/out_proj and conv biases, time_step_limit
            [0.0, Infinity] (Python's json writes it so; not JSON);
  "tied":   tied embeddings (no lm_head.weight), n_groups 4, chunk_size 3, conv 3, no biases,
            time_step_limit [0.01, 0.5] with dt initialised in [0.005, 1.0], so the clamp binds;
  1. base: Mamba2ForCausalLM.from_pretrained loads it with no missing, unexpected or
     mismatched keys, every parameter bit-identical to model.safetensors, lm_head tied as
     configured; config.json round-trips: the bare Infinity is there exactly when a bound is
     infinite and loads as inf, every sizes field loads as given, transformers' save_pretrained
     of the loaded model (make_mamba2_fixtures.save_model: 4.44.2 cannot save a tied Mamba-2
     by itself) writes the same config.json (transformers_version and _name_or_path aside),
     and ssmtune reads that directory back to a bit-identical loss; ssmtune's
     log-probabilities (`ssmtune eval --format tokens --json`, one label per call) equal
     transformers' for every vocabulary entry at one position and every next token of two
     sequences, and the mean token losses agree; how far unmodified 4.44.2 and an unclamped dt
     would be is printed for information;
  2. LoRA trained by `ssmtune train` (check_hf_interop.train_run: 20 steps on arithmetic
     progressions): "untied/lora-modules" r 4 on in_proj and out_proj; "untied/lora-slices"
     r 4 on in_proj.x, in_proj.B and layers.1.in_proj.dt; "tied/lora-emb" r 2, rslora, on
     in_proj.z, in_proj.C, out_proj and embeddings. peft 0.12.0's PeftModel.from_pretrained
     wraps exactly the expected modules (rows in transformers' z | x | B | C | dt order,
     computed here, not read from ssmtune) with ssmtune's rank and scale, holds every tensor of
     the file bit-identically, none at its init, B zero outside the slices' rows; peft's loss
     and log-probabilities equal `ssmtune eval --adapter`'s; the `ssmtune merge-adapter`
     directory loads in transformers (untied where a tied embedding got a LoRA) with logits
     equal to peft's unmerged model, weights equal to peft's merge_and_unload() (lm_head = the
     unmerged embedding in that case) and a transformers loss equal to `ssmtune eval`'s of it;
     peft's save_pretrained of the adapter drops ssmtune's metadata (`ssmtune.lora_terms`,
     which says which rows each slice owns) and ssmtune reads that copy back as whole-module
     LoRAs with the same loss;
  3. full fine-tuning (peft.full): <run>/model loads with the base's tensor names, every tensor
     trained, and ssmtune's log-probabilities and loss equal transformers'.

Tolerances (float32 on both sides, different operation orders): log-probabilities 1e-5
absolute (check_merged_jamba.py's); losses, merged logits and weights those of
check_hf_interop.py (LOSS_RTOL, LOGITS_ATOL, WEIGHT_ATOL; HF_INTEROP.md explains them).

Prints one line per check with the measured difference; exits 1 if any fails.
Usage: /tmp/fxenv/bin/python data_scripts/check_merged_mamba2.py build/apps/ssmtune/ssmtune
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys

import torch
from safetensors.torch import load_file
from transformers import Mamba2ForCausalLM

from peft import PeftModel

# Also sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (everything is local).
from check_hf_interop import (LOGITS_ATOL, MIN_EFFECT, WEIGHT_ATOL, check_loss,
                               check_peft_load, expected_modules, finish, forward, in_work_dir,
                               load_hf, make_sequences, max_abs, merge_diff, report, run,
                               ssmtune_eval, start, train_run, write_jsonl)
from check_merged_jamba import SSMTUNE_ATOL, TINY_TOKENIZER, TINY_VOCAB, ssmtune_logprob
from make_mamba2_fixtures import TF4, TF5, save_model, semantics

# vocab_size = the tokenizer fixture's 12 ids: ssmtune takes labels only below the tokenizer's size,
# so the whole vocabulary can be compared.
SHAPE = {"model_type": "mamba2", "vocab_size": TINY_VOCAB, "hidden_size": 32,
         "num_hidden_layers": 2, "expand": 2, "num_heads": 8, "head_dim": 8, "state_size": 8}
LORA = {"rank": 4, "alpha": 8}
RUNS = {
    "lora-modules": {"lora": dict(LORA, targets=["in_proj", "out_proj"])},
    "lora-slices": {"lora": dict(LORA, targets=["in_proj.x", "in_proj.B",
                                                "layers.1.in_proj.dt"])},
    "lora-emb": {"lora": {"targets": ["in_proj.z", "in_proj.C", "out_proj", "embeddings"],
                          "rank": 2, "alpha": 3, "rslora": True}},
    "full": {"full": True},
}
# label -> (sizes, init seed, runs)
BASES = {
    # time_step_limit (0, inf), written by Python's json as [0.0, Infinity]
    "untied": (dict(SHAPE, n_groups=2, conv_kernel=4, chunk_size=4, use_bias=True,
                    use_conv_bias=True, time_step_limit=[0.0, math.inf]), 5,
               ["lora-modules", "lora-slices", "full"]),
    # tied (no lm_head.weight), 4 groups of 2 heads, chunks of 3, no biases, a dt clamp that binds
    "tied": (dict(SHAPE, n_groups=4, conv_kernel=3, chunk_size=3, use_bias=False,
                  use_conv_bias=False, tie_word_embeddings=True, time_step_min=0.005,
                  time_step_max=1.0, time_step_limit=[0.01, 0.5]), 3, ["lora-emb", "full"]),
}


def mamba2_rows(cfg, site: str, part: str | None) -> range:
    """Rows of the weight a target updates, in transformers' layout: Mamba2Mixer splits
    in_proj's output into gate z (I), xBC (I + 2GN: x, then B, then C) and dt (H)."""
    I = int(cfg.expand * cfg.hidden_size)  # Mamba2Mixer.intermediate_size
    GN, H = cfg.n_groups * cfg.state_size, cfg.num_heads
    if site == "out_proj":
        assert part is None
        return range(cfg.hidden_size)
    parts = {"z": (0, I), "x": (I, I), "B": (2 * I, GN), "C": (2 * I + GN, GN),
             "dt": (2 * I + 2 * GN, H)}
    lo, n = (0, 2 * I + 2 * GN + H) if part is None else parts[part]
    return range(lo, lo + n)


@contextlib.contextmanager
def dt_limit(model, limit):
    """While active, every mixer clamps dt to `limit` (the port reads Mamba2Mixer's
    time_step_limit)."""
    mixers = [layer.mixer for layer in model.backbone.layers]
    old = [m.time_step_limit for m in mixers]
    for m in mixers:
        m.time_step_limit = limit
    try:
        yield
    finally:
        for m, o in zip(mixers, old):
            m.time_step_limit = o


def logprob_check(binary: str, work: str, label: str, hf_model, model_dir: str, seqs,
                  adapter: str | None = None) -> None:
    """ssmtune's log-probabilities (through eval, one label per call) against the transformers
    model's: every vocabulary entry at the last position of seqs[0], every next token of
    seqs[0] and seqs[1]."""
    diffs = []
    with torch.no_grad():
        logp = [torch.log_softmax(hf_model(torch.tensor([s]), use_cache=False).logits[0]
                                  .double(), -1) for s in seqs[:2]]
    s = seqs[0]
    for v in range(logp[0].shape[-1]):
        ours = ssmtune_logprob(binary, model_dir, work, s, len(s) - 1, v, adapter)
        diffs.append(abs(ours - float(logp[0][len(s) - 2, v])))
    for b, s in enumerate(seqs[:2]):
        for p in range(1, len(s)):
            ours = ssmtune_logprob(binary, model_dir, work, s, p, s[p], adapter)
            diffs.append(abs(ours - float(logp[b][p - 1, s[p]])))
    largest = max(float(lp.abs().max()) for lp in logp)
    report(max(diffs) <= SSMTUNE_ATOL, f"{label} log-probabilities transformers vs ssmtune",
           f"max |diff| {max(diffs):.2e} over {len(diffs)} values (tol {SSMTUNE_ATOL:.0e}; "
           f"|log p| up to {largest:.2f})")


def check_base(binary: str, work: str, label: str, sizes: dict, base: str, seqs,
               eval_path: str) -> tuple:
    """Step 1. Returns (base logits, base loss) of transformers."""
    written_text = open(os.path.join(base, "config.json")).read()
    written = json.loads(written_text)  # Python's json reads the bare Infinity
    model, bad = load_hf(base, Mamba2ForCausalLM)
    cfg = model.config
    lim = written.get("time_step_limit")
    fields = {k: (getattr(cfg, k), written.get(k)) for k in sizes}
    wrong = {k: v for k, v in fields.items()
             if not (v[0] == sizes[k] == v[1]
                     or k == "time_step_limit" and list(v[0]) == sizes[k] == v[1])}
    inf_ok = ("Infinity" in written_text) == (math.inf in sizes["time_step_limit"])
    tied = model.lm_head.weight is model.backbone.embeddings.weight
    report(inf_ok and lim == sizes["time_step_limit"] and not wrong
           and tied == sizes.get("tie_word_embeddings", False),
           f"{label} config.json from ssmtune init",
           f"time_step_limit written {json.dumps(lim)}, loads as {tuple(cfg.time_step_limit)}; "
           f"{len(sizes)} sizes fields as given; lm_head tied: {tied}"
           if not wrong else f"differ: {wrong}")
    stored = load_file(os.path.join(base, "model.safetensors"))
    params = dict(model.named_parameters())
    same = set(params) == set(stored) and all(
        torch.equal(params[k].detach(), stored[k]) for k in stored)
    report(not bad and same, f"{label} Mamba2ForCausalLM.from_pretrained(ssmtune init)",
           f"loading info {bad or 'clean'}; {len(stored)} tensors bit-identical to the file"
           if same else f"parameters differ from model.safetensors; loading info {bad}")

    # transformers writes it back; ssmtune reads transformers' directory.
    rt = os.path.join(work, f"base-{label}-saved-by-transformers")
    save_model(model, rt, None)  # 4.44.2 cannot save a tied Mamba-2 itself (MAMBA2_FIXTURE.md)
    for f in os.listdir(TINY_TOKENIZER):
        shutil.copy(os.path.join(TINY_TOKENIZER, f), rt)
    theirs = json.load(open(os.path.join(rt, "config.json")))
    for k in ("transformers_version", "_name_or_path"):  # provenance, which ssmtune tolerates
        theirs.pop(k, None)
    diff = sorted(k for k in set(theirs) | set(written) if theirs.get(k) != written.get(k))
    a, b = ssmtune_eval(binary, base, eval_path), ssmtune_eval(binary, rt, eval_path)
    report(not diff and a["metrics"]["loss"] == b["metrics"]["loss"],
           f"{label} config.json round trip ssmtune -> transformers -> ssmtune",
           f"save_pretrained writes ssmtune's config.json (all {len(written)} keys equal, "
           f"transformers_version and _name_or_path aside); ssmtune eval on it: loss "
           f"{b['metrics']['loss']} = {a['metrics']['loss']}" if not diff
           else f"keys that differ: {diff}")

    with semantics(TF4):  # unmodified 4.44.2, only to show that the port matters here
        old_logits = forward(model, seqs)[0]
    with semantics(TF5):
        logits, loss, n = forward(model, seqs)
        logprob_check(binary, work, f"{label} base", model, base, seqs)
        with dt_limit(model, (0.0, math.inf)):
            unclamped = forward(model, seqs)[0]
    check_loss(f"{label} base loss transformers vs ssmtune eval", loss, n, a, None)
    print(f"     (information: unmodified transformers 4.44.2 differs from the port by up to "
          f"{max_abs(old_logits, logits):.2e} in these logits, chunk_size {cfg.chunk_size} < L, "
          f"n_groups {cfg.n_groups}; removing the dt clamp would change them by "
          f"{max_abs(unclamped, logits):.2e})")
    return logits, loss


def check_lora(binary: str, work: str, label: str, base: str, lora_cfg: dict, adapter: str,
               seqs, eval_path: str, base_logits, base_loss: float) -> None:
    """Steps 2 and 3."""
    base_model, _ = load_hf(base, Mamba2ForCausalLM)
    cfg = base_model.config
    orig = {k: v.clone() for k, v in base_model.state_dict().items()}
    model = PeftModel.from_pretrained(base_model, adapter)
    model.eval()
    rslora = lora_cfg.get("rslora", False)
    scale = lora_cfg["alpha"] / (math.sqrt(lora_cfg["rank"]) if rslora else lora_cfg["rank"])
    want = expected_modules(cfg, lora_cfg["targets"], lora_cfg["rank"], mamba2_rows)
    check_peft_load(label, model, adapter, want, scale, rslora)
    # A LoRA on a tied embedding leaves peft's lm_head alone: ssmtune's merge unties
    # (HF_INTEROP.md notes), peft's merge_and_unload moves the shared matrix.
    untie = cfg.tie_word_embeddings and "backbone.embeddings" in want

    with semantics(TF5):
        peft_logits, peft_loss, n = forward(model, seqs)
        effect = max_abs(peft_logits, base_logits)
        report(effect >= MIN_EFFECT, f"{label} adapter effect",
               f"max |logits(peft) - logits(base)| = {effect:.3e} (must be >= {MIN_EFFECT:.0e})")
        check_loss(f"{label} loss peft vs ssmtune eval --adapter", peft_loss, n,
                   ssmtune_eval(binary, base, eval_path, adapter), abs(peft_loss - base_loss))
        logprob_check(binary, work, f"{label} (peft; ssmtune --adapter)", model, base, seqs,
                      adapter)

        merged_dir = os.path.join(work, "merged-" + label.replace("/", "-"))
        run([binary, "merge-adapter", "--model", base, "--adapter", adapter, "--out",
             merged_dir])
        merged, bad = load_hf(merged_dir, Mamba2ForCausalLM)
        report(not bad and merged.config.tie_word_embeddings == (cfg.tie_word_embeddings
                                                                 and not untie),
               f"{label} merged loads in Mamba2ForCausalLM",
               f"loading info {bad or 'clean'}, tie_word_embeddings "
               f"{merged.config.tie_word_embeddings}")
        merged_logits, merged_loss, _ = forward(merged, seqs)
        d = max_abs(merged_logits, peft_logits)
        largest = max(float(x.abs().max()) for x in peft_logits)
        report(d <= LOGITS_ATOL, f"{label} merged logits vs peft (unmerged)",
               f"max abs {d:.2e}, rel {d / largest:.2e} of max |logit| {largest:.2f} "
               f"(tol abs {LOGITS_ATOL:.0e})")
        check_loss(f"{label} merged loss transformers vs ssmtune eval", merged_loss, n,
                   ssmtune_eval(binary, merged_dir, eval_path), None)
    reference = model.merge_and_unload().state_dict()
    if untie:
        reference["lm_head.weight"] = orig["backbone.embeddings.weight"]
    worst, where, problems, changed = merge_diff(merged.state_dict(), reference, orig)
    report(not problems and worst <= WEIGHT_ATOL, f"{label} merged weights vs peft "
           "merge_and_unload", f"max abs {worst:.2e} ({where or 'all equal'}), tol "
           f"{WEIGHT_ATOL:.0e}; {changed} tensors changed from the base"
           if not problems else "; ".join(problems))

    # What peft makes of ssmtune's own metadata: its save_pretrained drops it, and ssmtune reads
    # the copy as whole-module LoRAs (for slices: B zero outside their rows), the same model.
    meta = load_file_metadata(os.path.join(adapter, "adapter_model.safetensors"))
    resaved = os.path.join(work, "peft-resaved-" + label.replace("/", "-"))
    pm = PeftModel.from_pretrained(load_hf(base, Mamba2ForCausalLM)[0], adapter)
    pm.create_or_update_model_card = lambda *_a, **_k: None  # no README.md (needs Jinja2)
    pm.save_pretrained(resaved)
    kept = load_file_metadata(os.path.join(resaved, "adapter_model.safetensors"))
    check_loss(f"{label} peft's save_pretrained copy (metadata {sorted(meta)} -> "
               f"{sorted(kept)}): loss peft vs ssmtune eval --adapter COPY", peft_loss, n,
               ssmtune_eval(binary, base, eval_path, resaved), None)


def load_file_metadata(path: str) -> dict:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n)).get("__metadata__", {})


def check_full(binary: str, work: str, label: str, base: str, model_dir: str, seqs,
               eval_path: str, base_loss: float) -> None:
    """Step 4."""
    model, bad = load_hf(model_dir, Mamba2ForCausalLM)
    base_state = load_hf(base, Mamba2ForCausalLM)[0].state_dict()
    state = model.state_dict()
    moved = sum(not torch.equal(state[k], base_state[k]) for k in base_state if k in state)
    report(not bad and set(state) == set(base_state) and moved == len(base_state),
           f"{label} model loads in Mamba2ForCausalLM",
           f"loading info {bad or 'clean'}, the base's {len(base_state)} tensor names, {moved} "
           "trained away from the base")
    with semantics(TF5):
        _, loss, n = forward(model, seqs)
        check_loss(f"{label} loss transformers vs ssmtune eval --model run/model", loss, n,
                   ssmtune_eval(binary, model_dir, eval_path), abs(loss - base_loss))
        logprob_check(binary, work, label, model, model_dir, seqs)


def main() -> int:
    args = start(__doc__, " with the 5.25.0 Mamba-2 port")
    binary = args.ssmtune

    def body(work: str) -> None:
        rng = random.Random(2024)
        tiny = lambda seqs: [[2 + t % (TINY_VOCAB - 2) for t in s] for s in seqs]  # noqa: E731
        train_path, eval_path = os.path.join(work, "train.jsonl"), os.path.join(work, "eval.jsonl")
        write_jsonl(train_path, tiny(make_sequences(rng, 64)))
        seqs = tiny(make_sequences(rng, 8))
        write_jsonl(eval_path, seqs)
        for base_label, (sizes, seed, runs) in BASES.items():
            sizes_path = os.path.join(work, f"sizes-{base_label}.json")
            base = os.path.join(work, f"base-{base_label}")
            with open(sizes_path, "w") as f:
                json.dump(sizes, f)  # an infinite bound is written as Infinity (not JSON)
            run([binary, "init", sizes_path, "--out", base, "--seed", str(seed), "--tokenizer",
                 TINY_TOKENIZER])
            base_logits, base_loss = check_base(binary, work, base_label, sizes, base, seqs,
                                                eval_path)
            for run_label in runs:
                label, peft_cfg = f"{base_label}/{run_label}", RUNS[run_label]
                try:
                    run_dir = train_run(binary, work, f"{base_label}-{run_label}", base,
                                        train_path, peft_cfg)
                    if "lora" in peft_cfg:
                        check_lora(binary, work, label, base, peft_cfg["lora"],
                                   os.path.join(run_dir, "adapter"), seqs, eval_path,
                                   base_logits, base_loss)
                    else:
                        check_full(binary, work, label, base, os.path.join(run_dir, "model"),
                                   seqs, eval_path, base_loss)
                except Exception as e:  # a load error is a failed check, not the end of the run
                    report(False, label, f"{type(e).__name__}: {e}")

    in_work_dir(args.keep, "ssmtune-merged-mamba2-", body)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
