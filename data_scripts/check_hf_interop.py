#!/usr/bin/env python3
"""Checks that Hugging Face transformers + peft load what `ssmtune train` / `merge-adapter` write.

In a temporary directory, for two base models made by `ssmtune init` (tied embeddings without
linear biases; untied embeddings with in_proj/out_proj biases), each with the BPE tokenizer
fixture, it trains small runs with `ssmtune train` (20 steps, pre-tokenised data):
  LoRA  a-modules     in_proj, x_proj, dt_proj, out_proj
        b-slices      in_proj.x, in_proj.z, x_proj.B, x_proj.C, layers.1.out_proj
        c-emb-rslora  embeddings, out_proj, rslora
        d-mixed       in_proj.z, x_proj.dt, x_proj.C, layers.0.dt_proj, embeddings, rslora
                      (untied only)
  full  e-full        peft.full = true
and then, for every LoRA run,
  1. loads the base with MambaForCausalLM.from_pretrained and the adapter with
     peft.PeftModel.from_pretrained; checks that peft wrapped exactly the expected modules with
     the expected rank and scale, that every tensor of adapter_model.safetensors landed
     bit-identically in a LoRA parameter and every LoRA parameter came from the file, and that
     the B rows outside a slice's rows are zero (the slice sits where transformers expects it);
  2. compares peft's mean token loss on the eval set (float32, transformers' label shift,
     labels = input_ids) with `ssmtune eval --model BASE --adapter ADAPTER --json`;
  3. runs `ssmtune merge-adapter` and loads the result with MambaForCausalLM.from_pretrained
     (no peft): no missing / unexpected / mismatched keys, logits equal to the peft model's,
     and every weight equal to peft's own merge W + s B A (with the unmerged embedding as
     lm_head where a tied embedding got a LoRA: the peft model's head never sees the LoRA);
and for the full fine-tuning run loads run/model with transformers (no missing / unexpected
keys, weights moved away from the base) and compares its loss with `ssmtune eval --model
run/model`. The base models' losses are compared too, so a model-level mismatch is told apart
from an adapter-level one.

Prints one line per check (measured difference, tolerance, OK/FAIL); exits 1 if any check
fails. Usage: /tmp/fxenv/bin/python data_scripts/check_hf_interop.py build/apps/ssmtune/ssmtune
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import MambaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import peft  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "tests", "fixtures", "tokenizers", "bpe")

# Tolerances. Both sides compute in float32 (unit roundoff u = 6e-8) but in different operation
# orders (ssmtune: its own GEMMs and chunked scan; transformers: torch's slow path, sequential
# scan), so they can agree only to float32 rounding accumulated through the network:
#  - loss (ssmtune eval vs transformers): each token's cross-entropy moves by at most about twice
#    the logits' error, which is ~1e-6 here (see the merged-vs-peft logits, pure rounding), so
#    ~2e-6 absolute, 3e-7 relative to a loss of ~7. Tolerance 1e-5 relative: 30x that bound
#    (observed <= 5e-8), and still 40x below the smallest effect training has on the loss here
#    (2.9e-3 absolute, printed as "effect"); a wrong scale or a misplaced slice changes it by
#    about that effect, not by rounding.
#  - logits (ssmtune-merged model vs peft's unmerged model, both run by torch): differ by
#    rounding W x + s B (A x) vs (W + s B A) x; peft's own fixture measured 1.1e-7 for its
#    merge on mamba-tiny, here ~1e-6 with trained adapters and |logits| up to ~4. Tolerance 1e-5
#    absolute, against adapter effects of ~2 on the logits.
#  - weights (ssmtune's merge vs peft's merge_and_unload): each is one rounded W + s (B A) with
#    its own summation order, a few ulp of |W| <= ~1: 1e-6 absolute.
LOSS_RTOL = 1e-5
LOGITS_ATOL = 1e-5
WEIGHT_ATOL = 1e-6
# The adapter must change the logits by far more than the tolerance, or the checks prove nothing.
MIN_EFFECT = 1e-3

SIZES = {"vocab_size": 1024, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 8}
BASES = {
    "tied": (dict(SIZES), 1),
    "untied-bias": (dict(SIZES, use_bias=True, tie_word_embeddings=False, time_step_rank=3), 2),
}
RUNS = {
    "a-modules": ({"lora": {"targets": ["in_proj", "x_proj", "dt_proj", "out_proj"], "rank": 4,
                            "alpha": 8}}, ("tied", "untied-bias")),
    "b-slices": ({"lora": {"targets": ["in_proj.x", "in_proj.z", "x_proj.B", "x_proj.C",
                                       "layers.1.out_proj"], "rank": 4, "alpha": 8}},
                 ("tied", "untied-bias")),
    "c-emb-rslora": ({"lora": {"targets": ["embeddings", "out_proj"], "rank": 4, "alpha": 8,
                               "rslora": True}}, ("tied", "untied-bias")),
    "d-mixed": ({"lora": {"targets": ["in_proj.z", "x_proj.dt", "x_proj.C", "layers.0.dt_proj",
                                     "embeddings"],
                          "rank": 2, "alpha": 3, "rslora": True}}, ("untied-bias",)),
    "e-full": ({"full": True}, ("tied", "untied-bias")),
}
STEPS = 20

failures: list[str] = []


def report(ok: bool, label: str, detail: str) -> bool:
    print(f"{'OK  ' if ok else 'FAIL'} {label}: {detail}", flush=True)
    if not ok:
        failures.append(label)
    return ok


def run(cmd: list[str]) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p.stdout


# ---------------------------------------------------------------------------------------------
# Data: short arithmetic progressions mod V (learnable, so 20 steps move the adapter visibly).


def make_sequences(rng: random.Random, n: int) -> list[list[int]]:
    """Ids in [2, 1000): the tokenizer fixture's plain vocabulary (ssmtune checks ids against
    the tokenizer, which has 1010 ids, not against the model's vocab_size 1024)."""
    out = []
    for _ in range(n):
        start, step, length = rng.randrange(998), rng.randrange(1, 7), rng.randrange(6, 25)
        out.append([2 + (start + i * step) % 998 for i in range(length)])
    return out


