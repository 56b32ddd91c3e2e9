"""DAPE v2 (Zheng et al., arXiv:2410.04798; training.md §5.6 (a)): length extrapolation of a byte-level LM.

Five arms, each trained at T = ``train_len`` on corpus_en bytes with the same data, steps and seed, then scored by
``recipes.extrapolation.length_extrapolation`` at 1x, 2x, 4x and 8x the training length on the held-out bytes:
NoPE (plain attention, no position signal), ALiBi, Kerple (log), DAPE v1-Kerple (1x1 kernel) and DAPE v2-Kerple
(1x3 kernel). All arms use ``pos = "nope"``: the bias (and DAPE's convolution) is the only position information.
Seeds x arms run ``workers`` at a time in forked processes, one torch thread each. Metrics: ``ppl_<arm>_<f>x`` (mean
over seeds) and ``ppl_<arm>_<f>x_s<seed>``; the gate quantities are computed from the seed means.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
import torch

import lmlab
from lmlab.core.train import TrainConfig
from lmlab.core.transformer import TransformerConfig
from lmlab.harness import map_jobs
from lmlab.recipes.extrapolation import length_extrapolation
from lmlab.recipes.text import DataConfig, TextJob, text_splits, train_lm

ARMS = {  # arm -> (attn slot, slot_args["attn"])
    "nope": ("sdpa", {}),
    "alibi": ("alibi", {}),
    "kerple": ("kerple", {}),
    "dape1": ("dape", {"bias": "kerple", "kernel": 1}),
    "dape2": ("dape", {"bias": "kerple", "kernel": 3}),
}
FACTORS = (1, 2, 4, 8)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def job(cfg: dict, arm: str, seed: int, run_dir: str) -> TextJob:
    attn, opts = ARMS[arm]
    return TextJob(
        objective="causal_lm", seed=seed, threads=1,
        model=TransformerConfig(dim=cfg["dim"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"], pos="nope",
                                attn=attn, slot_args={"attn": opts} if opts else {},
                                max_seq_len=cfg["train_len"] * max(FACTORS)),
        train=TrainConfig(steps=cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"], seed=seed,
                          eval_batches=cfg["eval_batches"], log_every=100, ckpt_minutes=0, run_dir=run_dir,
                          progress=False),
        data=DataConfig(source="corpus_en", tokenizer="byte", max_bytes=cfg["max_bytes"], seq_len=cfg["train_len"],
                        batch_size=cfg["batch_size"]))


def future_leak(model: Any, T: int) -> float:
    """Largest change of the logits at positions < T-1 when only the last input token changes (0 = causal)."""
    ids = torch.randint(0, model.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[0, -1] = (other[0, -1] + 1) % model.vocab_size
    with torch.no_grad():
        return float((model(ids)[0, :-1] - model(other)[0, :-1]).abs().max())


def arm_job(cfg: dict, arm: str, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        res = train_lm(job(cfg, arm, seed, tmp))
        model, _, _ = lmlab.load(str(Path(tmp) / "model"))
    _, val_text = text_splits(job(cfg, arm, seed, "").data)
    val = np.frombuffer(val_text.encode(), dtype=np.uint8).astype(np.int64)
    ext = length_extrapolation(model, val, cfg["train_len"], FACTORS, batch_size=cfg["eval_batch"])
    out = {"arm": arm, "seed": seed, "params": res["params"], "tokens_per_s": res["tokens_per_s"],
           "train_seconds": res["seconds"], "future_leak": future_leak(model, 2 * cfg["train_len"])}
    out |= {f"ppl_{f}x": ext[f]["perplexity"] for f in FACTORS}
    out["eval_tokens_8x"] = ext[max(FACTORS)]["tokens"]
    log(f"{arm} seed {seed}: " + ", ".join(f"{f}x {ext[f]['perplexity']:.3f}" for f in FACTORS)
        + f" ({res['seconds']:.0f} s)")
    return out


def run(cfg: dict, smoke: bool) -> dict:
    jobs = [(cfg, arm, seed) for seed in range(cfg["seeds"]) for arm in ARMS]
    rows = map_jobs(arm_job, jobs, cfg["workers"])
    out: dict[str, Any] = {"seeds": cfg["seeds"], "train_len": cfg["train_len"]}
    for r in rows:
        out |= {f"ppl_{r['arm']}_{f}x_s{r['seed']}": r[f"ppl_{f}x"] for f in FACTORS}
        out[f"tokens_per_s_{r['arm']}_s{r['seed']}"] = r["tokens_per_s"]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        out[f"params_{arm}"] = mine[0]["params"]
        out[f"tokens_per_s_{arm}"] = mean(r["tokens_per_s"] for r in mine)
        out |= {f"ppl_{arm}_{f}x": mean(r[f"ppl_{f}x"] for r in mine) for f in FACTORS}
    p = [out[f"params_{a}"] for a in ARMS]
    out["param_spread"] = max(p) / min(p) - 1
    out["max_future_leak"] = max(r["future_leak"] for r in rows)
    at1 = [out[f"ppl_{a}_1x"] for a in ARMS]
    out["ppl_spread_1x"] = max(at1) / min(at1) - 1
    long = [f for f in FACTORS if f >= 4]
    out["dape2_gain_over_kerple_min_4x_8x"] = min(1 - out[f"ppl_dape2_{f}x"] / out[f"ppl_kerple_{f}x"] for f in long)
    out["dape2_over_dape1_max_4x_8x"] = max(out[f"ppl_dape2_{f}x"] / out[f"ppl_dape1_{f}x"] for f in long)
    out["dape2_slowdown_vs_kerple"] = out["tokens_per_s_kerple"] / out["tokens_per_s_dape2"]
    return out
