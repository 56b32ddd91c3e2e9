"""Two small MoE experiments on ``corpus_en``: partition-level load balancing, and fine- versus coarse-grained experts.

``balance_experiment`` (decoding spec §4.5 (c), Yi-Lightning report §2.2): two tiny MoE LMs trained with the same
seed, data and steps, one with the expert-level balance loss only (alpha_ST) and one that adds the device- and
partition-level losses (alpha_EP, alpha_PEP). Both are measured on the same validation windows: the max/mean
token load over the partitions (each forward pass, averaged over layers and batches) and the validation loss.
Pass: partition max/mean falls by >= 20 % with <= 1 % relative change of the validation loss.

``granularity_experiment`` (DeepSeekMoE §3.1): coarse (m = 1) against fine (m = 4) experts at equal active
parameters (the router, E*m wide, is the only difference); the validation losses are reported, not gated.

The sizes were fixed before the first run. The balanced arm uses the report's alphas (alpha_ST 1e-6, alpha_EP 1e-4,
alpha_PEP 1e-3, the library defaults); ``balanced_alphas`` replaces them. A first design scaled alpha_EP and
alpha_PEP by 10 (1e-3, 1e-2) on the assumption that the report's values are too weak to act within a few hundred
steps; it cut partition max/mean by 60 % but raised the validation loss by 18.6 % (full size, seed 0), and the
report's own values, run next, already cut the load by about half: the assumption was wrong, so the experiment
uses the report's values. The granularity arms use a Switch-style expert-level alpha of
1e-2 and no groups. Models train through ``train_lm``
into a run folder and are measured after ``lmlab.load`` of that folder.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.core.data import TokenWindows
from lmlab.core.runtime import Timer
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.train import TrainConfig
from lmlab.core.transformer import TransformerConfig
from lmlab.loader import load
from lmlab.models.moe import layer_params, partition_load
from lmlab.recipes.text import DataConfig, TextJob, text_splits, train_lm

# model and data sizes; "smoke" checks the plumbing (< 25 s for both experiments on one thread)
SIZES: dict[str, dict[str, Any]] = {
    "smoke": dict(dim=32, n_layers=2, n_heads=2, ffn_dim=64, seq_len=32, batch_size=4, steps=12, val_batches=2),
    "full": dict(dim=96, n_layers=3, n_heads=4, ffn_dim=256, seq_len=128, batch_size=16, steps=300,
                 val_batches=8),
}
MAX_BYTES = 3_000_000  # corpus_en sample (byte tokens): ~2.9 M training, ~28 K validation tokens
# expert layout of the balance experiment: 16 experts top-2 on 4 devices x 2 partitions (8 partitions of 2)
BALANCE_MOE = dict(experts=16, top_k=2, granularity=1, devices=4, partitions=2)
ARMS = {"st_only": dict(alpha_expert=1e-6, alpha_device=0.0, alpha_partition=0.0),
        "st_ep_pep": dict(alpha_expert=1e-6, alpha_device=1e-4, alpha_partition=1e-3)}  # report §2.2
GRAIN_MOE = dict(experts=8, top_k=1, alpha_expert=1e-2, alpha_device=0.0, alpha_partition=0.0)


def size_of(size: str) -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    return SIZES[size]


def moe_job(run_dir: Path, mlp: dict[str, Any], size: str, seed: int) -> TextJob:
    """The text job of one MoE arm: byte tokens of the corpus_en sample, same seed and data for every arm."""
    s = size_of(size)
    model = TransformerConfig(dim=s["dim"], n_layers=s["n_layers"], n_heads=s["n_heads"], ffn_dim=s["ffn_dim"],
                              max_seq_len=s["seq_len"], mlp="moe", slot_args={"mlp": dict(mlp)})
    train = TrainConfig(steps=s["steps"], lr=3e-3, warmup_steps=max(1, s["steps"] // 10), log_every=10,
                        eval_batches=s["val_batches"], progress=False, ckpt_minutes=0, seed=seed,
                        run_dir=str(run_dir))
    data = DataConfig(source="corpus_en", tokenizer="byte", max_bytes=MAX_BYTES, seq_len=s["seq_len"],
                      batch_size=s["batch_size"])
    return TextJob(seed=seed, threads=1, model=model, train=train, data=data)


def val_windows(size: str) -> TokenWindows:
    """The validation windows every arm is measured on (the recipe's byte tokenizer and held-out split)."""
    s = size_of(size)
    _, val_text = text_splits(DataConfig(source="corpus_en", max_bytes=MAX_BYTES))
    ids = np.asarray(ByteTokenizer().encode(val_text), dtype=np.int64)
    return TokenWindows(ids, s["batch_size"], s["seq_len"])


@torch.no_grad()
def measure(run_dir: Path, windows: TokenWindows, batches: int) -> dict[str, float]:
    """Validation loss (nats/token) and per-forward load imbalance of the model saved in ``run_dir/model``."""
    model, _, _ = load(run_dir / "model")
    losses, loads = [], []
    for batch in windows.sequential(batches):
        logits = model(batch["ids"])  # (B, T, V)
        losses.append(float(F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())))
        loads.append(partition_load(model))
    keys = ("partition_max_over_mean", "device_max_over_mean", "expert_max_over_mean")
    return {"val_loss": sum(losses) / len(losses), **{k: sum(x[k] for x in loads) / len(loads) for k in keys}}


