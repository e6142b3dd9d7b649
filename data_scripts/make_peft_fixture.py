#!/usr/bin/env python3
"""Generate the Hugging Face `peft` LoRA reference fixtures tests/fixtures/peft-lora{,-rs}/.

ssmtune's LoRA must match peft: same forward (logits, loss), same LoRA gradients, same adapter
after K AdamW steps, same merge. For each variant below this script
  1. loads the committed base model tests/fixtures/mamba-tiny (it is referred to, not copied),
  2. wraps it with `peft.get_peft_model` (LoraConfig below) and overwrites every lora_A / lora_B
     with seeded N(0, 0.1^2) values (B != 0, so that dL/dA is not trivially zero),
  3. saves that adapter with `save_pretrained(<dir>/adapter_init)` (PEFT's own file layout),
  4. float32 run (unmodified peft + transformers code): logits, loss, LoRA gradients;
     then merge_and_unload() and the merged model's logits,
  5. float64 run: the same model `.double()`; transformers 4.44.2's Mamba code rounds to float32
     in several places even for a float64 model, so those casts are patched out (see
     `float64_clean`); peft's LoRA layers run unmodified,
  6. K = 5 AdamW steps in float64 on the LoRA parameters only, plain and with gradient clipping
     + linear warmup/decay schedule,
  7. writes reference.safetensors + fixture.json and runs check_peft_fixture.py, which re-derives
     everything with an independent float64 implementation of the documented formulas.

The stored values are documented in data_scripts/PEFT_FIXTURE.md.
Usage (environment: data_scripts/README.md plus `pip install --no-deps peft==0.12.0` and
`pip install accelerate==0.33.0`, see PEFT_FIXTURE.md):
    /tmp/fxenv/bin/python data_scripts/make_peft_fixture.py
Deterministic: two runs give byte-identical files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys

import accelerate
import numpy as np
import peft
import safetensors
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import MambaForCausalLM, get_linear_schedule_with_warmup
from transformers.models.mamba import modeling_mamba

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, HERE)
from make_fixtures import save_deterministic, torch_origin  # noqa: E402

GENERATOR = "data_scripts/make_peft_fixture.py"
BASE_NAME = "mamba-tiny"
# What adapter_config.json records as base_model_name_or_path (informative only: PeftModel
# .from_pretrained takes the base model object). Relative to the repository root.
BASE_NAME_OR_PATH = "tests/fixtures/mamba-tiny"

INIT_STD = 0.1
K_STEPS = 5
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
CLIP_MAX_NORM = 0.05
WARMUP_STEPS = 2

VARIANTS = [
    dict(
        name="peft-lora",
        seed=4242,
        lora=dict(r=4, lora_alpha=8, use_rslora=False, target_modules=["in_proj", "x_proj", "dt_proj", "out_proj"]),
    ),
    dict(
        name="peft-lora-rs",
        seed=4343,
        lora=dict(r=2, lora_alpha=4, use_rslora=True, target_modules=["in_proj", "out_proj"]),
    ),
]


def lora_config(v: dict) -> LoraConfig:
    c = v["lora"]
    return LoraConfig(
        r=c["r"],
        lora_alpha=c["lora_alpha"],
        use_rslora=c["use_rslora"],
        target_modules=list(c["target_modules"]),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )


def scaling_of(v: dict) -> float:
    c = v["lora"]
    return c["lora_alpha"] / math.sqrt(c["r"]) if c["use_rslora"] else c["lora_alpha"] / c["r"]


def saved_name(param_name: str) -> str:
    """named_parameters() name -> PEFT file name (peft drops the adapter name `default`)."""
    assert ".default." in param_name, param_name
    return param_name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def lora_params(pm) -> list:
    """[(saved name, parameter)] for every lora_A / lora_B, in named_parameters() (module) order."""
    out = [(saved_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n for n, _ in out)
    return out


def build(v: dict, init: dict | None, dtype=torch.float32):
    """Base model + LoRA (peft), adapter set to `init` (saved name -> float32 tensor) if given."""
    base = MambaForCausalLM.from_pretrained(os.path.join(FIXTURES, BASE_NAME))
    base.name_or_path = BASE_NAME_OR_PATH
    pm = get_peft_model(base, lora_config(v))
    if init is not None:
        with torch.no_grad():
            for n, p in lora_params(pm):
                p.copy_(init[n])
    pm = pm.to(dtype)
    pm.eval()  # no dropout anywhere (lora_dropout = 0, Mamba has none); use_mambapy is off
    return pm


def make_init(v: dict) -> dict:
    """Seeded N(0, INIT_STD^2) float32 values for every LoRA tensor, drawn in module order."""
    pm = build(v, None)
    g = torch.Generator().manual_seed(v["seed"])
    return {n: (INIT_STD * torch.randn(p.shape, generator=g, dtype=torch.float32)) for n, p in lora_params(pm)}


# ---------------------------------------------------------------------------
# float64 without transformers' float32 roundings
# ---------------------------------------------------------------------------
def _rmsnorm_forward_clean(self, hidden_states):
    # MambaRMSNorm.forward minus `.to(torch.float32)` (identical for float32 input)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _slow_forward_clean(self, input_states, cache_params=None, cache_position=None):
    # MambaMixer.slow_forward (transformers 4.44.2), cache_params=None branch, minus the
    # `.float()` casts of A_log, B, u and `ssm_state.to(dtype)` (all no-ops for float32 input).
    # A mixer may carry `state_terms` (make_state_fixture.py, docs/methods.md section 4): a dict
    # with optional "h0" (E, N) initial state, "h" (E, N) and "y" (E) state offsets; absent =
    # plain Mamba.
    assert cache_params is None
    terms = getattr(self, "state_terms", {})
    batch_size, seq_len, _ = input_states.shape
    dtype = input_states.dtype
    projected_states = self.in_proj(input_states).transpose(1, 2)
    hidden_states, gate = projected_states.chunk(2, dim=1)
    if "h0" in terms:  # initial-state tuning: the same H0 for every sequence of the batch
        ssm_state = terms["h0"][None].expand(batch_size, -1, -1)
    else:
        ssm_state = torch.zeros((batch_size, self.intermediate_size, self.ssm_state_size),
                                dtype=dtype)
    hidden_states = self.act(self.conv1d(hidden_states)[..., :seq_len])
    ssm_parameters = self.x_proj(hidden_states.transpose(1, 2))
    time_step, B, C = torch.split(
        ssm_parameters, [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1
    )
    discrete_time_step = F.softplus(self.dt_proj(time_step)).transpose(1, 2)
    A = -torch.exp(self.A_log)
    discrete_A = torch.exp(A[None, :, None, :] * discrete_time_step[:, :, :, None])
    discrete_B = discrete_time_step[:, :, :, None] * B[:, None, :, :]
    deltaB_u = discrete_B * hidden_states[:, :, :, None]
    scan_outputs = []
    for i in range(seq_len):
        ssm_state = discrete_A[:, :, i, :] * ssm_state + deltaB_u[:, :, i, :]
        scan_output = torch.matmul(ssm_state, C[:, i, :].unsqueeze(-1))
        scan_outputs.append(scan_output[:, :, 0])
    scan_output = torch.stack(scan_outputs, dim=-1)
    scan_output = scan_output + (hidden_states * self.D[None, :, None])
    if "h" in terms:  # state-offset h: C_t h' at the read-out only
        scan_output = scan_output + torch.einsum("bln,dn->bdl", C, terms["h"])
    if "y" in terms:  # state-offset y: a per-channel constant
        scan_output = scan_output + terms["y"][None, :, None]
    scan_output = scan_output * self.act(gate)
    return self.out_proj(scan_output.transpose(1, 2))


@contextlib.contextmanager
def float64_clean(pm):
    """Patch out transformers 4.44.2's float32 roundings in the Mamba code while active:
    MambaRMSNorm computes in float32, MambaBlock keeps the residual in float32
    (residual_in_fp32), MambaMixer.slow_forward casts A_log, B, u to float32, and
    MambaForCausalLM returns logits.float() (avoided by `forward_loss`, which calls backbone and
    lm_head itself). peft's LoRA layers are not touched."""
    inner = pm.base_model.model
    old_norm = modeling_mamba.MambaRMSNorm.forward
    old_slow = modeling_mamba.MambaMixer.slow_forward
    old_res = [blk.residual_in_fp32 for blk in inner.backbone.layers]
    modeling_mamba.MambaRMSNorm.forward = _rmsnorm_forward_clean
    modeling_mamba.MambaMixer.slow_forward = _slow_forward_clean
    for blk in inner.backbone.layers:
        blk.residual_in_fp32 = False
    try:
        yield
    finally:
        modeling_mamba.MambaRMSNorm.forward = old_norm
        modeling_mamba.MambaMixer.slow_forward = old_slow
        for blk, r in zip(inner.backbone.layers, old_res):
            blk.residual_in_fp32 = r


