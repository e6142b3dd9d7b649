#!/usr/bin/env python3
"""The peer's training step, timed: Hugging Face transformers' Mamba + peft, as a user of that
stack fine-tunes it on the CPU (issue 16's reference). One JSON object on stdout.

The same work as `ssmtune bench --config CONFIG --batch B --seq-len L --peft PEFT`: a model of
CONFIG's shapes with random weights, a batch of random token ids, and per step forward, the
shifted cross-entropy over every token, backward and one torch.optim.AdamW update of the
trainable parameters. PEFT is an experiment config whose "peft" section says LoRA (targets,
rank, alpha, dropout) or full fine-tuning ({"full": true}); the other sections are not read.

The scan: transformers' training path with `use_mambapy=True` (mambapy's parallel scan, its
fastest CPU path) unless --sequential-scan (the default slow_forward loop, ~50x slower).

With --generate N instead: greedy generation of N new tokens, batch 1, after a prompt of
--seq-len random ids (`model.generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)`,
the recurrent cache path), each of --steps runs timed whole; the work of
`ssmtune bench --generate N`. --peft is not read then.

    python data_scripts/bench_reference.py --config configs/bench/mamba-d256.json \
        --batch 8 --seq-len 256 --peft configs/bench/lora-r8.json --steps 5 --threads 2
    python data_scripts/bench_reference.py --config configs/bench/mamba-130m.json \
        --seq-len 16 --generate 128 --steps 3 --threads 2

Versions this was written against (data_scripts/requirements-bench.txt): torch 1.13 (Debian's
python3-torch), transformers 4.44.2, peft 0.12.0, mambapy 1.2.0.
"""
import argparse
import json
import resource
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a Mamba config.json (model shapes)")
    p.add_argument("--peft", help="an experiment config with a peft section")
    p.add_argument("--generate", type=int, default=0,
                   help="time greedy generation of this many new tokens instead of a step")
    p.add_argument("--batch", type=int, help="sequences per step (default 4; 1 with --generate)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="measured steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sequential-scan", action="store_true",
                   help="transformers' default sequential scan instead of mambapy's")
    args = p.parse_args()
    if not args.generate and not args.peft:
        p.error("--peft is required unless --generate")
    if args.generate and args.batch not in (None, 1):
        p.error("--generate runs batch 1")
    if args.batch is None:
        args.batch = 1 if args.generate else 4
    return args


def peft_section(path):
    with open(path) as f:
        cfg = json.load(f)
    peft = cfg.get("peft", {"lora": {}})
    known = {"lora", "full"}
    if not peft or set(peft) - known:
        sys.exit(f"{path}: peft: only lora and full are benchmarked here, got {sorted(peft)}")
    return peft


def build_model(args, peft):
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    with open(args.config) as f:
        config = MambaConfig(**json.load(f))
    config.use_mambapy = not args.sequential_scan
    torch.manual_seed(args.seed)
    model = MambaForCausalLM(config)
    if peft.get("full"):
        return model, config
    from peft import LoraConfig, get_peft_model

    lora = peft["lora"]
    targets = lora.get("targets", ["in_proj", "out_proj"])
    if any("." in t or t == "embeddings" for t in targets):
        sys.exit(f"{args.peft}: peft.lora.targets: slices and the embedding are not benchmarked")
    rank = lora.get("rank", 8)
    model = get_peft_model(model, LoraConfig(
        r=rank, lora_alpha=lora.get("alpha", 8), lora_dropout=lora.get("dropout", 0.0),
        target_modules=targets, bias="none"))
    return model, config


def versions():
    import peft as peft_pkg
    import torch
    import transformers
    try:
        import mambapy  # noqa: F401  (only its presence matters)
        from importlib.metadata import version
        mambapy_version = version("mambapy")
    except ImportError:
        mambapy_version = None
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft_pkg.__version__, "mambapy": mambapy_version}


def peak_resident_mib():
    # Linux reports ru_maxrss in KiB: the process's resident high-water mark
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def generate(args):
    import torch

    if not hasattr(torch, "_dynamo"):
        # transformers 4.44's MambaCache marks its state tensors static for torch.compile
        # (torch >= 2.0); a hint that eager execution never reads, absent from Debian's 1.13.
        import types
        torch._dynamo = types.SimpleNamespace(mark_static_address=lambda tensor: None)
    model, config = build_model(args, {"full": True})
    model.eval()
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, config.vocab_size, (1, args.seq_len), generator=g)
    seconds = []
    with torch.no_grad():
        for run in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=args.generate, min_new_tokens=args.generate,
                                 do_sample=False, use_cache=True, pad_token_id=0)
            if run >= args.warmup:
                seconds.append(time.perf_counter() - t0)
    assert out.shape[1] == args.seq_len + args.generate, out.shape
    median = statistics.median(seconds)
    print(json.dumps({
        "config": args.config, "generate": args.generate, "prompt_tokens": args.seq_len,
        "threads": torch.get_num_threads(), "run_seconds": seconds,
        "median_run_seconds": median, "tokens_per_s": args.generate / median,
        "peak_resident_mib": peak_resident_mib(), "versions": versions(),
    }))


def main():
    args = parse_args()
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.generate:
        return generate(args)
    peft = peft_section(args.peft)
    model, config = build_model(args, peft)
    model.train()  # the mambapy scan runs in training mode only
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=g)

    seconds = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss  # shifted inside, as ssmtune's
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step >= args.warmup:
            seconds.append(time.perf_counter() - t0)

    median = statistics.median(seconds)
    tokens = args.batch * args.seq_len
    print(json.dumps({
        "config": args.config, "peft": args.peft,
        "method": "full" if peft.get("full") else "lora",
        "batch": args.batch, "seq_len": args.seq_len, "tokens_per_step": tokens,
        "threads": torch.get_num_threads(),
        "scan": "sequential" if args.sequential_scan else "mambapy",
        "trainable_parameters": sum(p.numel() for p in params),
        "step_seconds": seconds, "median_step_seconds": median,
        "tokens_per_s": tokens / median,
        "peak_resident_mib": peak_resident_mib(), "versions": versions(),
    }))


if __name__ == "__main__":
    main()
