"""MGDM vs MDM vs AR at identical model size, steps, batch and data, on planning and a harder task.

For each task in ``[gate1_task] + hard_tasks`` and each arm (objective registry name) a core Transformer is
trained with ``lmlab.recipes.tasks.train_on_task`` and scored by the task's exact verifier on held-out prompts (AR:
greedy; diffusion: ``masked_decode`` easy-first top-k, T = decode_steps). Metrics are
``<task>_<arm>_acc``, ``<task>_mgdm_minus_ar``, ``<task>_mgdm_minus_mdm``, the best gap over the hard tasks,
loss drops, decode validity (givens untouched, no <mask> left, well-formed answers) and CPU seconds.
With ``inpaint = true`` the diffusion arms use the inpainting layout on tasks that have a blank symbol (Sudoku:
the givens sit fixed in the target region, only the blanks are masked, learned and decoded); AR is unchanged.
With several ``seeds`` (each: other training data, test prompts, initialisation and batches) every arm is run once
per seed; the per-seed metrics get a ``_s<seed>`` suffix, the unsuffixed ones are means over seeds (gaps are taken
within a seed, then averaged; ``<task>_mgdm_minus_ar_min`` is the worst seed's gap). Arms are independent; with
``workers > 1`` they are trained in forked processes, one torch thread each.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from statistics import mean

import torch

from lmlab.core.train import TrainConfig
from lmlab.core.transformer import TransformerConfig
from lmlab.decoding.masked import Config as DecodeConfig
from lmlab.decoding.masked import masked_decode
from lmlab.harness import map_jobs
from lmlab.recipes.tasks import TaskDataConfig, accuracy, build_task, solve, train_on_task

SHORT = {"causal_lm": "ar", "mdm": "mdm", "mgdm": "mgdm"}


def decode_checks(run: dict, decode: DecodeConfig) -> dict:
    """Share of test rows whose decode keeps the givens, leaves no <mask> and gives a well-formed answer."""
    model, codec, test = run["model"], run["codec"], run["test"][:200]
    ids, maskable = codec.encode_prompts([e.prompt for e in test])
    answers, _ = solve(model, codec, [e.prompt for e in test], decode)
    formed = sum(len(a) == len(e.target) and set(a) <= set(codec.alphabet) for a, e in zip(answers, test))
    out = {"well_formed": formed / len(test)}
    if model.cfg.mask == "bidirectional":
        tokens = masked_decode(model.eval(), ids, maskable, codec.mask_id, decode).tokens
        out["givens_kept"] = float(torch.equal(tokens[~maskable], ids[~maskable]))
        out["no_mask_left"] = float(not (tokens == codec.mask_id).any())
    return out


def task_key(task: str) -> str:
    """Metric prefix of a task spec: ``sudoku6:blanks=22`` -> ``sudoku6_blanks22``."""
    return task.replace(":", "_").replace("=", "").replace(",", "_")


def run_arm(cfg: dict, task: str, arm: str, seed: int) -> dict:
    """Train one arm on one task with one seed and score it; metrics are prefixed ``<task key>_<arm>_``."""
    torch.set_num_threads(cfg["threads"])
    inpaint = cfg.get("inpaint", False) and getattr(build_task(task), "blank", None) is not None
    data = TaskDataConfig(n_train=cfg["n_train"], n_test=cfg["n_test"], batch_size=cfg["batch_size"],
                          seed=seed, decode_steps=cfg["decode_steps"], inpaint=inpaint)
    decode = DecodeConfig(steps=cfg["decode_steps"])
    key = task_key(task)
    name = f"{key}_{SHORT.get(arm, arm)}"
    model = TransformerConfig(dim=cfg["dim"], n_layers=cfg["layers"], n_heads=cfg["heads"])
    train = TrainConfig(steps=cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup"], progress=False,
                        eval_batches=4, seed=seed)
    c0 = time.process_time()
    run_ = train_on_task(arm, task, model, train, data, seed=seed)
    model_, task_, codec, test = run_["model"], run_["task"], run_["codec"], run_["test"]
    metrics = {f"{name}_acc": accuracy(model_, task_, codec, test, decode)}
    if model_.cfg.mask == "bidirectional":  # the official re-masking sampler, and the 1-step variant
        metrics[f"{name}_remask_acc"] = accuracy(model_, task_, codec, test, dataclasses.replace(decode, remask=True))
        metrics[f"{name}_1step_acc"] = accuracy(model_, task_, codec, test, dataclasses.replace(decode, steps=1))
    losses = [h["loss"] for h in run_["history"]]
    k = max(1, min(50, len(losses) // 5))
    metrics[f"{name}_loss_ratio"] = (sum(losses[-k:]) / k) / (sum(losses[:k]) / k)
    metrics.update({f"{name}_{m}": v for m, v in decode_checks(run_, decode).items()})
    metrics[f"{name}_cpu_s"] = time.process_time() - c0
    metrics["params"] = run_["params"]
    metrics[f"{key}_test_examples"] = len(test)
    print(f"{name} seed {seed}: accuracy {metrics[f'{name}_acc']:.3f} ({metrics[f'{name}_cpu_s']:.0f} CPU s)",
          file=sys.stderr, flush=True)
    return metrics


def run(cfg: dict, smoke: bool) -> dict:
    arms_of = {cfg["gate1_task"]: cfg["arms"]}  # task -> arms, in run order; the gate-1 task keeps its arms
    for t in cfg["hard_tasks"]:
        arms_of.setdefault(t, cfg["hard_arms"])
    seeds = cfg["seeds"]
    jobs = [(t, a, s) for s in seeds for t, arms in arms_of.items() for a in arms]
    # arms are independent: one process each (1 torch thread each)
    parts = map_jobs(run_arm, [(cfg, *j) for j in jobs], cfg.get("workers", 1))
    per_seed: dict[int, dict] = {s: {} for s in seeds}
    for (_, _, seed), part in zip(jobs, parts):
        per_seed[seed].update(part)
    for m in per_seed.values():  # gaps within each seed
        for key in map(task_key, arms_of):
            for other, gap in (("ar", "mgdm_minus_ar"), ("mdm", "mgdm_minus_mdm")):
                if f"{key}_mgdm_acc" in m and f"{key}_{other}_acc" in m:
                    m[f"{key}_{gap}"] = m[f"{key}_mgdm_acc"] - m[f"{key}_{other}_acc"]
    metrics = {k: mean(m[k] for m in per_seed.values()) for k in per_seed[seeds[0]]}  # means over seeds
    metrics["cpu_seconds"] = sum(v for m in per_seed.values() for k, v in m.items() if k.endswith("_cpu_s"))
    if len(seeds) > 1:
        for seed, m in per_seed.items():
            metrics.update({f"{k}_s{seed}": v for k, v in m.items() if k != "params"})
        for k in [k for k in metrics if k.endswith("_mgdm_minus_ar")]:
            metrics[f"{k}_min"] = min(m[k] for m in per_seed.values())
    gaps = {t: metrics[f"{task_key(t)}_mgdm_minus_ar"] for t in cfg["hard_tasks"]
            if f"{task_key(t)}_mgdm_minus_ar" in metrics}
    if gaps:
        best = max(gaps, key=gaps.get)
        metrics["hard_best_task"], metrics["hard_best_mgdm_minus_ar"] = best, gaps[best]
    return metrics
