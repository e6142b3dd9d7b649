#!/usr/bin/env python3
"""Make the Jamba example under configs/jamba-example/: the quickstart task on a small Jamba.

  configs/jamba-example/model/
      a small Jamba (d_model 128, 4 layers: Mamba, Mamba + MoE, attention, Mamba + MoE; 4 experts,
      top 2), the quickstart tokenizer (configs/quickstart/model), `ssmtune init` + full training
      (configs/jamba-example/pretrain.json) on the quickstart's pretraining corpus
  configs/jamba-example/sizes.json
      the model's sizes for `ssmtune init` (MODEL_SIZES below); pretrain.json, beside it, is the
      hand-written pretraining config this script runs
  configs/jamba-example/README.md
      what was made and from what; the pretraining run's and configs/jamba-example.json's numbers

The task data (configs/quickstart/data/) and the pretraining corpus are the quickstart's, made by
data_scripts/make_example.py from the same Debian files (its docstring says which and how); this
script makes the corpus again in --work (shared with make_example.py) without touching
configs/quickstart/.

Steps (4 is skipped when --work holds its output made from the same inputs):
  1. the Debian files into --work (make_example.py's step 1, reused when already there)
  2. the pretraining corpus -> --work/pretrain_corpus.jsonl, pretrain_heldout.jsonl
  3. ssmtune init configs/jamba-example/sizes.json --tokenizer configs/quickstart/model
                                                       -> --work/jamba-init/
  4. ssmtune train configs/jamba-example/pretrain.json -> --work/jamba-pretrain/
  5. copy --work/jamba-pretrain/model/ to configs/jamba-example/model/
  6. ssmtune eval and train configs/jamba-example.json (-> --work/jamba-example/), the README

Deterministic like make_example.py: same Debian files, ssmtune build and thread count give the
same bytes, except the timings quoted in the README.

Usage (from the repository root, after building ssmtune):
    python3 data_scripts/make_jamba_example.py   # ~10 minutes on 2 idle cores
Options: --ssmtune PATH (default build/apps/ssmtune/ssmtune), --work DIR (default
build/make_example), --mirror URL, --fresh (retrain even if --work holds the run). Needs only
Python 3.9+ (no tokenizers: the tokenizer is the committed quickstart one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import make_example as ex

GENERATOR = "data_scripts/make_jamba_example.py"
OUT = os.path.join(ex.ROOT, "configs", "jamba-example")
TOKENIZER = os.path.join(ex.ROOT, "configs", "quickstart", "model")
EXAMPLE_CONFIG = os.path.join(ex.ROOT, "configs", "jamba-example.json")

MODEL_SIZES = {
    "model_type": "jamba",
    "vocab_size": ex.VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "attn_layer_period": 4,
    "attn_layer_offset": 2,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": 8,
    "output_router_logits": True,
    "router_aux_loss_coef": 0.001,
    "tie_word_embeddings": True,
    "use_mamba_kernels": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 1,
}


def n_params(cfg: dict) -> int:
    """Parameters of a Jamba LM from its config.json, counted as transformers counts them: tied
    embeddings counted once; no bias but the Mamba conv1d's and dt_proj's."""
    d, v, n_layer = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    e = cfg["mamba_expand"] * d
    r, n, k = cfg["mamba_dt_rank"], cfg["mamba_d_state"], cfg["mamba_d_conv"]
    hd = d // cfg["num_attention_heads"]
    mamba = (d * 2 * e + e * k + e + e * (r + 2 * n) + r * e + e + e * n + e + e * d
             + r + 2 * n)  # + the dt, B and C RMSNorm weights
    attention = d * d + 2 * d * cfg["num_key_value_heads"] * hd + d * d
    mlp = 3 * d * cfg["intermediate_size"]
    total = v * d + d
    if not cfg["tie_word_embeddings"]:
        total += v * d
    for i in range(n_layer):
        is_attention = i % cfg["attn_layer_period"] == cfg["attn_layer_offset"]
        is_moe = i % cfg["expert_layer_period"] == cfg["expert_layer_offset"]
        total += 2 * d  # input_layernorm, pre_ff_layernorm
        total += attention if is_attention else mamba
        total += cfg["num_experts"] * (mlp) + d * cfg["num_experts"] if is_moe else mlp
    return total


def make_corpus(work: str, mirror: str) -> dict:
    """Steps 1-2: make_example.py's pretraining corpus in --work, the task files untouched."""
    ex.fetch_debian(work, mirror)
    packages = [p for p in ex.stanzas(os.path.join(work, os.path.basename(ex.PACKAGES)))
                if "Package" in p]
    translations = [t for t in ex.stanzas(os.path.join(work, os.path.basename(ex.TRANSLATION)))
                    if "Package" in t and "Description-en" in t]
    train, evals, used_sources = ex.make_task(packages)
    # The task must be the committed one, or the corpus would not exclude its packages.
    committed = {split: ex.read_jsonl(os.path.join(ex.OUT, "data", f"{split}.jsonl"))
                 for split in ("train", "eval")}
    if committed != {"train": train, "eval": evals}:
        sys.exit("error: configs/quickstart/data differs from the task these Debian files give; "
                 "run data_scripts/make_example.py first")
    corpus = ex.make_corpus(translations, packages, used_sources)
    ex.write_jsonl(os.path.join(work, "pretrain_corpus.jsonl"), corpus[:-ex.N_HELDOUT])
    ex.write_jsonl(os.path.join(work, "pretrain_heldout.jsonl"), corpus[-ex.N_HELDOUT:])
    return {"corpus_docs": len(corpus) - ex.N_HELDOUT,
            "corpus_chars": sum(len(r["text"]) for r in corpus[:-ex.N_HELDOUT])}