def write_jsonl(path: str, seqs: list[list[int]]) -> None:
    with open(path, "w") as f:
        for s in seqs:
            f.write(json.dumps({"input_ids": s}) + "\n")


# ---------------------------------------------------------------------------------------------
# What a LoRA target list means (docs/config.md, peft.lora.targets), computed independently of
# ssmtune: the full module name of each target and the weight rows each slice covers.


def module_shapes(cfg) -> dict[str, tuple[int, int]]:
    D, E, N, R = cfg.hidden_size, cfg.intermediate_size, cfg.state_size, cfg.time_step_rank
    return {"in_proj": (2 * E, D), "x_proj": (R + 2 * N, E), "dt_proj": (E, R), "out_proj": (D, E)}


def slice_rows(cfg, site: str, part: str | None) -> range:
    """Rows of the weight a target updates, in transformers' layout: in_proj -> (x, gate) by
    `chunk(2)`, x_proj -> (dt, B, C) by `split([R, N, N])` (MambaMixer.slow_forward)."""
    E, N, R = cfg.intermediate_size, cfg.state_size, cfg.time_step_rank
    out = module_shapes(cfg)[site][0]
    parts = {("in_proj", "x"): range(0, E), ("in_proj", "z"): range(E, 2 * E),
             ("x_proj", "dt"): range(0, R), ("x_proj", "B"): range(R, R + N),
             ("x_proj", "C"): range(R + N, R + 2 * N)}
    return range(0, out) if part is None else parts[(site, part)]


def expected_modules(cfg, targets: list[str], rank: int,
                     rows_of=slice_rows) -> dict[str, tuple[int, set[int]]]:
    """module name -> (rank peft should build, rows of B that may be non-zero). rows_of(cfg,
    site, part): the rows a target covers in the model family's layout (slice_rows: Mamba)."""
    want: dict[str, tuple[int, set[int]]] = {}
    for t in targets:
        if t == "embeddings":
            want["backbone.embeddings"] = (rank, set(range(cfg.hidden_size)))
            continue
        layers = range(cfg.num_hidden_layers)
        m = re.fullmatch(r"layers\.(\d+)(?:-(\d+))?\.(.*)", t)
        if m:
            lo = int(m.group(1))
            layers, t = range(lo, int(m.group(2) or lo) + 1), m.group(3)
        site, _, part = t.partition(".")
        for i in layers:
            name = f"backbone.layers.{i}.mixer.{site}"
            r, rows = want.get(name, (0, set()))
            want[name] = (r + rank, rows | set(rows_of(cfg, site, part or None)))
    return want


