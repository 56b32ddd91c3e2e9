"""MALoRA vs MoLoRA vs HydraLoRA vs LoRA on a tagged multi-task mix over one frozen tiny base (training.md 3.6a).

1. The base (core Transformer, ``dim`` x ``layers``) is pre-trained once on copy / rotate of random strings and
   cached (``experiment.pretrained_base``).
2. Main comparison: every arm of ``arms`` x every seed of ``seeds``, ``steps`` optimizer steps on ``n_train``
   examples per task; exact match on ``n_test`` held-out examples per task (percent). Metrics ``acc_<arm>`` (mean
   over seeds of the 5-task mean), ``acc_<arm>_s<seed>``, ``acc_<arm>_<task>``, ``params_<arm>``.
3. Rank sweep (overfitting): MoLoRA r and MALoRA r' in ``sweep_ranks`` (MALoRA d_s = r'), ``sweep_n_train``
   examples per task, ``sweep_steps`` steps, ``sweep_seeds``; ``sweep_<method>_drop`` = accuracy at the lowest rank
   minus accuracy at the highest (points).
4. Step time: every main arm on the base, ``timing_rounds`` rounds of ``timing_steps`` steps, arms alternating in
   this process at one torch thread (``timing.step_ms``); ``step_ms_<arm>``.
Training jobs run ``workers`` at a time in forked processes, one torch thread each.
"""

from __future__ import annotations

import sys
from statistics import mean
from typing import Any

from lmlab.core.runtime import threads
from lmlab.harness import map_jobs

from . import experiment as ex
from .tasks import FINETUNE
from .timing import step_ms

_BASE: dict[str, Any] = {}  # the frozen base, set before the workers fork


def job(cfg: dict, kind: str, arm: str, rank: int, seed: int) -> dict:
    """One training run: a main arm (``kind="main"``) or a rank-sweep arm (``kind="sweep"``, MALoRA d_s = r')."""
    if kind == "main":
        acfg = ex.main_arm(arm, cfg, seed)
        n_train, steps = cfg["n_train"], cfg["steps"]
    else:
        acfg = ex.adapter_config(arm, rank, rank if arm == "malora" else None, cfg, seed)
        n_train, steps = cfg["sweep_n_train"], cfg["sweep_steps"]
    out = ex.train_arm(_BASE["model"], acfg, cfg, seed, n_train, steps)
    print(f"{kind} {arm} r={acfg.rank} seed {seed}: mean exact match {out['acc']['mean']:.1f}% "
          f"({out['train_seconds']:.0f} s, {out['params']} params)", file=sys.stderr, flush=True)
    return out


def run_jobs(cfg: dict, jobs: list[tuple]) -> list[dict]:
    return map_jobs(job, [(cfg, *j) for j in jobs], cfg["workers"])


def main_metrics(cfg: dict, results: dict[tuple, dict]) -> dict[str, Any]:
    m: dict[str, Any] = {}
    for arm in cfg["arms"]:
        runs = [results[("main", arm, 0, s)] for s in cfg["seeds"]]
        m[f"params_{arm}"] = runs[0]["params"]
        m[f"acc_{arm}"] = mean(r["acc"]["mean"] for r in runs)
        m[f"train_acc_{arm}"] = mean(r["train_acc"] for r in runs)
        for s, r in zip(cfg["seeds"], runs):
            m[f"acc_{arm}_s{s}"] = r["acc"]["mean"]
        for task in FINETUNE:
            m[f"acc_{arm}_{task}"] = mean(r["acc"][task] for r in runs)
        m[f"loss_ratio_{arm}"] = max(r["loss_last"] / r["loss_first"] for r in runs)
        m[f"train_step_ms_{arm}"] = mean(r["train_step_ms"] for r in runs)  # context: workers share the CPU
        m[f"balance_aux_{arm}"] = mean(r["balance_aux"] for r in runs)
    m["test_examples"] = results[("main", cfg["arms"][0], 0, cfg["seeds"][0])]["test_examples"]
    return m


def sweep_metrics(cfg: dict, results: dict[tuple, dict]) -> dict[str, Any]:
    m: dict[str, Any] = {}
    lo, hi = min(cfg["sweep_ranks"]), max(cfg["sweep_ranks"])
    for method in ("molora", "malora"):
        for r in cfg["sweep_ranks"]:
            runs = [results[("sweep", method, r, s)] for s in cfg["sweep_seeds"]]
            m[f"sweep_{method}_r{r}_acc"] = mean(x["acc"]["mean"] for x in runs)
            m[f"sweep_{method}_r{r}_train_acc"] = mean(x["train_acc"] for x in runs)
            m[f"sweep_{method}_r{r}_params"] = runs[0]["params"]
        m[f"sweep_{method}_drop"] = m[f"sweep_{method}_r{lo}_acc"] - m[f"sweep_{method}_r{hi}_acc"]
    m["rank_drop_molora_minus_malora"] = m["sweep_molora_drop"] - m["sweep_malora_drop"]
    return m


def run(cfg: dict, smoke: bool) -> dict:
    base, m = ex.pretrained_base(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    _BASE["model"] = base
    jobs = [("main", arm, 0, s) for s in cfg["seeds"] for arm in cfg["arms"]]
    jobs = [("sweep", meth, r, s) for s in cfg["sweep_seeds"] for r in sorted(cfg["sweep_ranks"], reverse=True)
            for meth in ("molora", "malora")] + jobs  # the longest runs first
    results = dict(zip(jobs, run_jobs(cfg, jobs)))
    m |= main_metrics(cfg, results) | sweep_metrics(cfg, results)
    every = list(results.values())
    m["identity_at_init"] = min(r["identity_at_init"] for r in every)
    m["base_kept"] = min(r["base_kept"] for r in every)
    m["params_match_formula"] = float(all(r["params"] == r["params_formula"] for r in every))
    m["loss_ratio_max"] = max(r["loss_last"] / r["loss_first"] for r in every)
    m["train_cpu_seconds"] = sum(r["train_seconds"] for r in every)
    batch = ex.CODEC.encode(ex.Mixture(list(FINETUNE)).generate(cfg["batch_size"], seed=0))
    with threads(1):
        ms = step_ms(base, {a: ex.main_arm(a, cfg, 0) for a in cfg["arms"]}, batch, cfg["timing_rounds"],
                     cfg["timing_steps"])
    m |= {f"step_ms_{a}": v for a, v in ms.items()}
    m["params_ratio_malora_molora"] = m["params_malora"] / m["params_molora"]
    m["step_time_ratio_malora_molora"] = m["step_ms_malora"] / m["step_ms_molora"]
    m["acc_malora_minus_molora"] = m["acc_malora"] - m["acc_molora"]
    m["acc_malora_minus_lora"] = m["acc_malora"] - m["acc_lora"]
    return m