def pretrain(work: str, ssmtune: str, fresh: bool) -> float:
    """Steps 3-4: ssmtune init, then ssmtune train pretrain.json; the training is skipped when
    --work/jamba-pretrain was made from the same config, corpus and initial model. Returns the
    training's wall time in seconds."""
    ex.write_text(os.path.join(OUT, "sizes.json"), json.dumps(MODEL_SIZES, indent=2) + "\n")
    init_dir = os.path.join(work, "jamba-init")
    ex.run([ssmtune, "init", os.path.join(OUT, "sizes.json"), "--out", init_dir, "--seed",
            str(ex.SEED), "--tokenizer", TOKENIZER, "--overwrite"])
    run_dir = os.path.join(work, "jamba-pretrain")
    config = os.path.join(OUT, "pretrain.json")
    corpus_path = os.path.join(work, "pretrain_corpus.jsonl")
    heldout_path = os.path.join(work, "pretrain_heldout.jsonl")
    key = ex.stamp_key([config, corpus_path, heldout_path] +
                       [os.path.join(init_dir, f) for f in sorted(os.listdir(init_dir))], "")
    stamp = ex.read_stamp(run_dir)
    if not fresh and stamp.startswith(key + " "):
        ex.log(f"reuse {run_dir} (same config, corpus and initial model; --fresh retrains)")
        return float(stamp.split()[1])
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # a fresh run, not a resume of an older one
    seconds = ex.run([ssmtune, "train", config, "--set", "model=" + init_dir,
                      "--set", "data.train=" + corpus_path, "--set", "data.eval=" + heldout_path,
                      "--out", run_dir])
    ex.write_stamp(run_dir, f"{key} {seconds:.1f}")
    return seconds


def check_example(work: str, ssmtune: str) -> tuple[dict, dict]:
    """Step 6: configs/jamba-example.json on the new model: the base model's eval metrics and
    the fine-tuned run's summary."""
    base = json.loads(subprocess.run(
        [ssmtune, "eval", EXAMPLE_CONFIG, "--model", os.path.join(OUT, "model"), "--json"],
        check=True, capture_output=True, text=True).stdout)
    run_dir = os.path.join(work, "jamba-example")
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    ex.run([ssmtune, "train", EXAMPLE_CONFIG, "--out", run_dir], passive=False)
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        tuned = json.load(f)
    ex.log(f"jamba example: accuracy {base['metrics']['accuracy']:.3f} -> "
           f"{tuned['eval']['accuracy']:.3f}, loss {base['metrics']['loss']:.3f} -> "
           f"{tuned['eval']['loss']:.3f}")
    return base, tuned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=os.path.join(ex.ROOT, "build", "make_example"),
                    help="downloads and intermediate files (default: build/make_example)")
    ap.add_argument("--ssmtune", default=os.path.join(ex.ROOT, "build", "apps", "ssmtune",
                                                      "ssmtune"), help="the ssmtune binary")
    ap.add_argument("--mirror", default=ex.MIRROR, help=f"Debian mirror (default: {ex.MIRROR})")
    ap.add_argument("--fresh", action="store_true", help="retrain even if --work holds the run")
    args = ap.parse_args()
    work = os.path.abspath(args.work)
    if not os.access(args.ssmtune, os.X_OK):
        sys.exit(f"error: {args.ssmtune}: no ssmtune binary; build it first (bash .ci/build) "
                 "or give its path with --ssmtune")
    os.makedirs(work, exist_ok=True)
    os.makedirs(OUT, exist_ok=True)

    stats = make_corpus(work, args.mirror)
    stats["pretrain_seconds"] = round(pretrain(work, args.ssmtune, args.fresh))
    model_dir = os.path.join(OUT, "model")
    stats.update(ex.ship_pretrained(os.path.join(work, "jamba-pretrain"), model_dir, args.ssmtune,
                                    n_params))
    stats["example_base"], stats["example"] = check_example(work, args.ssmtune)
    write_readme(stats)
    ex.log(f"done: {model_dir} ({os.path.getsize(os.path.join(model_dir, 'model.safetensors'))}"
           " bytes of weights)")


