"""ACDiT on 8x8 digits: exactness (SCAM rule, cache == recomputation, B = L is DiT), quality at equal
optimizer steps (DiT vs ACDiT B=4 vs a noisy-context ablation; Frechet distance and class consistency in the
features of a fixed-seed digits classifier), and the sampling cost against the paper's analytic model."""

from __future__ import annotations

import math
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from lmlab.core import masks
from lmlab.core.train import TrainConfig
from lmlab.models.acdit import (
    ACDiT,
    Config,
    analytic_sampling_flops,
    counted_sampling_flops,
    sample,
    sample_uncached,
)
from lmlab.objectives.block_diffusion import Config as LossConfig
from lmlab.recipes.acdit import TrainJob, evaluate, load_data, train
from lmlab.tasks import digits

HERE = Path(__file__).resolve().parent


def scam_mismatches() -> int:
    """Entries where core.masks.skip_causal differs from the paper's rule, over N in 1..8, B in {1, 4, 16}."""
    bad = 0
    for B in (1, 4, 16):
        for N in range(1, 9):
            L = N * B
            blk = torch.arange(2 * L) % L // B  # block index of every token
            clean = torch.arange(2 * L) < L
            q, k = blk[:, None], blk[None, :]
            rule = torch.where(clean[:, None], clean[None, :] & (k <= q),
                               (clean[None, :] & (k < q)) | (~clean[None, :] & (k == q)))
            bad += int((masks.skip_causal(N, B) != rule).sum())
    return bad


def job_for(cfg: dict, block: int, context: str) -> TrainJob:
    return TrainJob(
        seed=cfg["seed"], threads=cfg["threads"], batch_size=cfg["batch_size"],
        model=Config(block_size=block, dim=cfg["dim"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"]),
        objective=LossConfig(context=context),
        train=TrainConfig(steps=cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"],
                          schedule="wsd", decay_frac=0.15, weight_decay=0.05, min_lr_ratio=0.01,
                          log_every=100, progress=False),
        eval_samples=cfg["eval_samples"], sample_steps=cfg["sample_steps"], guidance=cfg["guidance"],
        solver=cfg["solver"], classifier_steps=cfg["classifier_steps"])


def quality(cfg: dict, smoke: bool) -> tuple[dict, dict]:
    out, models = {}, {}
    data = load_data(job_for(cfg, 16, "clean"))
    clf = digits.train_classifier(*data["train"], data["num_classes"], seed=0, steps=cfg["classifier_steps"])
    for name, block, context in (("dit", 16, "clean"), ("acdit", cfg["acdit_block"], "clean"),
                                 ("acdit_noisy_ctx", cfg["acdit_block"], "noisy")):
        job = job_for(cfg, block, context)
        model, tm = train(job, data)
        scores, samples = evaluate(model, job, data, classifier=clf, seed=1)
        models[name] = model
        for k, v in (tm | scores).items():
            out[k if k in ("fd_real_heldout", "classifier_accuracy") else f"{k}_{name}"] = v
        if not smoke:  # 8 rows of samples, one column per class
            per = len(samples) // 10
            pick = [c * per + i for i in range(8) for c in range(10)]
            digits.save_grid(HERE / "results" / f"samples_{name}.png", samples[pick], nrow=10)
    out["fd_ratio_acdit_over_dit"] = out["fd_acdit"] / out["fd_dit"]
    out["fd_ratio_clean_over_noisy_context"] = out["fd_acdit"] / out["fd_acdit_noisy_ctx"]
    return out, models


def exactness(models: dict, cfg: dict) -> dict:
    acdit, dit = models["acdit"], models["dit"]
    g = torch.Generator().manual_seed(7)
    labels = torch.arange(10).repeat(2)
    noise = torch.randn(len(labels), acdit.cfg.seq_len, acdit.cfg.token_dim, generator=g)
    kw = dict(steps=cfg["sample_steps"], guidance=cfg["guidance"], solver=cfg["solver"], noise=noise)
    cache_diff = (sample(acdit, labels, **kw) - sample_uncached(acdit, labels, **kw)).abs().max()
    x_t, x0 = torch.randn(32, 16, 4, generator=g), torch.randn(32, 16, 4, generator=g)
    t, y = torch.randint(0, 1000, (32, 1), generator=g), torch.randint(0, 11, (32,), generator=g)
    with torch.no_grad():
        dit_diff = (dit(x_t, t, y, context=x0) - dit(x_t, t, y)).abs().max()
    return {"scam_mismatches": scam_mismatches(), "cache_max_abs_diff": float(cache_diff),
            "dit_reduction_max_abs_diff": float(dit_diff)}


def cpu_seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def cost(cfg: dict) -> dict:
    """Sampling cost of one image (guidance off), ACDiT B = L/4 vs DiT B = L, against the analytic model:
    executed matmul FLOPs counted by torch (every layer, embeddings and adaLN included), and CPU seconds of
    real runs (random weights; A and B alternately)."""
    out, flop_errors, time_errors, speedups, measured = {}, [], [], [], []
    steps = cfg["cost_steps"]
    for L in cfg["cost_lengths"]:
        shape = dict(image_size=math.isqrt(L), patch_size=1, dim=cfg["cost_dim"], n_layers=cfg["cost_layers"],
                     n_heads=cfg["cost_heads"])
        ca, cb = Config(block_size=L // 4, **shape), Config(block_size=L, **shape)
        analytic = {k: analytic_sampling_flops(c, steps) for k, c in (("acdit", ca), ("dit", cb))}
        counted = {k: counted_sampling_flops(c, steps) for k, c in (("acdit", ca), ("dit", cb))}
        flop_errors += [abs(counted[k] / analytic[k] - 1) for k in analytic]
        torch.manual_seed(0)
        a, b = ACDiT(ca).eval(), ACDiT(cb).eval()
        y, noise = torch.tensor([1]), torch.randn(1, L, 1)
        run_a = partial(sample, a, y, steps=steps, guidance=1.0, noise=noise)
        run_b = partial(sample, b, y, steps=steps, guidance=1.0, noise=noise)
        run_a(), run_b()  # warm-up
        ta, tb = [], []
        for _ in range(cfg["cost_repeats"]):
            ta.append(cpu_seconds(run_a))
            tb.append(cpu_seconds(run_b))
        speedup = analytic["dit"] / analytic["acdit"]
        timed = statistics.median(tb) / statistics.median(ta)
        time_errors.append(abs(timed / speedup - 1))
        speedups.append(speedup)
        measured.append(timed)
        out |= {f"analytic_speedup_L{L}": speedup, f"measured_speedup_L{L}": timed,
                f"counted_flops_speedup_L{L}": counted["dit"] / counted["acdit"],
                f"cpu_seconds_acdit_L{L}": statistics.median(ta),
                f"cpu_seconds_dit_L{L}": statistics.median(tb)}
    rising = all(x < y for x, y in zip(measured, measured[1:]))
    out |= {"cost_flops_max_rel_error": max(flop_errors), "cost_time_max_rel_error": max(time_errors),
            "analytic_speedup_max": max(speedups), "measured_speedup_max": max(measured),
            "measured_speedup_rises_with_L": float(rising)}
    return out


def run(cfg: dict, smoke: bool) -> dict:
    torch.set_num_threads(cfg["threads"])
    c0 = time.process_time()
    metrics, models = quality(cfg, smoke)
    metrics |= exactness(models, cfg)
    metrics |= cost(cfg)
    metrics["cpu_seconds_total"] = time.process_time() - c0
    return metrics