def forward_loss(pm, ids, labels):
    """(logits (B, L, V), loss scalar) in the model's dtype, via backbone + lm_head of the
    peft-wrapped model (LoRA layers injected). Use inside float64_clean for float64."""
    inner = pm.base_model.model
    hs = inner.backbone(input_ids=ids, use_cache=False, return_dict=True).last_hidden_state
    logits = inner.lm_head(hs)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    return logits, loss


# ---------------------------------------------------------------------------
def run_f32(v, init, ids, labels):
    pm = build(v, init)
    pm.zero_grad(set_to_none=True)
    out = pm(input_ids=ids, labels=labels, use_cache=False, return_dict=True)  # the real peft call
    out.loss.backward()
    t = {"logits": out.logits.detach().contiguous(), "loss": out.loss.detach().reshape(1)}
    for n, p in lora_params(pm):
        assert p.grad is not None and torch.count_nonzero(p.grad) == p.grad.numel(), n
        t["grad." + n] = p.grad.detach().clone()

    # The float64 patch must be a no-op for float32: same logits bit for bit.
    with torch.no_grad(), float64_clean(pm):
        lg, ls = forward_loss(pm, ids, labels)
    assert torch.equal(lg, out.logits) and torch.equal(ls, out.loss), "float64_clean changes float32 results"

    merged = pm.merge_and_unload()
    assert type(merged) is MambaForCausalLM
    with torch.no_grad():
        t["merged_logits"] = merged(input_ids=ids, use_cache=False).logits.contiguous()
    return t


