"""Two-phase MoM (vanilla for half the steps, pools initialised from it, MoM for the other half) vs a vanilla
Transformer at equal parameters and total optimizer steps on corpus_en (bytes), then module pruning."""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import lmlab
from lmlab.core.config import to_dict
from lmlab.core.data import TokenWindows
from lmlab.core.runtime import seed_everything
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import TransformerConfig
from lmlab.models.mom import MoM, MoMConfig, flops_per_token, init_from_vanilla, prune, routing_mass
from lmlab.objectives import REGISTRY as OBJECTIVES
from lmlab.recipes.text import DataConfig, TextJob, build_model, text_splits, train_lm


def job(cfg: dict, arch: str, seed: int, run_dir: str, steps: int | None = None) -> TextJob:
    """The arm's TextJob; ``steps`` overrides the config's (a phase of the two-phase arm)."""
    layers = cfg["vanilla_layers"] if arch == "transformer" else 2
    return TextJob(
        objective="causal_lm", seed=seed, threads=cfg["threads"], arch=arch,
        model=TransformerConfig(dim=cfg["dim"], n_layers=layers, n_heads=cfg["n_heads"], max_seq_len=cfg["seq_len"]),
        mom=MoMConfig(bottom_layers=1, chunks=1, n_attn=cfg["n_modules"], n_ffn=cfg["n_modules"],
                      rounds=cfg["rounds"], top_layers=1, router="gru", router_dim=cfg["router_dim"],
                      tau=cfg["tau"], top_k=1, skip=True),
        train=TrainConfig(steps=steps or cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"], seed=seed,
                          eval_batches=cfg["eval_batches"], log_every=50, ckpt_minutes=0, run_dir=run_dir,
                          progress=False),
        data=DataConfig(source="corpus_en", tokenizer="byte", max_bytes=cfg["max_bytes"], seq_len=cfg["seq_len"],
                        batch_size=cfg["batch_size"]),
    )


class LaterBatches:
    """A batch source shifted by ``offset`` steps: phase 2 sees the batches the vanilla arm sees in its second half."""

    def __init__(self, data: TokenWindows, offset: int):
        self.data, self.offset = data, offset

    def get_batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        return self.data.get_batch(step + self.offset, micro, rank, world)


def two_phase(cfg: dict, seed: int, tmp: Path, train_ids: np.ndarray, va: TokenWindows) -> tuple[MoM, dict]:
    """Phase 1: a vanilla Transformer trained for steps // 2 (its own warmup + cosine, batches 0 .. steps//2 - 1);
    phase 2: a MoM whose pools are initialised from it (``init_from_vanilla``), trained for the remaining steps
    (fresh warmup + cosine, the same lr, batches steps//2 ..). Returns (the MoM, its row entries)."""
    first = cfg["steps"] // 2
    p1 = train_lm(job(cfg, "transformer", seed, str(tmp / "phase1"), steps=first))
    vanilla, _, _ = lmlab.load(tmp / "phase1" / "model")
    mj = job(cfg, "mom", seed, "", steps=cfg["steps"] - first)
    mj.model.vocab_size = vanilla.cfg.vocab_size
    seed_everything(seed)  # router initialisation as train_lm would draw it
    model = init_from_vanilla(build_model(mj), vanilla)
    init_loss = val_loss(model.eval(), va, cfg["eval_batches"])  # before phase 2: untrained routers, 6 rounds
    data = LaterBatches(TokenWindows(train_ids, cfg["batch_size"], cfg["seq_len"], seed=seed), first)
    trainer = Trainer(model, OBJECTIVES.get("causal_lm")(), data, replace(mj.train, run_dir=""),
                      eval_data=lambda: va.sequential(), model_config=to_dict(mj.model))
    t0 = time.monotonic()
    trainer.fit()
    final = trainer.history[-1]
    return model.eval(), {"phase1_val_loss": p1["val_loss"], "mom_init_val_loss": init_loss,
                          "mom_val_loss": final["eval_loss"], "mom_params": model.num_params(),
                          "mom_seconds": p1["seconds"] + time.monotonic() - t0}


