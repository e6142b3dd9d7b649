#!/usr/bin/env python3
"""Generate the Mamba reference fixtures under tests/fixtures/.

For every model below this script
  1. builds a `transformers.MambaForCausalLM` with random (seeded) weights,
  2. perturbs the weights so that no parameter sits at a special value
     (norm gains = 1 + noise, non-zero biases, D = 1 + noise, noisy A_log, ...),
  3. saves it in HF format (`save_pretrained(..., safe_serialization=True)`),
     optionally in bfloat16 and sharded,
  4. runs the transformers *slow* (pure torch, CPU, float32) forward with labels,
     back-propagates the loss and stores logits / loss / hidden states /
     every parameter gradient in `<model>/reference.safetensors`,
  5. stores an independent float64 re-implementation of the same forward pass
     (logits / loss / gradients, no float32 rounding anywhere) in
     `<model>/reference_f64.safetensors`,
  6. re-loads the saved checkpoint with `MambaForCausalLM.from_pretrained(dir)`
     and checks it reproduces the logits,
  7. runs data_scripts/check_fixtures.py (numpy only) over the output.

Usage (see data_scripts/README.md for the environment):
    python data_scripts/make_fixtures.py --out tests/fixtures

Everything runs on CPU and is deterministic: running it twice gives
byte-identical files.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from transformers import MambaConfig, MambaForCausalLM

SEED = 1234
GENERATOR = "data_scripts/make_fixtures.py"

HIDDEN_STATES_NOTE = (
    "hidden_states.{i} is entry i of MambaModel's output_hidden_states tuple (transformers %s), "
    "which has num_hidden_layers+1 entries: for i < num_hidden_layers it is the residual stream "
    "AFTER block i (block output + residual; the embedding output is NOT part of the tuple), and "
    "hidden_states.{num_hidden_layers} is norm_f(output of the last block), i.e. exactly the "
    "tensor fed to lm_head. The embedding output is stored separately as inputs_embeds."
) % transformers.__version__

LOSS_NOTE = (
    "loss = mean over positions with labels[:, 1:] != -100 of cross_entropy(logits[:, :-1], labels[:, 1:]) "
    "(HF shifts internally; labels[:, 0] is never used). Stored with shape [1]."
)

MODELS = [
    dict(
        name="mamba-tiny",
        config=dict(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            state_size=8,
            conv_kernel=4,
            expand=2,
            time_step_rank="auto",
            tie_word_embeddings=True,
            use_bias=False,
            use_conv_bias=True,
        ),
        batch=2,
        seq_len=9,
        save_dtype=torch.float32,
        max_shard_size=None,
    ),
    dict(
        name="mamba-odd",
        config=dict(
            vocab_size=37,
            hidden_size=20,
            num_hidden_layers=3,
            state_size=5,
            conv_kernel=3,
            expand=1.5,
            time_step_rank=3,
            tie_word_embeddings=False,
            use_bias=True,
            use_conv_bias=False,
            layer_norm_epsilon=1e-6,
        ),
        batch=3,
        seq_len=13,
        save_dtype=torch.float32,
        max_shard_size=None,
    ),
    dict(
        name="mamba-sharded-bf16",
        config=dict(
            vocab_size=96,
            hidden_size=32,
            num_hidden_layers=3,
            state_size=16,
            conv_kernel=4,
            expand=2,
            time_step_rank="auto",
            tie_word_embeddings=True,
            use_bias=False,
            use_conv_bias=True,
        ),
        batch=2,
        seq_len=70,
        save_dtype=torch.bfloat16,
        # ~66 KB of bf16 weights in total -> 4 shards
        max_shard_size="20KB",
    ),
]

# Target std of the logits ~ LOGIT_SCALE (rows of lm_head ~ N(0, LOGIT_SCALE^2 / D)).
LOGIT_SCALE = 1.0
# dt = softplus(dt_bias) at init is drawn log-uniform in [DT_MIN, DT_MAX]
# (HF default is [1e-3, 1e-1]; wider here so that softplus sees inputs of both signs and
# exp(dt*A) ranges from ~1 (long memory, crosses scan-chunk boundaries) to ~0).
DT_MIN, DT_MAX = 1e-3, 2.0


def inv_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


@torch.no_grad()
def perturb(model: MambaForCausalLM, cfg: MambaConfig) -> None:
    """Move every parameter away from special values (uses the global torch RNG)."""
    D = cfg.hidden_size
    N = cfg.state_size
    for name, p in model.named_parameters():
        if name == "backbone.embeddings.weight" or name == "lm_head.weight":
            p.normal_(0.0, LOGIT_SCALE / math.sqrt(D))
        elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif name.endswith("mixer.D"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif name.endswith("mixer.A_log"):
            base = torch.log(torch.arange(1, N + 1, dtype=torch.float32))
            p.copy_(base.expand_as(p) + 0.1 * torch.randn_like(p))
        elif name.endswith("dt_proj.bias"):
            u = torch.rand_like(p)
            dt = torch.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
            p.copy_(inv_softplus(dt))
        elif name.endswith(".bias"):  # in_proj / out_proj / conv1d
            p.copy_(0.1 * torch.randn_like(p))
        # in_proj / x_proj / dt_proj / out_proj / conv1d weights: keep HF/torch init


def make_inputs(cfg: MambaConfig, batch: int, seq_len: int):
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), dtype=torch.int64)
    labels = ids.clone()
    labels[0, 0] = -100  # start of a row (never used after the shift, must be ignored)
    labels[0, seq_len // 2] = -100  # middle of a row
    labels[batch - 1, 1] = -100  # first position that actually enters the loss
    labels[batch - 1, seq_len - 3] = -100
    if batch > 2:
        labels[1, seq_len // 3] = -100
        labels[1, seq_len - 1] = -100  # last position of a row
    return ids, labels


class Stats:
    """Forward hooks recording ranges of the softplus input (dt_proj output)."""

    def __init__(self, model):
        self.dt_in = []
        self.handles = [
            layer.mixer.dt_proj.register_forward_hook(lambda m, i, o: self.dt_in.append(o.detach()))
            for layer in model.backbone.layers
        ]

    def close(self):
        for h in self.handles:
            h.remove()


def hf_reference(model: MambaForCausalLM, ids, labels):
    """HF slow path, float32. Returns dict of tensors + a list of info lines."""
    model.eval()
    model.zero_grad(set_to_none=True)
    embeds = {}
    def grab_embeds(module, inputs, output):  # must return None (a returned value replaces the output)
        embeds["x"] = output.detach()

    h = model.backbone.embeddings.register_forward_hook(grab_embeds)
    stats = Stats(model)
    out = model(input_ids=ids, labels=labels, output_hidden_states=True, use_cache=False, return_dict=True)
    h.remove()
    stats.close()
    out.loss.backward()

    cfg = model.config
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    with torch.no_grad():
        assert torch.equal(out.hidden_states[-1], model.backbone.norm_f(out.hidden_states[-2]))
        assert torch.equal(out.hidden_states[0], model.backbone.layers[0](embeds["x"]))

    # the loss as documented
    sl = out.logits[:, :-1].reshape(-1, cfg.vocab_size)
    tl = labels[:, 1:].reshape(-1)
    manual = F.cross_entropy(sl, tl, ignore_index=-100)
    assert torch.allclose(manual, out.loss, rtol=1e-6, atol=0), (manual, out.loss)

    # NB: use_cache=True (the config default) cannot be used with torch 1.13: transformers 4.44's
    # MambaCache calls torch._dynamo.mark_static_address, which torch 1.13 lacks.

    t = {
        "input_ids": ids.clone(),
        "labels": labels.clone(),
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape(1),
        "inputs_embeds": embeds["x"].float().contiguous(),
    }
    for i, hs in enumerate(out.hidden_states):
        t[f"hidden_states.{i}"] = hs.detach().float().contiguous()
    n_grads = 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        g = p.grad.detach().float().contiguous()
        assert torch.count_nonzero(g) > 0, f"gradient of {name} is all zero"
        t[f"grad.{name}"] = g
        n_grads += 1

    dt_in = torch.cat([d.flatten() for d in stats.dt_in])
    info = [
        f"loss={out.loss.item():.6f} (ln V={math.log(cfg.vocab_size):.4f})",
        f"logits std={out.logits.std().item():.3f} absmax={out.logits.abs().max().item():.3f}",
        f"softplus input range [{dt_in.min().item():.3f}, {dt_in.max().item():.3f}], "
        f"fraction > 20: {(dt_in > 20).float().mean().item():.3f}",
        f"{n_grads} parameter gradients, min |grad| absmax over params = "
        f"{min(v.abs().max().item() for k, v in t.items() if k.startswith('grad.')):.3e}",
    ]
    assert (dt_in > 20).float().mean().item() == 0.0
    return t, info


# ---------------------------------------------------------------------------
# Independent float64 implementation (docs/models.md "Mamba forward pass"), used
# as rounding-free ground truth. It does not call any transformers module code.
# ---------------------------------------------------------------------------
def f64_forward(P: dict, cfg: MambaConfig, ids: torch.Tensor) -> torch.Tensor:
    E, N, R, K = cfg.intermediate_size, cfg.state_size, cfg.time_step_rank, cfg.conv_kernel
    eps = cfg.layer_norm_epsilon
    Bt, L = ids.shape

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def lin(x, name):
        y = x @ P[name + ".weight"].T
        if name + ".bias" in P:
            y = y + P[name + ".bias"]
        return y

    emb = P["backbone.embeddings.weight"]
    h = emb[ids]  # (B, L, D)
    for i in range(cfg.num_hidden_layers):
        pre = f"backbone.layers.{i}."
        n = rms(h, P[pre + "norm.weight"])
        xz = lin(n, pre + "mixer.in_proj")
        x, z = xz[..., :E], xz[..., E:]
        w = P[pre + "mixer.conv1d.weight"][:, 0, :]  # (E, K)
        xp = F.pad(x, (0, 0, K - 1, 0))  # left zero padding along L
        c = sum(xp[:, k : k + L, :] * w[:, k] for k in range(K))
        if pre + "mixer.conv1d.bias" in P:
            c = c + P[pre + "mixer.conv1d.bias"]
        u = F.silu(c)
        dbc = u @ P[pre + "mixer.x_proj.weight"].T
        dtr, Bm, Cm = dbc[..., :R], dbc[..., R : R + N], dbc[..., R + N :]
        delta = F.softplus(lin(dtr, pre + "mixer.dt_proj"))  # (B, L, E)
        A = -torch.exp(P[pre + "mixer.A_log"])  # (E, N)
        s = torch.zeros(Bt, E, N, dtype=h.dtype)
        ys = []
        for t in range(L):
            dA = torch.exp(delta[:, t, :, None] * A)
            dBu = delta[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
            s = dA * s + dBu
            ys.append((s * Cm[:, t, None, :]).sum(-1))
        y = torch.stack(ys, 1) + u * P[pre + "mixer.D"]
        o = lin(y * F.silu(z), pre + "mixer.out_proj")
        h = h + o
    hf = rms(h, P["backbone.norm_f.weight"])
    W = P["lm_head.weight"] if "lm_head.weight" in P else emb
    return hf @ W.T


def f64_reference(model: MambaForCausalLM, ids, labels):
    P = {k: v.detach().double().clone().requires_grad_(True) for k, v in model.named_parameters()}
    logits = f64_forward(P, model.config, ids)
    V = model.config.vocab_size
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward()
    t = {"logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
    for k, v in P.items():
        t[f"grad.{k}"] = v.grad.detach().contiguous()
    return t


def save_deterministic(tensors: dict, path: str, metadata: dict) -> None:
    """safetensors.torch.save_file, but with a reproducible header.

    safetensors (Rust) serialises `__metadata__` from a HashMap, so the key order of the JSON
    header changes from run to run. The data section is deterministic; re-emit the header as
    compact JSON with sorted keys (padded with spaces to a multiple of 8 bytes, as safetensors
    does). Offsets in the header are relative to the data section, so they stay valid.
    """
    blob = safetensors.torch.save(tensors, metadata=metadata)
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    hb = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        f.write(data)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def torch_origin() -> str:
    """Where torch came from: Debian's python3-torch (reports 1.13.0a0 for 1.13.1+dfsg) or PyPI."""
    if torch.__file__.startswith("/usr/lib/python3/dist-packages/"):
        try:
            ver = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "python3-torch"], capture_output=True, text=True, check=True
            ).stdout.strip()
            return f"debian python3-torch {ver}"
        except (OSError, subprocess.CalledProcessError):
            return "debian python3-torch"
    return "pypi torch"


