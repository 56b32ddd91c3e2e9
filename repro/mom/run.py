"""MoM vs a vanilla Transformer at equal parameters and steps on corpus_en (bytes), then module pruning."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import lmlab
from lmlab.core.data import TokenWindows
from lmlab.core.train import TrainConfig
from lmlab.core.transformer import TransformerConfig
from lmlab.models.mom import MoMConfig, flops_per_token, prune, routing_mass
from lmlab.recipes.text import DataConfig, TextJob, text_splits, train_lm


def job(cfg: dict, arch: str, seed: int, run_dir: str) -> TextJob:
    layers = cfg["vanilla_layers"] if arch == "transformer" else 2
    return TextJob(
        objective="causal_lm", seed=seed, threads=cfg["threads"], arch=arch,
        model=TransformerConfig(dim=cfg["dim"], n_layers=layers, n_heads=cfg["n_heads"], max_seq_len=cfg["seq_len"]),
        mom=MoMConfig(bottom_layers=1, chunks=1, n_attn=cfg["n_modules"], n_ffn=cfg["n_modules"],
                      rounds=cfg["rounds"], top_layers=1, router="gru", router_dim=cfg["router_dim"],
                      tau=cfg["tau"], top_k=1, skip=True),
        train=TrainConfig(steps=cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"], seed=seed,
                          eval_batches=cfg["eval_batches"], log_every=50, ckpt_minutes=0, run_dir=run_dir,
                          progress=False),
        data=DataConfig(source="corpus_en", tokenizer="byte", max_bytes=cfg["max_bytes"], seq_len=cfg["seq_len"],
                        batch_size=cfg["batch_size"]),
    )


@torch.no_grad()
def val_loss(model, windows: TokenWindows, n: int) -> float:
    """Mean next-token cross-entropy (nats) over the first ``n`` validation windows."""
    losses = [F.cross_entropy(model(b["ids"]).flatten(0, 1), b["targets"].flatten()).item()
              for b in windows.sequential(n)]
    return float(np.mean(losses))


def run(cfg: dict, smoke: bool) -> dict:
    d = job(cfg, "mom", 0, "").data
    train_text, val_text = text_splits(d)
    tr = TokenWindows(np.frombuffer(train_text.encode(), dtype=np.uint8).astype(np.int64), d.batch_size, d.seq_len)
    va = TokenWindows(np.frombuffer(val_text.encode(), dtype=np.uint8).astype(np.int64), d.batch_size, d.seq_len)
    probe = [tr.get_batch(10_000 + i)["ids"] for i in range(cfg["prune_batches"])]  # routing mass on train text
    out: dict = {"seeds": cfg["seeds"]}
    rows = []
    for seed in range(cfg["seeds"]):
        row = {}
        with tempfile.TemporaryDirectory() as tmp:
            for arch in ("transformer", "mom"):
                res = train_lm(job(cfg, arch, seed, str(Path(tmp) / arch)))
                row[f"{arch}_val_loss"], row[f"{arch}_params"] = res["val_loss"], res["params"]
                row[f"{arch}_seconds"] = res["seconds"]
            for kind in ("attn", "ffn"):
                model, _, _ = lmlab.load(Path(tmp) / "mom")
                base = val_loss(model, va, cfg["eval_batches"])
                mass = routing_mass(model, probe)[0][kind]  # (M,) before pruning
                removed = prune(model, kind, 0.5, probe)[0]
                row[f"prune_{kind}_mass_removed"] = float(mass[removed].sum() / mass.sum())
                row[f"{kind}_modules_used"] = int((mass / mass.sum() > 0.05).sum())  # >5% of the routing mass
                row[f"prune_{kind}_rel"] = val_loss(model, va, cfg["eval_batches"]) / base - 1
        rows.append(row)
    for k in rows[0]:
        out[f"{k}_per_seed"] = [r[k] for r in rows]
        out[f"{k}_mean"] = float(np.mean([r[k] for r in rows]))
    out["mom_minus_vanilla_val_loss"] = out["mom_val_loss_mean"] - out["transformer_val_loss_mean"]
    out["params_ratio"] = out["mom_params_mean"] / out["transformer_params_mean"]
    out["prune_attn_max_rel"] = max(r["prune_attn_rel"] for r in rows)
    out["seeds_ffn_hurts_more"] = sum(r["prune_ffn_rel"] > r["prune_attn_rel"] for r in rows)
    mj = job(cfg, "mom", 0, "")
    mj.model.vocab_size = 256
    out["mom_flops_per_token"] = flops_per_token(mj.model, mj.mom, cfg["seq_len"])["total"]
    vj = job(cfg, "transformer", 0, "")
    vanilla = MoMConfig(bottom_layers=cfg["vanilla_layers"] - 1, chunks=1, rounds=1, n_attn=1, n_ffn=1,
                        top_layers=0, router="fixed", skip=False)  # the vanilla stack, counted the same way
    vj.model.vocab_size = 256
    out["vanilla_flops_per_token"] = flops_per_token(vj.model, vanilla, cfg["seq_len"])["total"]
    return out