def run_f64(v, init, ids, labels):
    pm = build(v, init, torch.float64)
    pm.zero_grad(set_to_none=True)
    with float64_clean(pm):
        logits, loss = forward_loss(pm, ids, labels)
        loss.backward()
    t = {"logits.f64": logits.detach().contiguous(), "loss.f64": loss.detach().reshape(1)}
    for n, p in lora_params(pm):
        assert p.dtype == torch.float64
        t["grad." + n + ".f64"] = p.grad.detach().clone()
    return t


def train_f64(v, init, ids, labels, clip_sched: bool):
    """K AdamW steps on the LoRA parameters, same batch every step. Returns tensors."""
    pm = build(v, init, torch.float64)
    named = lora_params(pm)
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, **ADAMW)
    sched = get_linear_schedule_with_warmup(opt, WARMUP_STEPS, K_STEPS) if clip_sched else None
    losses, lrs, norms = [], [], []
    with float64_clean(pm):
        for _ in range(K_STEPS):
            opt.zero_grad(set_to_none=True)
            _, loss = forward_loss(pm, ids, labels)
            losses.append(loss.item())
            loss.backward()
            if clip_sched:
                norms.append(torch.nn.utils.clip_grad_norm_(params, CLIP_MAX_NORM).item())
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None:
                sched.step()
        with torch.no_grad():
            _, loss_after = forward_loss(pm, ids, labels)
    sfx = "_clip_sched" if clip_sched else ""
    t = {f"losses{sfx}.f64": torch.tensor(losses, dtype=torch.float64)}
    t[f"loss_after_k{sfx}.f64"] = loss_after.detach().reshape(1)
    if clip_sched:
        t["lrs_clip_sched.f64"] = torch.tensor(lrs, dtype=torch.float64)
        t["grad_norms_clip_sched.f64"] = torch.tensor(norms, dtype=torch.float64)
        assert min(norms) > CLIP_MAX_NORM, "clipping must be active at every step"
    else:
        assert all(lr == ADAMW["lr"] for lr in lrs)
    for n, p in named:
        t[f"after_k{sfx}.{n}"] = p.detach().clone()
    return t


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_origin": torch_origin(),
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def adamw_json(k_steps: int, adamw: dict) -> dict:
    """fixture.json "train" keys every peft fixture has: k_steps float64 AdamW steps, one batch."""
    return {
        "steps": k_steps,
        "dtype": "float64",
        "optimizer": "torch.optim.AdamW (single-tensor path), LoRA parameters only",
        "lr": adamw["lr"],
        "betas": list(adamw["betas"]),
        "eps": adamw["eps"],
        "weight_decay": adamw["weight_decay"],
        "batch": "the same input_ids/labels at every step",
    }