def train_arms(arms: dict[str, dict[str, Any]], size: str, seed: int, work_dir: str | Path | None
               ) -> tuple[dict[str, dict[str, Any]], float]:
    """Train every arm (a MoE options table) into ``work_dir/<arm>`` and measure it; (metrics per arm, seconds)."""
    windows = val_windows(size)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, Timer() as t:
        root = Path(work_dir) if work_dir else Path(tmp)
        for name, mlp in arms.items():
            job = moe_job(root / name, mlp, size, seed)
            res = train_lm(copy.deepcopy(job))
            out[name] = {**measure(root / name, windows, size_of(size)["val_batches"]),
                         "train_val_loss": res["val_loss"], "train_seconds": res["seconds"],
                         "moe_active_params_per_layer": layer_params(job.model)["active"],
                         "moe_total_params_per_layer": layer_params(job.model)["total"], "mlp": mlp}
    return out, t.seconds


def balance_experiment(size: str = "full", seed: int = 0, work_dir: str | Path | None = None,
                       balanced_alphas: dict[str, float] | None = None) -> dict[str, Any]:
    """alpha_ST only vs alpha_ST + alpha_EP + alpha_PEP: partition load imbalance and validation loss.
    ``balanced_alphas``: the balanced arm's alpha_expert / alpha_device / alpha_partition (default ARMS)."""
    alphas = {**ARMS, "st_ep_pep": {**ARMS["st_ep_pep"], **(balanced_alphas or {})}}
    arms = {name: {**BALANCE_MOE, **a} for name, a in alphas.items()}
    res, seconds = train_arms(arms, size, seed, work_dir)
    a, b = res["st_only"], res["st_ep_pep"]
    drop = 1 - b["partition_max_over_mean"] / a["partition_max_over_mean"]
    excess = a["partition_max_over_mean"] - 1
    loss_change = (b["val_loss"] - a["val_loss"]) / a["val_loss"]
    return {"size": size, "seed": seed, "arms": res, "seconds": seconds,
            "partition_max_over_mean_st": a["partition_max_over_mean"],
            "partition_max_over_mean_pep": b["partition_max_over_mean"],
            "partition_load_reduction": drop,  # relative drop of max/mean
            "partition_excess_reduction": (1 - (b["partition_max_over_mean"] - 1) / excess) if excess > 0 else None,
            "val_loss_rel_change": loss_change,
            "passed": bool(drop >= 0.20 and abs(loss_change) <= 0.01)}


def granularity_experiment(size: str = "full", seed: int = 0, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Coarse (m = 1) vs fine (m = 4) experts at equal active parameters: validation losses (not gated)."""
    arms = {"coarse_m1": {**GRAIN_MOE, "granularity": 1}, "fine_m4": {**GRAIN_MOE, "granularity": 4}}
    res, seconds = train_arms(arms, size, seed, work_dir)
    c, f = res["coarse_m1"], res["fine_m4"]
    return {"size": size, "seed": seed, "arms": res, "seconds": seconds, "val_loss_coarse": c["val_loss"],
            "val_loss_fine": f["val_loss"], "val_loss_rel_change_fine": (f["val_loss"] - c["val_loss"]) / c["val_loss"]}
