"""MGDM vs MDM vs AR at identical model size, steps, batch and data, on planning and a harder task.

For each task in ``[gate1_task] + hard_tasks`` and each arm (objective registry name) a core Transformer is
trained with ``lmlab.cli.eval.train_on_task`` and scored by the task's exact verifier on held-out prompts (AR:
greedy; diffusion: ``masked_decode`` easy-first top-k, T = decode_steps). Metrics are
``<task>_<arm>_acc``, ``<task>_mgdm_minus_ar``, ``<task>_mgdm_minus_mdm``, the best gap over the hard tasks,
loss drops, decode validity (givens untouched, no <mask> left, well-formed answers) and CPU seconds.
Arms are independent; with ``workers > 1`` they are trained in forked processes, one torch thread each.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from lmlab.cli.eval import TaskDataConfig, accuracy, solve, train_on_task
from lmlab.core.train import TrainConfig
from lmlab.core.transformer import TransformerConfig
from lmlab.decoding.masked import Config as DecodeConfig
from lmlab.decoding.masked import masked_decode

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


def run_arm(cfg: dict, task: str, arm: str) -> dict:
    """Train one arm on one task and score it; metrics are prefixed ``<task key>_<arm>_``."""
    torch.set_num_threads(cfg["threads"])
    data = TaskDataConfig(n_train=cfg["n_train"], n_test=cfg["n_test"], batch_size=cfg["batch_size"],
                          seed=cfg["seed"], decode_steps=cfg["decode_steps"])
    decode = DecodeConfig(steps=cfg["decode_steps"])
    key = task_key(task)
    name = f"{key}_{SHORT.get(arm, arm)}"
    model = TransformerConfig(dim=cfg["dim"], n_layers=cfg["layers"], n_heads=cfg["heads"])
    train = TrainConfig(steps=cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup"], progress=False,
                        eval_batches=4, seed=cfg["seed"])
    c0 = time.process_time()
    run_ = train_on_task(arm, task, model, train, data, seed=cfg["seed"])
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
    print(f"{name}: accuracy {metrics[f'{name}_acc']:.3f} ({metrics[f'{name}_cpu_s']:.0f} CPU s)",
          file=sys.stderr, flush=True)
    return metrics


def run(cfg: dict, smoke: bool) -> dict:
    arms_of = {cfg["gate1_task"]: cfg["arms"]}  # task -> arms, in run order; the gate-1 task keeps its arms
    for t in cfg["hard_tasks"]:
        arms_of.setdefault(t, cfg["hard_arms"])
    jobs = [(t, a) for t, arms in arms_of.items() for a in arms]
    workers = cfg.get("workers", 1)
    if workers > 1:  # arms are independent: one process each (fork keeps this module; 1 torch thread each)
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            parts = list(pool.map(run_arm, [cfg] * len(jobs), *zip(*jobs)))
    else:
        parts = [run_arm(cfg, t, a) for t, a in jobs]
    metrics: dict = {}
    for part in parts:
        metrics.update(part)
    metrics["cpu_seconds"] = sum(v for k, v in metrics.items() if k.endswith("_cpu_s"))
    for task, arms in arms_of.items():
        key = task_key(task)
        acc = {SHORT.get(a, a): metrics[f"{key}_{SHORT.get(a, a)}_acc"] for a in arms}
        if "mgdm" in acc and "ar" in acc:
            metrics[f"{key}_mgdm_minus_ar"] = acc["mgdm"] - acc["ar"]
        if "mgdm" in acc and "mdm" in acc:
            metrics[f"{key}_mgdm_minus_mdm"] = acc["mgdm"] - acc["mdm"]
    gaps = {t: metrics[f"{task_key(t)}_mgdm_minus_ar"] for t in cfg["hard_tasks"]
            if f"{task_key(t)}_mgdm_minus_ar" in metrics}
    if gaps:
        best = max(gaps, key=gaps.get)
        metrics["hard_best_task"], metrics["hard_best_mgdm_minus_ar"] = best, gaps[best]
    return metrics