def fixture_json(v: dict, names: list, n_targets: int) -> dict:
    c = v["lora"]
    return {
        "generator": GENERATOR,
        "doc": "data_scripts/PEFT_FIXTURE.md",
        "base_model": "../" + BASE_NAME,
        "adapter_init": "adapter_init",
        "reference": "reference.safetensors",
        "inputs": f"input_ids/labels of ../{BASE_NAME}/reference.safetensors (copied into reference.safetensors)",
        "n_loss_targets": n_targets,
        "versions": versions(),
        "lora": {
            "r": c["r"],
            "lora_alpha": c["lora_alpha"],
            "use_rslora": c["use_rslora"],
            "scaling": scaling_of(v),
            "scaling_formula": "lora_alpha / sqrt(r)" if c["use_rslora"] else "lora_alpha / r",
            "target_modules": sorted(c["target_modules"]),
            "lora_dropout": 0.0,
            "bias": "none",
            "task_type": "CAUSAL_LM",
            "init": f"lora_A and lora_B ~ {INIT_STD} * N(0, 1), float32, torch.Generator seeded "
            f"{v['seed']}, drawn in the order of `tensors`",
            "seed": v["seed"],
            "tensors": names,
        },
        "train": {
            **adamw_json(K_STEPS, ADAMW),
            "plain": {"grad_clip": None, "schedule": "constant"},
            "clip_sched": {
                "grad_clip": {"max_norm": CLIP_MAX_NORM, "norm_type": 2.0, "fn": "torch.nn.utils.clip_grad_norm_"},
                "schedule": {
                    "fn": "transformers.get_linear_schedule_with_warmup",
                    "num_warmup_steps": WARMUP_STEPS,
                    "num_training_steps": K_STEPS,
                },
            },
        },
    }


