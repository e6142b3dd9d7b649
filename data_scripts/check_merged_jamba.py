#!/usr/bin/env python3
"""Checks that transformers loads a bf16, sharded Jamba merged by `ssmtune merge-adapter`.

In a temporary directory:
  1. base: tests/fixtures/jamba-tiny loaded in bfloat16 and saved by transformers itself with
     `save_pretrained(max_shard_size="12KB")` (HF's own sharding and index), plus the BPE
     tokenizer fixture (ssmtune eval needs one; the checks below pass token ids);
  2. `ssmtune merge-adapter --model base --adapter tests/fixtures/peft-lora-jamba/adapter_init`
     (peft's LoRA on every projection: Mamba, attention, router, experts; random A and B);
  3. the merged directory has the base's files, every tensor in the base's shard with the base's
     dtype (BF16), an index with the right total_size, and config.json torch_dtype "bfloat16";
  4. JambaForCausalLM.from_pretrained(merged) loads with no missing, unexpected or mismatched
     keys;
  5. its logits (float32 compute on the bf16 weights) equal ssmtune's: ssmtune's log-
     probabilities, read through `ssmtune eval --format tokens --json` with one label per
     example (loss = -log p(label)), for every vocabulary entry at one position and every
     next token of both reference sequences; both sides compute in float32 on the same bf16
     weights, so they agree to float32 rounding through 4 layers (measured 1e-6): tolerance
     1e-5 absolute;
  6. its logits are peft's (base + adapter, float32) up to the bf16 rounding of the merged
     weights: within twice what rounding jamba-tiny's own float32 weights to bf16 does to its
     logits (the yardstick tests/merge_layout_test.cpp uses), and every merged weight is within
     one bf16 ulp of peft's merge_and_unload rounded to bf16 (equal but where the two float32
     merges fall on either side of a rounding boundary);
  7. an adapter trained by `ssmtune train` on that base (LoRA r 4 on every Mamba, attention,
     router, expert and MLP projection, 20 steps on arithmetic progressions) loads in
     peft.PeftModel.from_pretrained: every tensor of adapter_model.safetensors lands
     bit-identically in a peft LoRA parameter and none is left at peft's init, and peft's mean
     token loss equals `ssmtune eval --adapter`'s (the tolerance of check_hf_interop.py).

Prints one line per check; exits 1 if any fails.
Usage: /tmp/fxenv/bin/python data_scripts/check_merged_jamba.py build/apps/ssmtune/ssmtune
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import JambaForCausalLM

from peft import PeftModel

# Also sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (everything is local).
from check_hf_interop import (LOSS_RTOL, check_loss, finish, forward, in_work_dir,
                               make_sequences, report, run, ssmtune_eval, start,
                               write_jsonl)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
BASE_FIXTURE = os.path.join(FIXTURES, "jamba-tiny")
ADAPTER = os.path.join(FIXTURES, "peft-lora-jamba", "adapter_init")
TOKENIZER = os.path.join(FIXTURES, "tokenizers", "bpe")
TINY_TOKENIZER = os.path.join(FIXTURES, "tokenizers", "tiny_unk")
TINY_VOCAB = 12  # tiny_unk's ids 0..11

SSMTUNE_ATOL = 1e-5

def layout(d: str) -> tuple[dict[str, tuple[str, str]], dict | None]:
    """tensor -> (file, dtype) for a model directory, and its index (None if one file)."""
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    out = {}
    for f in files:
        with open(os.path.join(d, f), "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, e in header.items():
            if name != "__metadata__":
                out[name] = (f, e["dtype"])
    index_path = os.path.join(d, "model.safetensors.index.json")
    index = json.load(open(index_path)) if os.path.exists(index_path) else None
    return out, index


def ssmtune_logprob(binary: str, model: str, work: str, ids: list[int], pos: int,
                    label: int, adapter: str | None = None) -> float:
    """log p(label at pos | ids[:pos]) as ssmtune eval computes it (labels shift as in HF),
    with the LoRA adapter directory `adapter` if given."""
    labels = [-100] * len(ids)
    labels[pos] = label
    path = os.path.join(work, "one.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
    out = run([binary, "eval", "--model", model, "--data", path, "--format", "tokens",
               "--metrics", "loss", "--json", "--batch-size", "1"]
              + (["--adapter", adapter] if adapter else []))
    res = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    assert res["tokens"] == 1, res
    return -float(res["metrics"]["loss"])


JAMBA_LORA_TARGETS = ["in_proj", "x_proj", "dt_proj", "out_proj", "q_proj", "k_proj", "v_proj",
                      "o_proj", "router", "gate_proj", "up_proj", "down_proj"]


def check_trained_adapter(binary: str, work: str, base: str) -> None:
    """Step 7: an adapter ssmtune trains on Jamba loads in peft and computes ssmtune's loss."""
    # base's tokenizer (the bpe fixture, 1010 tokens) is larger than jamba-tiny's vocabulary,
    # which train refuses: train on a copy with the 12-token tokenizer fixture, on ids it has.
    trained_base = os.path.join(work, "base-tiny-tokenizer")
    shutil.copytree(base, trained_base, ignore=shutil.ignore_patterns("tokenizer*"))
    for f in os.listdir(TINY_TOKENIZER):
        shutil.copy(os.path.join(TINY_TOKENIZER, f), trained_base)
    base = trained_base
    seqs = [[2 + t % (TINY_VOCAB - 2) for t in s] for s in make_sequences(random.Random(3), 16)]
    data = os.path.join(work, "progressions.jsonl")
    write_jsonl(data, seqs)
    run_dir = os.path.join(work, "run-lora")
    exp = {"model": base, "output_dir": run_dir, "seed": 7,
           "data": {"train": data, "format": "tokens", "max_length": 64},
           "peft": {"lora": {"targets": JAMBA_LORA_TARGETS, "rank": 4, "alpha": 8}},
           "optimizer": {"lr": 2e-2}, "schedule": {"type": "constant"},
           "training": {"steps": 20, "batch_size": 4, "threads": 1},
           "checkpoint": {"keep": 1}}
    exp_path = os.path.join(work, "exp-lora.json")
    with open(exp_path, "w") as f:
        json.dump(exp, f, indent=1)
    run([binary, "train", exp_path])
    adapter = os.path.join(run_dir, "adapter")
    model = PeftModel.from_pretrained(JambaForCausalLM.from_pretrained(base), adapter)
    model.eval()
    state = model.state_dict()
    lora_keys = {k for k in state if ".lora_" in k}
    file = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    problems, used = [], set()
    for name, t in file.items():
        key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        if key not in state or not torch.equal(state[key], t):
            problems.append(f"{name}: not bit-identical in peft's parameter {key}")
        used.add(key)
    if lora_keys - used:
        problems.append(f"peft LoRA parameters left at peft's init: {sorted(lora_keys - used)}")
    report(not problems, "trained Jamba adapter loads in peft",
           f"{len(file)} tensors bit-identical in peft's {len(lora_keys)} LoRA parameters"
           if not problems else "; ".join(problems))
    _, peft_loss, n = forward(model, seqs)
    _, base_loss, _ = forward(JambaForCausalLM.from_pretrained(base), seqs)
    check_loss(f"trained Jamba adapter: loss peft vs ssmtune eval --adapter (rel tol "
               f"{LOSS_RTOL:.0e})", peft_loss, n, ssmtune_eval(binary, base, data, adapter),
               abs(peft_loss - base_loss))


