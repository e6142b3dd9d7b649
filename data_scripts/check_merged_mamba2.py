#!/usr/bin/env python3
"""Checks that transformers + peft load the Mamba-2 models and adapters ssmtune writes.

The Mamba-2 counterpart of check_merged_jamba.py / check_hf_interop.py. transformers 4.44.2's
Mamba-2 CPU path is wrong for sequences longer than one chunk (MAMBA2_FIXTURE.md), so every
transformers / peft forward here runs with make_mamba2_fixtures.torch_forward_v5 (the port of
transformers 5.25.0's torch path, = mamba_ssm's math, which ssmtune implements) patched over
Mamba2Mixer.torch_forward. In a temporary directory:
  1. base: `ssmtune init` of a small Mamba-2 (vocab 12, hidden 32, 2 layers, 8 heads of 8,
     n_groups 2, state 8, chunk_size 4 against sequences of 6 to 24 tokens: 2 to 6 chunks,
     in_proj/out_proj biases) from a sizes file Python's json writes with time_step_limit
     [0.0, Infinity]; Mamba2ForCausalLM.from_pretrained loads it with no missing, unexpected or
     mismatched keys and every parameter bit-identical to model.safetensors; config.json
     round-trips: the bare Infinity is there and loads as inf, every sizes field loads as given,
     transformers' own save_pretrained of the loaded model writes the same config.json
     (transformers_version and _name_or_path aside) and ssmtune reads that directory back to a
     bit-identical loss;
     ssmtune's log-probabilities (`ssmtune eval --format tokens --json`, one label per call)
     equal transformers' for every vocabulary entry at one position and every next token of
     two sequences, and the mean token losses agree; unmodified 4.44.2 is shown to differ;
  2. LoRA r 4 on in_proj and out_proj trained by `ssmtune train` (20 steps on arithmetic
     progressions): peft 0.12.0's PeftModel.from_pretrained wraps exactly those modules with
     ssmtune's scale, holds every tensor of the file bit-identically and none at its init;
     peft's loss and log-probabilities equal `ssmtune eval --adapter`'s; the
     `ssmtune merge-adapter` directory loads in transformers with logits equal to peft's
     unmerged model, weights equal to peft's merge_and_unload() and a transformers loss equal
     to `ssmtune eval` of that directory;
  3. LoRA on in_proj slices (in_proj.x, in_proj.B and layers.1.in_proj.dt; rows in
     transformers' z | x | B | C | dt order computed here, not read from ssmtune): the merged
     directory loads and matches as in 2; the adapter file is peft's layout with B zero outside
     the slices' rows (peft loads it and computes the same loss) plus ssmtune's own metadata
     (`ssmtune_terms`), which peft ignores; peft's save_pretrained of it drops the metadata and
     ssmtune reads that copy back as whole-module LoRAs with the same loss;
  4. full fine-tuning (peft.full): <run>/model loads with the base's tensor names, every tensor
     trained, and ssmtune's log-probabilities and loss equal transformers'.

Tolerances (float32 on both sides, different operation orders): log-probabilities 1e-5
absolute (check_merged_jamba.py's); losses, merged logits and weights those of
check_hf_interop.py (LOSS_RTOL, LOGITS_ATOL, WEIGHT_ATOL; HF_INTEROP.md explains them).

Prints one line per check with the measured difference; exits 1 if any fails.
Usage: /tmp/fxenv/bin/python data_scripts/check_merged_mamba2.py build/apps/ssmtune/ssmtune
"""

from __future__ import annotations

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
from make_mamba2_fixtures import TF4, TF5, semantics

# vocab_size = the tokenizer fixture's 12 ids: ssmtune takes labels only below the tokenizer's size,
# so the whole vocabulary can be compared.
SIZES = {"model_type": "mamba2", "vocab_size": TINY_VOCAB, "hidden_size": 32,
         "num_hidden_layers": 2, "expand": 2, "num_heads": 8, "head_dim": 8, "n_groups": 2,
         "state_size": 8, "conv_kernel": 4, "chunk_size": 4, "use_bias": True,
         "use_conv_bias": True, "time_step_limit": [0.0, math.inf]}