# ---------------------------------------------------------------------------------------------
# transformers / peft side.


def forward(model, seqs: list[list[int]]) -> tuple[list[torch.Tensor], float, int]:
    """One forward per example (no padding) with labels = input_ids, so transformers applies its
    own label shift (position t predicts token t + 1) and cross-entropy in float32. Returns the
    logits (L, V) of each example and the mean over all tokens of the set (per-example mean
    times its L - 1 tokens, summed, over the total), which is what ssmtune eval reports."""
    logits, total, count = [], 0.0, 0
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s])
            out = model(input_ids=ids, labels=ids, use_cache=False)
            logits.append(out.logits[0].float())
            total += float(out.loss) * (len(s) - 1)
            count += len(s) - 1
    return logits, total / count, count


def max_abs(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def load_hf(path: str, cls=MambaForCausalLM):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if v}
    return model, bad


def ssmtune_eval(binary: str, model: str, data: str, adapter: str | None = None) -> dict:
    cmd = [binary, "eval", "--model", model, "--data", data, "--format", "tokens",
           "--metrics", "loss", "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    lines = [ln for ln in run(cmd).splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def check_loss(label: str, hf_loss: float, n_hf: int, res: dict, effect: float | None) -> None:
    ours = float(res["metrics"]["loss"])
    diff = abs(ours - hf_loss)
    rel = diff / abs(hf_loss)
    extra = f", effect of the training on the loss {effect:.2e}" if effect is not None else ""
    report(rel <= LOSS_RTOL and int(res["tokens"]) == n_hf, label,
           f"transformers {hf_loss:.7f} vs ssmtune eval {ours:.7f}: abs {diff:.2e} rel {rel:.2e} "
           f"(tol rel {LOSS_RTOL:.0e}); tokens {n_hf} vs {res['tokens']}{extra}")


def wrap_problems(model, want: dict, scale: float, rslora: bool) -> tuple[dict, list[str]]:
    """Did peft wrap exactly the modules of want (expected_modules), each with its rank and the
    scale s? Returns (module name -> peft LoraLayer, problems)."""
    got = {n: m for n, m in model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    problems = []
    if set(got) != set(want):
        problems.append(f"wrapped modules {sorted(got)} != expected {sorted(want)}")
    worst_scale = 0.0
    for name in set(got) & set(want):
        m = got[name]
        if m.r["default"] != want[name][0]:
            problems.append(f"{name}: peft rank {m.r['default']}, expected {want[name][0]}")
        worst_scale = max(worst_scale, abs(m.scaling["default"] - scale) / scale)
    if worst_scale > 1e-12:
        problems.append(f"peft scaling differs from alpha/{'sqrt(r)' if rslora else 'r'} "
                        f"= {scale} by rel {worst_scale:.2e}")
    return got, problems


def peft_tensor_problems(model, adapter: str) -> tuple[list[str], int]:
    """Did peft load adapter_model.safetensors as written? Every file tensor must sit
    bit-identically in the peft parameter of its name (with `.default` put back) and every LoRA
    parameter of the peft model must come from the file. Returns (problems, tensors in file)."""
    state = model.state_dict()
    lora_keys = {k for k in state if ".lora_" in k}
    file = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    problems, used = [], set()
    for name, t in file.items():
        key = re.sub(r"\.(lora_A|lora_B)\.weight$", r".\1.default.weight", name)
        key = re.sub(r"\.(lora_embedding_A|lora_embedding_B)$", r".\1.default", key)
        if key not in state:
            problems.append(f"file tensor {name} has no peft parameter ({key})")
        elif state[key].shape != t.shape or not torch.equal(state[key], t):
            problems.append(f"{name}: peft holds {tuple(state[key].shape)}, file "
                            f"{tuple(t.shape)}, values equal: "
                            f"{state[key].shape == t.shape and torch.equal(state[key], t)}")
        used.add(key)
    if lora_keys - used:
        problems.append(f"peft LoRA parameters not in the file (left at peft's init): "
                        f"{sorted(lora_keys - used)}")
    return problems, len(file)


def b_rows_problems(got: dict, want: dict) -> list[str]:
    """Slices: each module's lora_B may be non-zero only in the rows of its slices (want:
    expected_modules), and must be non-zero there. got: module name -> peft LoraLayer."""
    problems = []
    for name, (_, rows) in want.items():
        if name not in got:
            continue
        m = got[name]
        B = m.lora_embedding_B["default"] if name == "backbone.embeddings" else \
            m.lora_B["default"].weight
        outside = [i for i in range(B.shape[0]) if i not in rows]
        if outside and float(B.detach()[outside].abs().max()) != 0.0:
            problems.append(f"{name}: lora_B non-zero outside the targeted rows")
        if float(B.detach()[sorted(rows)].abs().max()) == 0.0:
            problems.append(f"{name}: lora_B is zero in its rows (not trained?)")
    return problems


def merge_diff(mstate: dict, reference: dict, orig: dict) -> tuple[float, str, list[str], int]:
    """A merged model's state dict against peft's merge_and_unload() (reference): the largest
    |difference| and its tensor, tensors missing or extra or of another shape, and how many
    tensors differ from the base (orig)."""
    worst, where, problems = 0.0, "", []
    for k, v in reference.items():
        if k not in mstate or mstate[k].shape != v.shape:
            problems.append(f"{k}: merged has {tuple(mstate[k].shape) if k in mstate else 'none'}, "
                            f"expected {tuple(v.shape)}")
            continue
        e = float((mstate[k] - v).abs().max())
        if e > worst:
            worst, where = e, k
    for k in sorted(set(mstate) - set(reference)):
        problems.append(f"{k}: not in peft's merged model")
    changed = sum(not torch.equal(mstate[k], orig[k]) for k in orig if k in mstate)
    return worst, where, problems, changed


def check_peft_load(label: str, model, adapter: str, want: dict, scale: float,
                    rslora: bool) -> None:
    """Reports whether peft loaded the adapter as ssmtune meant it: the modules, ranks and scale
    of want (expected_modules) and s (wrap_problems), every tensor of the file in its peft
    parameter (peft_tensor_problems), B zero outside the targeted rows (b_rows_problems)."""
    got, problems = wrap_problems(model, want, scale, rslora)
    report(not problems, f"{label} peft wraps",
           f"{len(got)} modules, ranks and scale s = {scale:.6g} as configured"
           if not problems else "; ".join(problems))
    problems, n_file = peft_tensor_problems(model, adapter)
    problems += b_rows_problems(got, want)
    report(not problems, f"{label} peft loads tensors",
           f"{n_file} tensors bit-identical in peft's LoRA parameters, none missing, B zero "
           "outside the targeted slice rows" if not problems else "; ".join(problems))


def check_lora_run(binary: str, work: str, base_label: str, base_dir: str, run_label: str,
                   lora_cfg: dict, run_dir: str, eval_path: str, seqs: list[list[int]],
                   base_logits: list[torch.Tensor], base_loss: float) -> None:
    label = f"{base_label}/{run_label}"
    adapter = os.path.join(run_dir, "adapter")
    base, bad = load_hf(base_dir)
    cfg = base.config
    tied_emb = cfg.tie_word_embeddings
    orig = {k: v.clone() for k, v in base.state_dict().items()}

    # 1. peft loads the adapter as ssmtune meant it.
    model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    rank = lora_cfg["rank"]
    scale = lora_cfg["alpha"] / (math.sqrt(rank) if lora_cfg.get("rslora") else rank)
    want = expected_modules(cfg, lora_cfg["targets"], rank)
    check_peft_load(label, model, adapter, want, scale, lora_cfg.get("rslora", False))

    # 2. peft's loss = ssmtune eval's loss with the adapter.
    peft_logits, hf_loss, n = forward(model, seqs)
    effect = max_abs(peft_logits, base_logits)
    report(effect >= MIN_EFFECT, f"{label} adapter effect",
           f"max |logits(peft) - logits(base)| = {effect:.3e} (must be >= {MIN_EFFECT:.0e}, "
           "far above the tolerances)")
    check_loss(f"{label} loss peft vs ssmtune eval --adapter", hf_loss, n,
               ssmtune_eval(binary, base_dir, eval_path, adapter), abs(hf_loss - base_loss))

    # 3. merge-adapter's directory loads in plain transformers and computes the same.
    merged_dir = os.path.join(work, f"merged-{base_label}-{run_label}")
    run([binary, "merge-adapter", "--model", base_dir, "--adapter", adapter, "--out", merged_dir])
    merged, bad = load_hf(merged_dir)
    emb_lora = "backbone.embeddings" in want
    want_tied = tied_emb and not emb_lora
    report(not bad and merged.config.tie_word_embeddings == want_tied,
           f"{label} merged loads",
           f"no missing/unexpected/mismatched keys, tie_word_embeddings "
           f"{merged.config.tie_word_embeddings}" if not bad else f"loading info {bad}")
    merged_logits = forward(merged, seqs)[0]
    d = max_abs(merged_logits, peft_logits)
    scale_lg = max(float(x.abs().max()) for x in peft_logits)
    report(d <= LOGITS_ATOL, f"{label} merged logits vs peft",
           f"max abs {d:.2e}, rel {d / scale_lg:.2e} of max |logit| {scale_lg:.2f} "
           f"(tol abs {LOGITS_ATOL:.0e})")

    # The weights themselves, against peft's own merge (names every tensor that differs).
    reference = model.merge_and_unload().state_dict()
    if emb_lora and tied_emb:
        reference["lm_head.weight"] = orig["backbone.embeddings.weight"]
    worst, where, problems, changed = merge_diff(merged.state_dict(), reference, orig)
    ok = not problems and worst <= WEIGHT_ATOL
    report(ok, f"{label} merged weights vs peft merge_and_unload",
           f"max abs {worst:.2e} ({where or 'all equal'}), tol {WEIGHT_ATOL:.0e}; {changed} "
           f"tensors changed from the base" if not problems else "; ".join(problems))


def check_full_run(binary: str, base_label: str, base_dir: str, run_dir: str, eval_path: str,
                   seqs: list[list[int]], base_loss: float) -> None:
    label = f"{base_label}/e-full"
    model_dir = os.path.join(run_dir, "model")
    model, bad = load_hf(model_dir)
    base_state = load_hf(base_dir)[0].state_dict()
    state = model.state_dict()
    moved = sum(not torch.equal(state[k], base_state[k]) for k in base_state if k in state)
    same_keys = set(state) == set(base_state)
    report(not bad and same_keys and moved > 0, f"{label} model loads",
           f"no missing/unexpected/mismatched keys, same tensors as the base, {moved} of "
           f"{len(base_state)} tensors trained away from the base"
           if not bad and same_keys else f"loading info {bad}, same keys {same_keys}")
    _, hf_loss, n = forward(model, seqs)
    check_loss(f"{label} loss transformers vs ssmtune eval --model run/model", hf_loss, n,
               ssmtune_eval(binary, model_dir, eval_path), abs(hf_loss - base_loss))


def train_run(binary: str, work: str, label: str, base: str, train_path: str,
              peft_cfg: dict) -> str:
    """`ssmtune train` of work/exp-LABEL.json: STEPS steps of batch 4 on the tokens file
    train_path, constant lr 2e-2 for LoRA, 3e-3 otherwise, seed 7, one thread. Returns the run
    directory, work/run-LABEL."""
    run_dir = os.path.join(work, f"run-{label}")
    exp = {"model": base, "output_dir": run_dir, "seed": 7,
           "data": {"train": train_path, "format": "tokens", "max_length": 64},
           "peft": peft_cfg,
           "optimizer": {"lr": 2e-2 if "lora" in peft_cfg else 3e-3},
           "schedule": {"type": "constant"},
           "training": {"steps": STEPS, "batch_size": 4, "threads": 1},
           "checkpoint": {"keep": 1}}
    exp_path = os.path.join(work, f"exp-{label}.json")
    with open(exp_path, "w") as f:
        json.dump(exp, f, indent=1)
    run([binary, "train", exp_path])
    return run_dir


def parse_args(doc: str) -> argparse.Namespace:
    """The command line of the scripts that check what ssmtune writes: the binary (made
    absolute) and --keep DIR."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("ssmtune", help="path to the ssmtune binary")
    ap.add_argument("--keep", help="work in this (new or empty) directory and keep it")
    args = ap.parse_args()
    if not (os.path.isfile(args.ssmtune) and os.access(args.ssmtune, os.X_OK)):
        ap.error(f"{args.ssmtune}: not an executable file (build the ssmtune target first)")
    args.ssmtune = os.path.abspath(args.ssmtune)
    return args


def start(doc: str, note: str = "") -> argparse.Namespace:
    """parse_args, one torch thread, transformers' logging down to errors, and the versions
    line ("torch T, transformers V<note>, peft P")."""
    args = parse_args(doc)
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}{note}, "
          f"peft {peft.__version__}")
    return args


def in_work_dir(keep: str | None, prefix: str, body) -> None:
    """body(work): in `keep` (created, kept) or in a temporary directory removed afterwards."""
    if keep:
        os.makedirs(keep, exist_ok=True)
        body(os.path.abspath(keep))
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as work:
            body(work)


def finish() -> int:
    """Prints the verdict; the exit status: 1 if any check failed."""
    print(f"FAIL ({len(failures)} checks failed: {', '.join(failures)})" if failures else
          "OK (all checks passed)")
    return 1 if failures else 0


def main() -> int:
    args = parse_args(__doc__)
    binary = args.ssmtune
    torch.set_num_threads(1)
    torch.manual_seed(0)
    hf_logging.set_verbosity_error()
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}; tolerances: loss rel {LOSS_RTOL:.0e}, logits abs "
          f"{LOGITS_ATOL:.0e}, weights abs {WEIGHT_ATOL:.0e} (float32)")

    def body(work: str) -> None:
        rng = random.Random(1234)
        train_path, eval_path = os.path.join(work, "train.jsonl"), os.path.join(work, "eval.jsonl")
        write_jsonl(train_path, make_sequences(rng, 64))
        seqs = make_sequences(rng, 8)
        write_jsonl(eval_path, seqs)
        for base_label, (sizes, seed) in BASES.items():
            sizes_path = os.path.join(work, f"sizes-{base_label}.json")
            base_dir = os.path.join(work, f"base-{base_label}")
            with open(sizes_path, "w") as f:
                json.dump(sizes, f)
            run([binary, "init", sizes_path, "--out", base_dir, "--seed", str(seed),
                 "--tokenizer", TOKENIZER])
            base, bad = load_hf(base_dir)
            report(not bad, f"{base_label} base loads", f"loading info {bad or 'clean'}")
            base_logits, base_loss, n = forward(base, seqs)
            check_loss(f"{base_label} base loss transformers vs ssmtune eval", base_loss, n,
                       ssmtune_eval(binary, base_dir, eval_path), None)
            for run_label, (peft_cfg, bases) in RUNS.items():
                if base_label not in bases:
                    continue
                run_dir = train_run(binary, work, f"{base_label}-{run_label}", base_dir,
                                    train_path, peft_cfg)
                try:
                    if "lora" in peft_cfg:
                        check_lora_run(binary, work, base_label, base_dir, run_label,
                                       peft_cfg["lora"], run_dir, eval_path, seqs, base_logits,
                                       base_loss)
                    else:
                        check_full_run(binary, base_label, base_dir, run_dir, eval_path, seqs,
                                       base_loss)
                except Exception as e:  # a load error is a failed check, not the end of the run
                    report(False, f"{base_label}/{run_label}", f"{type(e).__name__}: {e}")

    in_work_dir(args.keep, "ssmtune-hf-interop-", body)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