@torch.no_grad()
def val_loss(model, windows: TokenWindows, n: int) -> float:
    """Mean next-token cross-entropy (nats) over the first ``n`` validation windows."""
    losses = [F.cross_entropy(model(b["ids"]).flatten(0, 1), b["targets"].flatten()).item()
              for b in windows.sequential(n)]
    return float(np.mean(losses))


def pruning(cfg: dict, mom: MoM, va: TokenWindows, probe: list[torch.Tensor]) -> dict:
    """50% of the attention (FFN) modules removed from a copy of ``mom`` by least routing mass; relative val loss."""
    row = {}
    for kind in ("attn", "ffn"):
        model = copy.deepcopy(mom)
        base = val_loss(model, va, cfg["eval_batches"])
        mass = routing_mass(model, probe)[0][kind]  # (M,) before pruning
        removed = prune(model, kind, 0.5, probe)[0]
        row[f"prune_{kind}_mass_removed"] = float(mass[removed].sum() / mass.sum())
        row[f"{kind}_modules_used"] = int((mass / mass.sum() > 0.05).sum())  # >5% of the routing mass
        row[f"prune_{kind}_rel"] = val_loss(model, va, cfg["eval_batches"]) / base - 1
    return row


def flops(cfg: dict) -> dict:
    """Analytic forward FLOPs per token of both arms at the training context."""
    mj = job(cfg, "mom", 0, "")
    mj.model.vocab_size = 256
    vj = job(cfg, "transformer", 0, "")
    vanilla = MoMConfig(bottom_layers=cfg["vanilla_layers"] - 1, chunks=1, rounds=1, n_attn=1, n_ffn=1,
                        top_layers=0, router="fixed", skip=False)  # the vanilla stack, counted the same way
    vj.model.vocab_size = 256
    return {"mom_flops_per_token": flops_per_token(mj.model, mj.mom, cfg["seq_len"])["total"],
            "vanilla_flops_per_token": flops_per_token(vj.model, vanilla, cfg["seq_len"])["total"]}


def run(cfg: dict, smoke: bool) -> dict:
    d = job(cfg, "mom", 0, "").data
    train_text, val_text = text_splits(d)
    train_ids = np.frombuffer(train_text.encode(), dtype=np.uint8).astype(np.int64)
    tr = TokenWindows(train_ids, d.batch_size, d.seq_len)
    va = TokenWindows(np.frombuffer(val_text.encode(), dtype=np.uint8).astype(np.int64), d.batch_size, d.seq_len)
    probe = [tr.get_batch(10_000 + i)["ids"] for i in range(cfg["prune_batches"])]  # routing mass on train text
    out: dict = {"seeds": cfg["seeds"], "phase1_steps": cfg["steps"] // 2}
    rows = []
    for seed in range(cfg["seeds"]):
        with tempfile.TemporaryDirectory() as tmp:
            res = train_lm(job(cfg, "transformer", seed, str(Path(tmp) / "transformer")))
            row = {"transformer_val_loss": res["val_loss"], "transformer_params": res["params"],
                   "transformer_seconds": res["seconds"]}
            mom, entries = two_phase(cfg, seed, Path(tmp), train_ids, va)
        rows.append(row | entries | pruning(cfg, mom, va, probe))
    for k in rows[0]:
        out[f"{k}_per_seed"] = [r[k] for r in rows]
        out[f"{k}_mean"] = float(np.mean([r[k] for r in rows]))
    out["mom_minus_vanilla_val_loss"] = out["mom_val_loss_mean"] - out["transformer_val_loss_mean"]
    out["params_ratio"] = out["mom_params_mean"] / out["transformer_params_mean"]
    out["prune_attn_max_rel"] = max(r["prune_attn_rel"] for r in rows)
    out["seeds_ffn_hurts_more"] = sum(r["prune_ffn_rel"] > r["prune_attn_rel"] for r in rows)
    return out | flops(cfg)