def write_readme(stats: dict) -> None:
    held_out = {r["step"]: r["eval"]["loss"] for r in stats["metrics"] if "eval" in r}
    train_loss = {r["step"]: r["loss"] for r in stats["metrics"] if "loss" in r}
    aux_loss = {r["step"]: r["aux_loss"] for r in stats["metrics"] if "aux_loss" in r}
    steps = sorted(s for s in train_loss if s in held_out or s in (10, 50))
    curve = "\n".join(f"| {s} | {train_loss[s]:.3f} | {aux_loss.get(s, float('nan')):.3f} | "
                      + (f"{held_out[s]:.3f} |" if s in held_out else "|") for s in steps)
    summary = stats["summary"]
    n_tokens = summary["steps"] * ex.PRETRAIN_BATCH_TOKENS
    base, tuned = stats["example_base"], stats["example"]
    m = MODEL_SIZES

    ex.write_text(os.path.join(OUT, "README.md"), ex.reflow(f"""\
# The Jamba example

`configs/jamba-example.json` is the quickstart task (a Debian package's section from its one-line
description, `configs/quickstart/data/`) on a small Jamba: LoRA on the Mamba projections, the
attention projections and every expert's and dense MLP's projections. From the repository root:

    ssmtune info configs/jamba-example/model       # the layer schedule, counts by kind
    ssmtune eval configs/jamba-example.json --model configs/jamba-example/model  # the base model
    ssmtune train configs/jamba-example.json   # LoRA, writes runs/jamba-example/

{ex.results_and_origin(base, tuned, GENERATOR)}
## model/

A `JambaForCausalLM` small enough to pretrain on a laptop CPU in minutes:
{m['num_hidden_layers']} layers, d_model {m['hidden_size']}; layer
{m['attn_layer_offset']} is grouped-query attention ({m['num_attention_heads']} query heads,
{m['num_key_value_heads']} key/value heads), the others Mamba mixers (d_state
{m['mamba_d_state']}, expand {m['mamba_expand']}); layers {m['expert_layer_offset']} and
{m['expert_layer_offset'] + m['expert_layer_period']} have a mixture of {m['num_experts']}
SwiGLU experts (top {m['num_experts_per_tok']}, d_ffn {m['intermediate_size']}), the others one
dense SwiGLU MLP; tied embeddings; {stats['n_params']:,} parameters in float32. The tokenizer is
the quickstart's (`configs/quickstart/model`, {ex.VOCAB_SIZE} tokens).

Weights: `ssmtune init sizes.json --seed {ex.SEED}`, then full training with `pretrain.json`
(AdamW, warmup and cosine decay, blocks of 256 packed tokens, the router load-balancing loss
with coefficient {m['router_aux_loss_coef']}) on the quickstart's pretraining corpus: the long
descriptions of {stats['corpus_docs']:,} Debian packages ({stats['corpus_chars']:,} characters;
no source package of the task's data). {summary['steps']} steps of 16 x 256 tokens,
{n_tokens / 1e6:.1f} M tokens, took {stats['pretrain_seconds']} s with 2 threads. Loss in nats
per token (uniform over the vocabulary: ln {ex.VOCAB_SIZE} = {math.log(ex.VOCAB_SIZE):.2f}); the
router loss (before the coefficient) is {m['num_experts_per_tok']}, the number of experts per
token, when every expert is used and weighted evenly; the held-out loss is on {ex.N_HELDOUT} further documents:

| step | training LM loss (one batch) | router loss | held-out loss |
|---|---|---|---|
{curve}

Greedy decoding (`ssmtune generate --model configs/jamba-example/model --prompt
"{ex.GENERATE_PROMPT}" --max-new-tokens {ex.GENERATE_TOKENS}`):

{textwrap.indent(stats['sample'], "    ")}
"""))


if __name__ == "__main__":
    main()