def main() -> int:
    args = start(__doc__)
    binary = args.ssmtune

    def body(work: str) -> None:
        base, merged = os.path.join(work, "base"), os.path.join(work, "merged")
        bf16 = JambaForCausalLM.from_pretrained(BASE_FIXTURE, torch_dtype=torch.bfloat16)
        bf16.save_pretrained(base, max_shard_size="12KB", safe_serialization=True)
        for f in os.listdir(TOKENIZER):
            shutil.copy(os.path.join(TOKENIZER, f), base)
        run([binary, "merge-adapter", "--model", base, "--adapter", ADAPTER, "--out", merged])

        # 3. Layout.
        base_layout, base_index = layout(base)
        merged_layout, merged_index = layout(merged)
        report(sorted(os.listdir(merged)) == sorted(os.listdir(base)), "same files",
               f"{sorted(os.listdir(merged))}")
        n_shards = len({f for f, _ in base_layout.values()})
        report(merged_layout == base_layout, "same tensor -> shard and dtype",
               f"{len(merged_layout)} tensors in {n_shards} shards, dtypes "
               f"{sorted({d for _, d in merged_layout.values()})}")
        sizes = {}
        for f in {f for f, _ in merged_layout.values()}:
            for name, t in load_file(os.path.join(merged, f)).items():
                sizes[name] = t.numel() * t.element_size()
        report(merged_index is not None and base_index is not None
               and merged_index["weight_map"] == base_index["weight_map"]
               and merged_index["metadata"]["total_size"] == sum(sizes.values()),
               "index", f"total_size {merged_index['metadata']['total_size']} = "
               f"sum of tensor bytes {sum(sizes.values())}; weight_map as the base's")
        for f in sorted({f for f, _ in merged_layout.values()}):
            with safe_open(os.path.join(merged, f), "pt") as fh:
                if fh.metadata() != {"format": "pt"}:
                    report(False, "metadata", f"{f}: {fh.metadata()}")
        cfg = json.load(open(os.path.join(merged, "config.json")))
        report(cfg.get("torch_dtype") == "bfloat16", "config torch_dtype", cfg.get("torch_dtype"))

        # 4. transformers loads it.
        model, info = JambaForCausalLM.from_pretrained(merged, output_loading_info=True)
        model.eval()
        bad = {k: v for k, v in info.items() if v}
        report(not bad, "JambaForCausalLM.from_pretrained(merged)", f"loading info {bad or 'clean'}")

        ref = load_file(os.path.join(BASE_FIXTURE, "reference.safetensors"))
        ids = ref["input_ids"]
        with torch.no_grad():
            hf_logits = model(ids, use_cache=False).logits.float()
        logp = torch.log_softmax(hf_logits.double(), dim=-1)

        # 5. ssmtune's log-probabilities on the merged directory.
        diffs = []
        seq = ids[0].tolist()
        pos = len(seq) - 1  # predicted from position pos - 1
        for label in range(hf_logits.shape[-1]):
            ours = ssmtune_logprob(binary, merged, work, seq, pos, label)
            diffs.append(abs(ours - float(logp[0, pos - 1, label])))
        for b in range(ids.shape[0]):
            s = ids[b].tolist()
            for p in range(1, len(s)):
                ours = ssmtune_logprob(binary, merged, work, s, p, s[p])
                diffs.append(abs(ours - float(logp[b, p - 1, s[p]])))
        report(max(diffs) <= SSMTUNE_ATOL, "merged log-probabilities, transformers vs ssmtune eval",
               f"max |diff| {max(diffs):.2e} over {len(diffs)} values "
               f"(tol {SSMTUNE_ATOL:.0e}; |log p| up to {float(logp.abs().max()):.2f})")

        # 6. Against peft's model and merge.
        peft_base = JambaForCausalLM.from_pretrained(base)  # bf16 weights as float32
        pm = PeftModel.from_pretrained(peft_base, ADAPTER)
        pm.eval()
        with torch.no_grad():
            peft_logits = pm(ids, use_cache=False).logits.float()
            base_logits = JambaForCausalLM.from_pretrained(base)(ids, use_cache=False).logits
            f32_logits = JambaForCausalLM.from_pretrained(BASE_FIXTURE)(ids, use_cache=False).logits
        rounding = float((base_logits - f32_logits).abs().max() / f32_logits.abs().max())
        largest = float(peft_logits.abs().max())
        d = float((hf_logits - peft_logits).abs().max())
        effect = float((base_logits - peft_logits).abs().max())
        report(d <= 2 * rounding * largest < effect,
               "merged logits vs peft (base + adapter, float32)",
               f"max |diff| {d:.2e} = {d / largest:.2e} of the largest logit {largest:.2f} (tol "
               f"2 x {rounding:.2e}, what rounding jamba-tiny to bf16 does); the adapter moves "
               f"them by {effect:.2f}")
        peft_merged = {k: v.to(torch.bfloat16) for k, v in pm.merge_and_unload().state_dict().items()}
        mine = {}
        for f in {f for f, _ in merged_layout.values()}:
            mine.update(load_file(os.path.join(merged, f)))
        worst_ulps, differing, total = 0.0, 0, 0
        for name, t in mine.items():
            other = peft_merged[name]
            ulp = torch.finfo(torch.bfloat16).eps * torch.maximum(t.float().abs(),
                                                                other.float().abs())
            ulps = ((t.float() - other.float()).abs() / ulp.clamp_min(1e-30)).max().item()
            worst_ulps = max(worst_ulps, ulps)
            differing += int((t != other).sum())
            total += t.numel()
        report(worst_ulps <= 1.0, "merged weights vs peft merge_and_unload rounded to bf16",
               f"{differing} of {total} elements differ, by at most {worst_ulps:.2f} bf16 ulp")

        check_trained_adapter(binary, work, base)

    in_work_dir(args.keep, "ssmtune-merged-jamba-", body)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