def normalise_adapter_config(path: str) -> dict:
    """peft writes target_modules from a Python set, so its order depends on the string hash seed;
    sort it (PEFT turns it back into a set on load) to keep the file reproducible. Same format as
    peft's own writer: json.dumps(indent=2, sort_keys=True), no trailing newline."""
    with open(path) as f:
        cfg = json.load(f)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(path, "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True))
    return cfg


def build_one(v: dict) -> list:
    out_dir = os.path.join(FIXTURES, v["name"])
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    log = [f"== {v['name']}"]

    base_ref = load_file(os.path.join(FIXTURES, BASE_NAME, "reference.safetensors"))
    ids, labels = base_ref["input_ids"], base_ref["labels"]
    assert ids.shape[0] >= 2
    n_targets = int((labels[:, 1:] != -100).sum())

    init = make_init(v)
    pm = build(v, init)
    # peft also writes a README.md model card, which needs Jinja2 and holds nothing ssmtune reads:
    # skip it, so adapter_init/ holds exactly adapter_config.json + adapter_model.safetensors.
    pm.create_or_update_model_card = lambda *_a, **_k: None
    pm.save_pretrained(os.path.join(out_dir, "adapter_init"))
    cfg = normalise_adapter_config(os.path.join(out_dir, "adapter_init", "adapter_config.json"))
    saved = load_file(os.path.join(out_dir, "adapter_init", "adapter_model.safetensors"))
    names = [n for n, _ in lora_params(pm)]
    assert list(get_peft_model_state_dict(pm).keys()) == names
    assert set(saved) == set(names) and all(torch.equal(saved[n], init[n]) for n in names)
    mod = pm.base_model.model.backbone.layers[0].mixer.in_proj
    assert mod.scaling["default"] == scaling_of(v), (mod.scaling, scaling_of(v))
    del pm

    t = {"input_ids": ids.clone(), "labels": labels.clone()}
    t.update(run_f32(v, init, ids, labels))
    t.update(run_f64(v, init, ids, labels))
    t.update(train_f64(v, init, ids, labels, clip_sched=False))
    t.update(train_f64(v, init, ids, labels, clip_sched=True))

    def rel(a, b):
        a, b = a.double(), b.double()
        return ((a - b).abs().max() / b.abs().max()).item()

    e_logits = rel(t["logits"], t["logits.f64"])
    e_loss = rel(t["loss"], t["loss.f64"])
    e_grad = max(rel(t["grad." + n], t["grad." + n + ".f64"]) for n in names)
    e_merge = rel(t["merged_logits"], t["logits"])
    min_grad = min(t["grad." + n + ".f64"].abs().min().item() for n in names)
    log += [
        f"scaling {scaling_of(v)}; {len(names)} LoRA tensors, "
        f"{sum(init[n].numel() for n in names)} parameters",
        f"loss f32 {t['loss'].item():.7f}  f64 {t['loss.f64'].item():.15f}",
        f"f32 vs f64 rel err: logits {e_logits:.2e}, loss {e_loss:.2e}, worst grad {e_grad:.2e}",
        f"merged vs unmerged logits rel err {e_merge:.2e}",
        f"min |grad element| (f64) {min_grad:.3e}",
        "losses.f64 " + " ".join(f"{x:.6f}" for x in t["losses.f64"].tolist())
        + f" -> {t['loss_after_k.f64'].item():.6f}",
        "losses_clip_sched.f64 " + " ".join(f"{x:.6f}" for x in t["losses_clip_sched.f64"].tolist())
        + f" -> {t['loss_after_k_clip_sched.f64'].item():.6f}",
        "lrs " + " ".join(f"{x:.6g}" for x in t["lrs_clip_sched.f64"].tolist())
        + "; pre-clip grad norms " + " ".join(f"{x:.4f}" for x in t["grad_norms_clip_sched.f64"].tolist()),
    ]
    assert e_logits < 1e-5 and e_loss < 1e-6 and e_grad < 1e-4, (e_logits, e_loss, e_grad)
    assert e_merge < 1e-5, e_merge

    fx = fixture_json(v, names, n_targets)
    md = {
        "generator": GENERATOR,
        "fixture": v["name"],
        "base_model": "../" + BASE_NAME,
        "versions": json.dumps(fx["versions"], sort_keys=True),
        "lora": json.dumps({k: fx["lora"][k] for k in fx["lora"] if k != "tensors"}, sort_keys=True),
        "train": json.dumps(fx["train"], sort_keys=True),
        "doc": "data_scripts/PEFT_FIXTURE.md",
    }
    return log + write_fixture(out_dir, t, fx, md, cfg)


def write_fixture(out_dir: str, t: dict, fx: dict, md: dict, acfg: dict) -> list:
    """reference.safetensors (reproducible header) and fixture.json; checks the read-back.
    Returns log lines (the adapter config and every file with its size)."""
    t = {k: v.contiguous() for k, v in t.items()}
    save_deterministic(t, os.path.join(out_dir, "reference.safetensors"), metadata=md)
    with open(os.path.join(out_dir, "fixture.json"), "w") as f:
        f.write(json.dumps(fx, indent=2, sort_keys=True) + "\n")
    back = load_file(os.path.join(out_dir, "reference.safetensors"))
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)
    log = ["adapter_config.json: " + json.dumps(acfg, sort_keys=True)]
    for root, _, files in sorted(os.walk(out_dir)):
        for f in sorted(files):
            p = os.path.join(root, f)
            log.append(f"  {os.path.relpath(p, out_dir)} ({os.path.getsize(p)} B)")
    return log


def main(argv=None) -> int:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    print(" ".join(f"{k} {v}" for k, v in versions().items()))
    for v in VARIANTS:
        for line in build_one(v):
            print(line)
    import check_peft_fixture

    return check_peft_fixture.main([])


if __name__ == "__main__":
    sys.exit(main())