LORA = {"rank": 4, "alpha": 8}
RUNS = {
    "lora-modules": {"lora": dict(LORA, targets=["in_proj", "out_proj"])},
    "lora-slices": {"lora": dict(LORA, targets=["in_proj.x", "in_proj.B",
                                                "layers.1.in_proj.dt"])},
    "full": {"full": True},
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


def check_base(binary: str, work: str, base: str, seqs, eval_path: str) -> tuple:
    """Step 1. Returns (base logits, base loss) of transformers."""
    written_text = open(os.path.join(base, "config.json")).read()
    written = json.loads(written_text)  # Python's json reads the bare Infinity
    model, bad = load_hf(base, Mamba2ForCausalLM)
    cfg = model.config
    lim = written.get("time_step_limit")
    fields = {k: (getattr(cfg, k), written.get(k)) for k in SIZES}
    wrong = {k: v for k, v in fields.items()
             if not (v[0] == SIZES[k] == v[1]
                     or k == "time_step_limit" and list(v[0]) == SIZES[k] == v[1])}
    report("Infinity" in written_text and lim == [0.0, math.inf] and not wrong,
           "config.json from ssmtune init",
           f"time_step_limit written {json.dumps(lim)}, loads as {tuple(cfg.time_step_limit)}; "
           f"{len(SIZES)} sizes fields as given" if not wrong else f"differ: {wrong}")
    stored = load_file(os.path.join(base, "model.safetensors"))
    params = dict(model.named_parameters())
    same = set(params) == set(stored) and all(
        torch.equal(params[k].detach(), stored[k]) for k in stored)
    report(not bad and same, "Mamba2ForCausalLM.from_pretrained(ssmtune init)",
           f"loading info {bad or 'clean'}; {len(stored)} tensors bit-identical to the file"
           if same else f"parameters differ from model.safetensors; loading info {bad}")

    # transformers writes it back; ssmtune reads transformers' directory.
    rt = os.path.join(work, "base-saved-by-transformers")
    model.save_pretrained(rt, safe_serialization=True)
    for f in os.listdir(TINY_TOKENIZER):
        shutil.copy(os.path.join(TINY_TOKENIZER, f), rt)
    theirs = json.load(open(os.path.join(rt, "config.json")))
    for k in ("transformers_version", "_name_or_path"):  # provenance, which ssmtune tolerates
        theirs.pop(k, None)
    diff = sorted(k for k in set(theirs) | set(written) if theirs.get(k) != written.get(k))
    a, b = ssmtune_eval(binary, base, eval_path), ssmtune_eval(binary, rt, eval_path)
    report(not diff and a["metrics"]["loss"] == b["metrics"]["loss"],
           "config.json round trip ssmtune -> transformers -> ssmtune",
           f"save_pretrained writes ssmtune's config.json (all {len(written)} keys equal, "
           f"transformers_version and _name_or_path aside); ssmtune eval on it: loss "
           f"{b['metrics']['loss']} = {a['metrics']['loss']}" if not diff
           else f"keys that differ: {diff}")

    with semantics(TF4):  # unmodified 4.44.2, only to show that the port matters here
        old_logits = forward(model, seqs)[0]
    with semantics(TF5):
        logits, loss, n = forward(model, seqs)
        logprob_check(binary, work, "base", model, base, seqs)
    check_loss("base loss transformers vs ssmtune eval", loss, n, a, None)
    print(f"     (unmodified transformers 4.44.2 differs from the port by up to "
          f"{max_abs(old_logits, logits):.2e} in these logits: chunk_size "
          f"{cfg.chunk_size} < L, n_groups {cfg.n_groups})")
    return logits, loss


def check_lora(binary: str, work: str, label: str, base: str, lora_cfg: dict, adapter: str,
               seqs, eval_path: str, base_logits, base_loss: float) -> None:
    """Steps 2 and 3."""
    base_model, _ = load_hf(base, Mamba2ForCausalLM)
    cfg = base_model.config
    orig = {k: v.clone() for k, v in base_model.state_dict().items()}
    model = PeftModel.from_pretrained(base_model, adapter)
    model.eval()
    scale = lora_cfg["alpha"] / lora_cfg["rank"]
    want = expected_modules(cfg, lora_cfg["targets"], lora_cfg["rank"], mamba2_rows)
    check_peft_load(label, model, adapter, want, scale, False)

    with semantics(TF5):
        peft_logits, peft_loss, n = forward(model, seqs)
        effect = max_abs(peft_logits, base_logits)
        report(effect >= MIN_EFFECT, f"{label} adapter effect",
               f"max |logits(peft) - logits(base)| = {effect:.3e} (must be >= {MIN_EFFECT:.0e})")
        check_loss(f"{label} loss peft vs ssmtune eval --adapter", peft_loss, n,
                   ssmtune_eval(binary, base, eval_path, adapter), abs(peft_loss - base_loss))
        logprob_check(binary, work, f"{label} (peft; ssmtune --adapter)", model, base, seqs,
                      adapter)

        merged_dir = os.path.join(work, f"merged-{label}")
        run([binary, "merge-adapter", "--model", base, "--adapter", adapter, "--out",
             merged_dir])
        merged, bad = load_hf(merged_dir, Mamba2ForCausalLM)
        report(not bad, f"{label} merged loads in Mamba2ForCausalLM",
               f"loading info {bad or 'clean'}")
        merged_logits, merged_loss, _ = forward(merged, seqs)
        d = max_abs(merged_logits, peft_logits)
        largest = max(float(x.abs().max()) for x in peft_logits)
        report(d <= LOGITS_ATOL, f"{label} merged logits vs peft (unmerged)",
               f"max abs {d:.2e}, rel {d / largest:.2e} of max |logit| {largest:.2f} "
               f"(tol abs {LOGITS_ATOL:.0e})")
        check_loss(f"{label} merged loss transformers vs ssmtune eval", merged_loss, n,
                   ssmtune_eval(binary, merged_dir, eval_path), None)
    worst, where, problems, changed = merge_diff(merged.state_dict(),
                                                 model.merge_and_unload().state_dict(), orig)
    report(not problems and worst <= WEIGHT_ATOL, f"{label} merged weights vs peft "
           "merge_and_unload", f"max abs {worst:.2e} ({where or 'all equal'}), tol "
           f"{WEIGHT_ATOL:.0e}; {changed} tensors changed from the base"
           if not problems else "; ".join(problems))

    # What peft makes of ssmtune's own metadata: its save_pretrained drops it, and ssmtune reads
    # the copy as whole-module LoRAs (for slices: B zero outside their rows), the same model.
    meta = load_file_metadata(os.path.join(adapter, "adapter_model.safetensors"))
    resaved = os.path.join(work, f"peft-resaved-{label}")
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


def check_full(binary: str, work: str, base: str, model_dir: str, seqs, eval_path: str,
               base_loss: float) -> None:
    """Step 4."""
    model, bad = load_hf(model_dir, Mamba2ForCausalLM)
    base_state = load_hf(base, Mamba2ForCausalLM)[0].state_dict()
    state = model.state_dict()
    moved = sum(not torch.equal(state[k], base_state[k]) for k in base_state if k in state)
    report(not bad and set(state) == set(base_state) and moved == len(base_state),
           "full model loads in Mamba2ForCausalLM",
           f"loading info {bad or 'clean'}, the base's {len(base_state)} tensor names, {moved} "
           "trained away from the base")
    with semantics(TF5):
        _, loss, n = forward(model, seqs)
        check_loss("full loss transformers vs ssmtune eval --model run/model", loss, n,
                   ssmtune_eval(binary, model_dir, eval_path), abs(loss - base_loss))
        logprob_check(binary, work, "full", model, model_dir, seqs)


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
        sizes_path, base = os.path.join(work, "sizes.json"), os.path.join(work, "base")
        with open(sizes_path, "w") as f:
            json.dump(SIZES, f)  # time_step_limit [0.0, Infinity]: Python's json extension
        run([binary, "init", sizes_path, "--out", base, "--seed", "5", "--tokenizer",
             TINY_TOKENIZER])
        base_logits, base_loss = check_base(binary, work, base, seqs, eval_path)

        for label, peft_cfg in RUNS.items():
            try:
                run_dir = train_run(binary, work, label, base, train_path, peft_cfg)
                if "lora" in peft_cfg:
                    check_lora(binary, work, label, base, peft_cfg["lora"],
                               os.path.join(run_dir, "adapter"), seqs, eval_path, base_logits,
                               base_loss)
                else:
                    check_full(binary, work, base, os.path.join(run_dir, "model"), seqs,
                               eval_path, base_loss)
            except Exception as e:  # a load error is a failed check, not the end of the run
                report(False, label, f"{type(e).__name__}: {e}")

    in_work_dir(args.keep, "ssmtune-merged-mamba2-", body)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
