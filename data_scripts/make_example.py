#!/usr/bin/env python3
"""Make the shipped example under configs/quickstart/ from Debian's package descriptions.

  configs/quickstart/data/{train,eval}.jsonl, data/README.md
      classification: a package's Debian Section (games, graphics, science, sound) from its
      one-line description, {"prompt": "Description: ...\\nSection:", "label": "games", ...};
      one package per source package, split by source package, so no two splits share a source
  configs/quickstart/model/
      a small Mamba (d_model 128, 4 layers, d_state 16, BPE vocab 2048, tied embeddings),
      `ssmtune init` + full training (configs/quickstart/pretrain.json) on the long
      descriptions of the other packages (none of the task's source packages)
  configs/quickstart/sizes.json
      the model's sizes for `ssmtune init` (MODEL_SIZES below); pretrain.json, beside it, is
      the hand-written pretraining config this script runs
  configs/quickstart/README.md
      what was made and from what; the pretraining run's and configs/quickstart.json's numbers

Source: Debian 12 (bookworm) main, http://deb.debian.org/debian/dists/bookworm/:
main/binary-amd64/Packages.xz (Section, Source) and main/i18n/Translation-en.xz (long
descriptions), checked against the SHA256 sums of the release's InRelease file (whose signature
is checked with gpgv and debian-archive-keyring when both are installed). The files change with
each bookworm point release; the Release version, date and sums used are written to
data/README.md, and a run on other files says so (its outputs will differ from the committed).

Steps (3 and 5 are skipped when --work holds their output made from the same inputs):
  1. download the three files into --work (kept; needs http access to the Debian mirror)
  2. the task's train/eval sets, and the pretraining corpus -> --work/pretrain_corpus.jsonl
     (~27 MB, so made again rather than committed) and --work/pretrain_heldout.jsonl
  3. a byte-level BPE tokenizer (tokenizers library), GPT-NeoX-like  -> --work/tokenizer/
  4. ssmtune init configs/quickstart/sizes.json                     -> --work/init/
  5. ssmtune train configs/quickstart/pretrain.json                 -> --work/pretrain/
  6. copy --work/pretrain/model/ to configs/quickstart/model/
  7. ssmtune eval and train configs/quickstart.json (-> --work/quickstart/), then the READMEs

Everything is sorted and seeded: with the same Debian files, tokenizers version, ssmtune build
and thread count (pretrain.json sets training.threads = 2) every output is the same bytes, except
the timings quoted in configs/quickstart/README.md (checked: two runs from scratch).

Usage (from the repository root, after building ssmtune; see data_scripts/README.md):
    /tmp/fxenv/bin/python data_scripts/make_example.py   # ~4 minutes on 2 idle cores
    /tmp/fxenv/bin/python data_scripts/make_example.py --data-only  # steps 1-2, no tokenizers
Options: --ssmtune PATH (default build/apps/ssmtune/ssmtune), --work DIR (default
build/make_example), --mirror URL, --fresh (redo steps 3 and 5). Needs Python 3.9+ and, from
step 3 on, the `tokenizers` package (pinned in data_scripts/requirements.txt).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import lzma
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request

GENERATOR = "data_scripts/make_example.py"
SEED = 0

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = "main/binary-amd64/Packages.xz"
TRANSLATION = "main/i18n/Translation-en.xz"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# The files the committed example was made from (Debian 12.15, Release date 2026-07-11).
EXPECTED_SHA256 = {
    PACKAGES: "9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5",
    TRANSLATION: "a3d4a0bfd8e9242810b0885eda7c1a6e05dac15b333ddbaab03ba56f2dfa4bf0",
}

# Sections whose one-line descriptions use distinct vocabulary, and whose label words start
# with distinct tokens (checked in step 3: accuracy scores only the first token).
SECTIONS = ["games", "graphics", "science", "sound"]
N_TRAIN_PER_SECTION = 200
N_EVAL_PER_SECTION = 50
PRETRAIN_BATCH_TOKENS = 16 * 256  # pretrain.json: training.batch_size x data.max_length
GENERATE_PROMPT = "Package: a"
GENERATE_TOKENS = 48
N_HELDOUT = 200  # corpus documents kept out of pretraining to measure its held-out loss

VOCAB_SIZE = 2048
MODEL_SIZES = {
    "model_type": "mamba",
    "vocab_size": VOCAB_SIZE,  # a multiple of 8 already
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "state_size": 16,
    "expand": 2,
    "conv_kernel": 4,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 1,
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "configs", "quickstart")


def log(msg: str) -> None:
    print(f"[make_example] {msg}", flush=True)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text(path: str, text: str) -> None:
    """Atomic write: a failed run never leaves a half-written committed file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def write_jsonl(path: str, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------- step 1: the Debian files


def download(url: str, path: str) -> None:
    log(f"download {url}")
    with urllib.request.urlopen(url, timeout=120) as r, open(path + ".part", "wb") as f:
        shutil.copyfileobj(r, f)
    os.replace(path + ".part", path)


def release_fields(inrelease: str) -> dict:
    """Version, Date and the SHA256 table of an InRelease file (RFC 822 fields)."""
    fields, sums, in_sha = {}, {}, False
    for line in inrelease.splitlines():
        if line.startswith("-----BEGIN PGP SIGNATURE"):
            break
        if line.startswith(" ") and in_sha:
            digest, size, name = line.split()
            sums[name] = (digest, int(size))
            continue
        in_sha = line.startswith("SHA256:")
        if ":" in line and not line.startswith(" "):
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    fields["sha256"] = sums
    return fields


def fetch_debian(work: str, mirror: str) -> dict:
    base = f"{mirror}/dists/{SUITE}"
    inrelease = os.path.join(work, "InRelease")
    if not os.path.exists(inrelease):
        download(f"{base}/InRelease", inrelease)
    if shutil.which("gpgv") and os.path.exists(KEYRING):
        r = subprocess.run(["gpgv", "--keyring", KEYRING, inrelease], capture_output=True,
                           text=True)
        if r.returncode != 0:
            sys.exit(f"error: {inrelease}: bad signature:\n{r.stderr}")
        signature = "checked with gpgv against " + KEYRING
    else:
        signature = "not checked (gpgv or debian-archive-keyring missing)"
        log(f"warning: InRelease signature {signature}")
    with open(inrelease, encoding="utf-8") as f:
        rel = release_fields(f.read())
    rel["signature"] = signature
    rel["files"] = {}
    for name in (PACKAGES, TRANSLATION):
        path = os.path.join(work, os.path.basename(name))
        digest, size = rel["sha256"][name]
        if not os.path.exists(path) or sha256_file(path) != digest:
            download(f"{base}/{name}", path)
        got = sha256_file(path)
        if got != digest or os.path.getsize(path) != size:
            sys.exit(f"error: {path}: SHA256 {got}, but {inrelease} lists {digest}")
        if got != EXPECTED_SHA256[name]:
            log(f"warning: {name} is not the file the committed example was made from "
                f"(SHA256 {got}); the outputs will differ from the committed ones")
        rel["files"][name] = {"url": f"{base}/{name}", "sha256": got, "size": size}
    return rel


# ---------------------------------------------------------------- step 2: task and corpus


def stanzas(path: str):
    """Yields the fields of each stanza of a Debian control file (.xz), continuation lines
    (those starting with a space) kept in the field's value after a newline."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        fields, key = {}, None
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if fields:
                    yield fields
                fields, key = {}, None
            elif line[0] in " \t":
                fields[key] += "\n" + line
            else:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            yield fields


def long_description(body: str) -> str:
    """Debian's extended description (Policy 5.6.13) as plain text: one leading space off
    each line, " ." lines as blank lines."""
    lines = []
    for line in body.split("\n"):
        line = line[1:] if line.startswith(" ") else line
        lines.append("" if line == "." else line.rstrip())
    return "\n".join(lines).strip("\n")


def source_of(pkg: dict) -> str:
    return pkg.get("Source", pkg["Package"]).split()[0]  # "Source: foo (1.2-3)" names foo


def prompt_of(short: str) -> str:
    return f"Description: {short}\nSection:"


def make_task(packages: list[dict]) -> tuple[list[dict], list[dict], set[str]]:
    """One example per source package (the binary named like the source if there is one,
    else the first by name), no description twice; per section, the sources are shuffled
    with SEED and the first N_EVAL go to eval, the next N_TRAIN to train. Returns the splits
    and every source package of the task's sections that was drawn (kept out of the corpus)."""
    by_section: dict[str, dict[str, list[dict]]] = {s: collections.defaultdict(list)
                                                    for s in SECTIONS}
    for p in packages:
        if p.get("Section") in by_section:
            by_section[p["Section"]][source_of(p)].append(p)
    train, evals, used_sources = [], [], set()
    seen_descriptions = set()
    for section in SECTIONS:
        sources = sorted(by_section[section])
        random.Random(f"{SEED}:{section}").shuffle(sources)
        picked = []
        for src in sources:
            group = sorted(by_section[section][src], key=lambda p: (p["Package"] != src,
                                                                     p["Package"]))
            rep = group[0]
            short = rep["Description"].split("\n")[0].strip()
            if short.lower() in seen_descriptions:
                continue
            seen_descriptions.add(short.lower())
            picked.append({"prompt": prompt_of(short), "label": section,
                           "package": rep["Package"], "source": src})
            used_sources.add(src)
            if len(picked) == N_EVAL_PER_SECTION + N_TRAIN_PER_SECTION:
                break
        if len(picked) < N_EVAL_PER_SECTION + N_TRAIN_PER_SECTION:
            sys.exit(f"error: section {section} has only {len(picked)} usable source packages")
        evals += picked[:N_EVAL_PER_SECTION]
        train += picked[N_EVAL_PER_SECTION:]
    random.Random(f"{SEED}:train").shuffle(train)
    random.Random(f"{SEED}:eval").shuffle(evals)
    return train, evals, used_sources


def make_corpus(translations: list[dict], packages: list[dict], excluded_sources: set[str]
                ) -> list[dict]:
    """One document per distinct long description (by Description-md5), named after its
    first package by name; none from an excluded source package, nor sharing a description
    with one. Shuffled with SEED, so any prefix of the packed stream is a sample of all."""
    source = {p["Package"]: source_of(p) for p in packages}
    excluded_md5 = {p["Description-md5"] for p in packages
                    if source_of(p) in excluded_sources and "Description-md5" in p}
    docs = {}
    for t in sorted(translations, key=lambda t: t["Package"]):
        md5 = t.get("Description-md5")
        if md5 is None or md5 in docs or md5 in excluded_md5:
            continue
        if source.get(t["Package"], t["Package"]) in excluded_sources:
            continue
        short, _, body = t["Description-en"].partition("\n")
        text = f"Package: {t['Package']}\nDescription: {short.strip()}\n"
        if body.strip():
            text += "\n" + long_description(body) + "\n"
        docs[md5] = text
    rows = [{"text": docs[m]} for m in sorted(docs)]
    random.Random(f"{SEED}:corpus").shuffle(rows)
    return rows


# ---------------------------------------------------------------- step 3: the tokenizer


def train_tokenizer(corpus: list[dict], out_dir: str) -> None:
    """GPT-NeoX-like byte-level BPE: NFC, ByteLevel(add_prefix_space=False), <|endoftext|> = 0
    (EOS), <|padding|> = 1 (pad)."""
    from neox_tokenizer import neox_like_bpe

    tok, trainer = neox_like_bpe(VOCAB_SIZE)
    tok.train_from_iterator((r["text"] for r in corpus), trainer)
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|padding|>") == 1
    assert tok.get_vocab_size() <= VOCAB_SIZE, tok.get_vocab_size()
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    write_text(os.path.join(out_dir, "tokenizer_config.json"), json.dumps({
        "add_prefix_space": False,
        "tokenizer_class": "GPTNeoXTokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|padding|>",
        "model_max_length": 1024,
    }, indent=2) + "\n")
    first = {}
    for section in SECTIONS:
        ids = tok.encode(" " + section).ids
        if ids[0] in first:
            sys.exit(f"error: label words {first[ids[0]]!r} and {section!r} both start with "
                     f"token {ids[0]}; choose other sections")
        first[ids[0]] = section
        log(f"label {section!r}: tokens {tok.encode(' ' + section).tokens}")


# ---------------------------------------------------------------- steps 4-7: ssmtune


def stamp_key(paths: list[str], extra: str) -> str:
    """What a step's output was made from: its input files' hashes and `extra`."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(f"{os.path.basename(p)} {sha256_file(p)}\n".encode())
    return h.hexdigest()


def read_stamp(out_dir: str) -> str:
    try:
        with open(os.path.join(out_dir, "make_example.stamp"), encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def write_stamp(out_dir: str, text: str) -> None:
    write_text(os.path.join(out_dir, "make_example.stamp"), text + "\n")


def run(cmd: list[str], passive: bool = True) -> float:
    """Runs cmd, returns its wall time in seconds. With other processes on the cores, OpenMP
    threads that spin at barriers (libgomp's default) made training steps 5-15x slower here;
    with `passive` (OMP_WAIT_POLICY=PASSIVE unless set) they sleep instead, which costs ~30% on
    idle cores. The results are the same bytes either way."""
    log("$ " + " ".join(cmd))
    t0 = time.time()
    env = dict(os.environ)
    if passive:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    subprocess.run(cmd, check=True, env=env)
    return time.time() - t0


def n_params(cfg: dict) -> int:
    """Parameters of a Mamba LM from its config.json, counted as transformers counts them:
    tied embeddings counted once, no in/out_proj bias, conv bias (MODEL_SIZES' choices)."""
    d, v, n, k = cfg["hidden_size"], cfg["vocab_size"], cfg["state_size"], cfg["conv_kernel"]
    e, r = cfg["intermediate_size"], cfg["time_step_rank"]
    layer = d * 2 * e + e * k + e + e * (r + 2 * n) + r * e + e + e * n + e + e * d + d
    return v * d + cfg["num_hidden_layers"] * layer + d


def ship_pretrained(run_dir: str, model_dir: str, ssmtune: str, count_params) -> dict:
    """Copies a pretraining run's model/ to model_dir (replacing it) and returns what its README
    quotes: n_params (count_params of its config.json), the run's metrics rows and summary, and
    a greedy sample from GENERATE_PROMPT."""
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    shutil.copytree(os.path.join(run_dir, "model"), model_dir)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        shipped = {"n_params": count_params(json.load(f))}
    shipped["metrics"] = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        shipped["summary"] = json.load(f)
    shipped["sample"] = subprocess.run(
        [ssmtune, "generate", "--model", model_dir, "--prompt", GENERATE_PROMPT,
         "--max-new-tokens", str(GENERATE_TOKENS)], check=True, capture_output=True,
        text=True).stdout.rstrip()
    return shipped


def results_and_origin(base: dict, tuned: dict, generator: str) -> str:
    """An example README's table (the base model's eval metrics vs the fine-tuned run's) and the
    paragraph saying which script made the page."""
    def metric_cells(m: dict) -> str:
        return f"{m['accuracy']:.3f} | {m['loss']:.3f}"

    tuned_run = f"seed {SEED}, {tuned['steps']} steps, {tuned['elapsed_s']:.0f} s"
    return f"""\
| eval.jsonl ({base['examples']} examples) | accuracy | loss (per label token) |
|---|---|---|
| base model | {metric_cells(base['metrics'])} |
| after `ssmtune train` ({tuned_run}) | {metric_cells(tuned['eval'])} |

Everything here is made by `{generator}` (its docstring says how), which also measured the
numbers on this page; rerun it rather than editing. `sizes.json` and `pretrain.json` are its
inputs to `ssmtune init` and `ssmtune train`.
"""


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def make_data(work: str) -> dict:
    """Step 2: writes data/{train,eval}.jsonl and --work/pretrain_{corpus,heldout}.jsonl."""
    packages = [p for p in stanzas(os.path.join(work, os.path.basename(PACKAGES)))
                if "Package" in p]
    translations = [t for t in stanzas(os.path.join(work, os.path.basename(TRANSLATION)))
                    if "Package" in t and "Description-en" in t]
    train, evals, used_sources = make_task(packages)
    assert not {r["source"] for r in train} & {r["source"] for r in evals}
    write_jsonl(os.path.join(OUT, "data", "train.jsonl"), train)
    write_jsonl(os.path.join(OUT, "data", "eval.jsonl"), evals)
    corpus = make_corpus(translations, packages, used_sources)
    # The last N_HELDOUT documents measure the pretraining's held-out loss.
    write_jsonl(os.path.join(work, "pretrain_corpus.jsonl"), corpus[:-N_HELDOUT])
    write_jsonl(os.path.join(work, "pretrain_heldout.jsonl"), corpus[-N_HELDOUT:])
    stats = {"train": len(train), "eval": len(evals), "corpus_docs": len(corpus) - N_HELDOUT,
             "corpus_chars": sum(len(r["text"]) for r in corpus[:-N_HELDOUT])}
    log(f"task: {stats['train']} train, {stats['eval']} eval; pretraining corpus: "
        f"{stats['corpus_docs']} documents, {stats['corpus_chars']} characters")
    return stats


def make_tokenizer(work: str, fresh: bool) -> str:
    """Step 3, skipped when --work/tokenizer was made from the same corpus."""
    import tokenizers

    corpus_path = os.path.join(work, "pretrain_corpus.jsonl")
    tok_dir = os.path.join(work, "tokenizer")
    key = stamp_key([corpus_path], f"tokenizers {tokenizers.__version__} vocab {VOCAB_SIZE}")
    if fresh or read_stamp(tok_dir) != key:
        train_tokenizer(read_jsonl(corpus_path), tok_dir)
        write_stamp(tok_dir, key)
    else:
        log(f"reuse {tok_dir} (made from the same corpus)")
    return tokenizers.__version__


def pretrain(work: str, ssmtune: str, fresh: bool) -> float:
    """Steps 4-5: ssmtune init, then ssmtune train pretrain.json; the training is skipped when
    --work/pretrain was made from the same config, corpus and initial model. Returns the
    training's wall time in seconds."""
    write_text(os.path.join(OUT, "sizes.json"), json.dumps(MODEL_SIZES, indent=2) + "\n")
    init_dir = os.path.join(work, "init")
    run([ssmtune, "init", os.path.join(OUT, "sizes.json"), "--out", init_dir, "--seed",
         str(SEED), "--tokenizer", os.path.join(work, "tokenizer"), "--overwrite"])
    run_dir = os.path.join(work, "pretrain")
    config = os.path.join(OUT, "pretrain.json")
    corpus_path = os.path.join(work, "pretrain_corpus.jsonl")
    heldout_path = os.path.join(work, "pretrain_heldout.jsonl")
    key = stamp_key([config, corpus_path, heldout_path] +
                    [os.path.join(init_dir, f) for f in sorted(os.listdir(init_dir))], "")
    stamp = read_stamp(run_dir)
    if not fresh and stamp.startswith(key + " "):
        log(f"reuse {run_dir} (same config, corpus and initial model; --fresh retrains)")
        return float(stamp.split()[1])
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # a fresh run, not a resume of an older one
    # The paths are pretrain.json's own for the default --work; given again for any other.
    seconds = run([ssmtune, "train", config, "--set", "model=" + init_dir,
                   "--set", "data.train=" + corpus_path, "--set", "data.eval=" + heldout_path,
                   "--out", run_dir])
    write_stamp(run_dir, f"{key} {seconds:.1f}")
    return seconds


def check_quickstart(work: str, ssmtune: str) -> tuple[dict, dict]:
    """Step 7: configs/quickstart.json on the new model, for the README: the base model's eval
    metrics and the fine-tuned run's summary."""
    config = os.path.join(ROOT, "configs", "quickstart.json")
    # --model: without it, eval would use runs/quickstart/adapter if the current directory
    # holds one.
    base = json.loads(subprocess.run(
        [ssmtune, "eval", config, "--model", os.path.join(OUT, "model"), "--json"], check=True,
        capture_output=True, text=True).stdout)
    run_dir = os.path.join(work, "quickstart")
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    run([ssmtune, "train", config, "--out", run_dir], passive=False)  # timed as users run it
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        tuned = json.load(f)
    log(f"quickstart: accuracy {base['metrics']['accuracy']:.3f} -> "
        f"{tuned['eval']['accuracy']:.3f}, loss {base['metrics']['loss']:.3f} -> "
        f"{tuned['eval']['loss']:.3f}")
    return base, tuned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "make_example"),
                    help="downloads and intermediate files (default: build/make_example)")
    ap.add_argument("--ssmtune", default=os.path.join(ROOT, "build", "apps", "ssmtune",
                                                      "ssmtune"), help="the ssmtune binary")
    ap.add_argument("--mirror", default=MIRROR, help=f"Debian mirror (default: {MIRROR})")
    ap.add_argument("--data-only", action="store_true", help="steps 1-2 only")
    ap.add_argument("--fresh", action="store_true",
                    help="retrain the tokenizer and the model even if --work holds them")
    args = ap.parse_args()
    work = os.path.abspath(args.work)
    if not args.data_only and not os.access(args.ssmtune, os.X_OK):
        sys.exit(f"error: {args.ssmtune}: no ssmtune binary; build it first (bash .ci/build) "
                 "or give its path with --ssmtune")
    os.makedirs(work, exist_ok=True)
    os.makedirs(os.path.join(OUT, "data"), exist_ok=True)

    rel = fetch_debian(work, args.mirror)
    log(f"Debian {rel.get('Version')} ({rel.get('Suite')}), Release date {rel.get('Date')}")
    stats = make_data(work)
    write_data_readme(rel, stats)
    if args.data_only:
        return
    stats["tokenizers_version"] = make_tokenizer(work, args.fresh)
    stats["pretrain_seconds"] = round(pretrain(work, args.ssmtune, args.fresh))

    model_dir = os.path.join(OUT, "model")
    stats.update(ship_pretrained(os.path.join(work, "pretrain"), model_dir, args.ssmtune, n_params))
    stats["quickstart_base"], stats["quickstart"] = check_quickstart(work, args.ssmtune)
    write_example_readme(stats)
    log(f"done: {model_dir} ({os.path.getsize(os.path.join(model_dir, 'model.safetensors'))} "
        f"bytes of weights)")


# ---------------------------------------------------------------- the READMEs


def reflow(markdown: str) -> str:
    """Re-wraps the prose paragraphs of `markdown` to 100 columns (values substituted into the
    templates below have any length); code blocks, tables and headings stay as they are."""
    blocks = []
    for block in markdown.strip("\n").split("\n\n"):
        if any(line.startswith(("    ", "|", "#")) for line in block.split("\n")):
            blocks.append(block)
        else:
            blocks.append(textwrap.fill(" ".join(block.split()), width=100,
                                        break_on_hyphens=False, break_long_words=False))
    return "\n\n".join(blocks) + "\n"


def write_data_readme(rel: dict, stats: dict) -> None:
    files = "\n".join(f"| `{name}` | {f['size']} | `{f['sha256']}` |"
                      for name, f in rel["files"].items())
    with open(os.path.join(OUT, "data", "train.jsonl"), encoding="utf-8") as f:
        first_line = f.readline().strip()
    counts = collections.Counter()
    for split in ("train", "eval"):
        for row in read_jsonl(os.path.join(OUT, "data", f"{split}.jsonl")):
            counts[split, row["label"]] += 1
    table = "\n".join(f"| `{s}` | {counts['train', s]} | {counts['eval', s]} |" for s in SECTIONS)
    write_text(os.path.join(OUT, "data", "README.md"), reflow(f"""\
# Debian package sections: the quickstart classification data

Made by `{GENERATOR}`; rerun it rather than editing. One JSON object per line, e.g. the first of
`train.jsonl`:

    {first_line}

The task: a package's Debian archive section, one of {", ".join(f"`{s}`" for s in SECTIONS)},
from its one-line description. Format `classification` (docs/datasets.md): the example is the
prompt followed by `" " + label`; accuracy compares the label words' first tokens after the
prompt. `package` and `source` are for reference; ssmtune ignores them.

| label | train.jsonl | eval.jsonl |
|---|---|---|
{table}

How the lines were chosen: for each section, every source package with a binary package in that
section of `{PACKAGES}`; for each source one binary package (the one named like the source, else
the first by name), skipping a description already taken (compared case-insensitively). The
sources of a section are shuffled with Python's `random.Random("{SEED}:<section>")`; the first
{N_EVAL_PER_SECTION} go to `eval.jsonl`, the next {N_TRAIN_PER_SECTION} to `train.jsonl`, so the
two files share no source package and no description. Each file is then shuffled.

None of these source packages is in the pretraining corpus of `../model/`: the long descriptions
of {stats['corpus_docs']:,} other packages ({stats['corpus_chars']:,} characters, from
`{TRANSLATION}`), which the script makes again rather than commit.

## Source

Debian {rel.get('Version')} ("{rel.get('Codename', SUITE)}", suite `{rel.get('Suite')}` when
downloaded), archive area `main`, Release date {rel.get('Date')}, from {MIRROR}/dists/{SUITE}/.
The signature of `InRelease` was {rel['signature']}; the files below were checked against its
SHA256 list.

| file | bytes | SHA256 |
|---|---|---|
{files}

## License

Package descriptions are part of each package's metadata (the `Description` field of its
`debian/control`, written by its upstream authors and Debian maintainers) and are distributed
with the package under the package's own license; Debian publishes them in the archive index
files above. They are used here, {stats['train'] + stats['eval']} one-line descriptions, as
example data.
"""))


def write_example_readme(stats: dict) -> None:
    held_out = {r["step"]: r["eval"]["loss"] for r in stats["metrics"] if "eval" in r}
    train_loss = {r["step"]: r["loss"] for r in stats["metrics"] if "loss" in r}
    steps = sorted(s for s in train_loss if s in held_out or s in (10, 50))
    curve = "\n".join(f"| {s} | {train_loss[s]:.3f} | "
                      + (f"{held_out[s]:.3f} |" if s in held_out else "|") for s in steps)
    summary = stats["summary"]
    n_tokens = summary["steps"] * PRETRAIN_BATCH_TOKENS
    epochs = max(r.get("epoch", 0) for r in stats["metrics"])
    base, tuned = stats["quickstart_base"], stats["quickstart"]

    write_text(os.path.join(OUT, "README.md"), reflow(f"""\
# The shipped example

`configs/quickstart.json` fine-tunes `model/` with LoRA to tell a Debian package's section from
its one-line description (`data/`, described in `data/README.md`). From the repository root:

    ssmtune eval configs/quickstart.json --model configs/quickstart/model  # the base model
    ssmtune train configs/quickstart.json     # LoRA, writes runs/quickstart/
    ssmtune eval configs/quickstart.json      # base + runs/quickstart/adapter, once it exists

{results_and_origin(base, tuned, GENERATOR)}
## model/

A Mamba language model small enough to pretrain on a laptop CPU in minutes:
{MODEL_SIZES['num_hidden_layers']} layers, d_model {MODEL_SIZES['hidden_size']}, d_state
{MODEL_SIZES['state_size']}, expand {MODEL_SIZES['expand']}, tied embeddings,
{stats['n_params']:,} parameters in float32. Its tokenizer is a byte-level BPE with {VOCAB_SIZE}
tokens, GPT-NeoX-like (NFC, `<|endoftext|>` = 0 is EOS, `<|padding|>` = 1 is pad), trained with
Hugging Face `tokenizers` {stats['tokenizers_version']} on the pretraining corpus.

Weights: `ssmtune init sizes.json --seed {SEED}`, then full training with `pretrain.json` (AdamW,
warmup and cosine decay, blocks of 256 packed tokens) on the long descriptions of
{stats['corpus_docs']:,} Debian packages ({stats['corpus_chars']:,} characters; no source package
of `data/`), one document each:

    Package: NAME
    Description: ONE-LINE DESCRIPTION

    LONG DESCRIPTION

{summary['steps']} steps of 16 x 256 tokens, {n_tokens / 1e6:.1f} M tokens ({epochs:.2f} of an
epoch), took {stats['pretrain_seconds']} s with 2 threads. Loss in nats per token (uniform over
the vocabulary: ln {VOCAB_SIZE} = {math.log(VOCAB_SIZE):.2f}); the held-out loss is on
{N_HELDOUT} further documents:

| step | training loss (one batch) | held-out loss |
|---|---|---|
{curve}

Greedy decoding (`ssmtune generate --model configs/quickstart/model --prompt "{GENERATE_PROMPT}"
--max-new-tokens {GENERATE_TOKENS}`):

{textwrap.indent(stats['sample'], "    ")}
"""))


if __name__ == "__main__":
    main()