def metadata(spec, cfg, extra=None):
    md = {
        "torch_origin": torch_origin(),
        "generator": GENERATOR,
        "seed": str(SEED),
        "model": spec["name"],
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "device": "cpu",
        "compute_dtype": "float32",
        "weights_saved_dtype": str(spec["save_dtype"]).replace("torch.", ""),
        "batch": str(spec["batch"]),
        "seq_len": str(spec["seq_len"]),
        "intermediate_size": str(cfg.intermediate_size),
        "time_step_rank": str(cfg.time_step_rank),
        "hf_path": "MambaForCausalLM slow_forward (no mamba_ssm / causal_conv1d kernels), use_cache=False, attention_mask=None",
        "hidden_states_note": HIDDEN_STATES_NOTE,
        "loss_note": LOSS_NOTE,
    }
    if extra:
        md.update(extra)
    return md


def build_one(spec: dict, index: int, out_root: str) -> list[str]:
    name = spec["name"]
    out_dir = os.path.join(out_root, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    log = [f"== {name}"]

    torch.manual_seed(SEED + index)
    cfg = MambaConfig(**spec["config"])
    model = MambaForCausalLM(cfg)
    perturb(model, cfg)
    model.eval()
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.backbone.embeddings.weight

    save_kw = dict(safe_serialization=True)
    if spec["max_shard_size"] is not None:
        save_kw["max_shard_size"] = spec["max_shard_size"]
    if spec["save_dtype"] != torch.float32:
        to_save = copy.deepcopy(model).to(spec["save_dtype"])
        to_save.save_pretrained(out_dir, **save_kw)
        del to_save
        # Reference model = the saved (rounded) weights, cast back to float32.
        model = MambaForCausalLM.from_pretrained(out_dir, torch_dtype=spec["save_dtype"]).float()
        model.eval()
        if cfg.tie_word_embeddings:
            assert model.lm_head.weight is model.backbone.embeddings.weight
    else:
        model.save_pretrained(out_dir, **save_kw)

    # inputs drawn after weight creation, from a dedicated seed (independent of save path)
    torch.manual_seed(SEED + 1000 + index)
    ids, labels = make_inputs(cfg, spec["batch"], spec["seq_len"])
    n_targets = int((labels[:, 1:] != -100).sum())

    ref, info = hf_reference(model, ids, labels)
    log += info

    f64 = f64_reference(model, ids, labels)
    e_logits = rel_err(ref["logits"], f64["logits"])
    e_loss = rel_err(ref["loss"], f64["loss"])
    e_grad = max(rel_err(ref[k], f64[k]) for k in f64 if k.startswith("grad."))
    log.append(f"HF fp32 vs independent fp64: logits rel {e_logits:.2e}, loss rel {e_loss:.2e}, worst grad rel {e_grad:.2e}")
    assert e_logits < 1e-4 and e_loss < 1e-5 and e_grad < 1e-3, (e_logits, e_loss, e_grad)
    assert set(k for k in f64 if k.startswith("grad.")) == set(k for k in ref if k.startswith("grad."))

    md = metadata(spec, cfg, {"n_loss_targets": str(n_targets)})
    save_deterministic(ref, os.path.join(out_dir, "reference.safetensors"), metadata=md)
    md64 = dict(md)
    md64["compute_dtype"] = "float64"
    md64["hf_path"] = (
        "independent float64 re-implementation in make_fixtures.py (f64_forward) of the same math, "
        "weights = the float32 reference weights; no transformers code; loss from float64 logits"
    )
    md64["hidden_states_note"] = "no hidden states in this file"
    md64["max_rel_err_vs_fp32_reference"] = json.dumps(
        {"logits": float(f"{e_logits:.3e}"), "loss": float(f"{e_loss:.3e}"), "grad": float(f"{e_grad:.3e}")}
    )
    f64_t = {"input_ids": ids.clone(), "labels": labels.clone(), **f64}
    save_deterministic(f64_t, os.path.join(out_dir, "reference_f64.safetensors"), metadata=md64)

    # Re-load the checkpoint the way a user would and compare logits.
    re = MambaForCausalLM.from_pretrained(out_dir)  # default dtype: float32 (bf16 weights are upcast)
    re.eval()
    with torch.no_grad():
        lg = re(input_ids=ids, use_cache=False).logits
    diff = (lg - ref["logits"]).abs().max().item()
    log.append(f"reload via from_pretrained: max |logits diff| = {diff:.3e}")
    assert diff == 0.0, diff
    for k, v in re.named_parameters():
        assert v.dtype == torch.float32
    # and the stored file must read back identically
    back = load_file(os.path.join(out_dir, "reference.safetensors"))
    assert all(torch.equal(back[k], ref[k]) for k in ref)

    files = sorted(os.listdir(out_dir))
    log.append("files: " + ", ".join(f"{f} ({os.path.getsize(os.path.join(out_dir, f))} B)" for f in files))
    with open(os.path.join(out_dir, "config.json")) as f:
        saved_cfg = json.load(f)
    log.append(
        "config.json: torch_dtype=%s intermediate_size=%s time_step_rank=%s tie_word_embeddings=%s"
        % (
            saved_cfg.get("torch_dtype"),
            saved_cfg.get("intermediate_size"),
            saved_cfg.get("time_step_rank"),
            saved_cfg.get("tie_word_embeddings", "(absent)"),
        )
    )
    return log


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output root, normally tests/fixtures")
    ap.add_argument("--only", action="append", help="build only this model (repeatable)")
    args = ap.parse_args(argv)

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    os.makedirs(args.out, exist_ok=True)
    print(
        f"python {platform.python_version()} torch {torch.__version__} transformers {transformers.__version__} "
        f"safetensors {safetensors.__version__} numpy {np.__version__}"
    )
    for index, spec in enumerate(MODELS):
        if args.only and spec["name"] not in args.only:
            continue
        for line in build_one(spec, index, args.out):
            print(line)

    # numpy-only self-check (recomputes the loss from the stored logits/labels, ...)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import check_fixtures

    return check_fixtures.main(["--root", args.out])


if __name__ == "__main__":
    sys.exit(main())
