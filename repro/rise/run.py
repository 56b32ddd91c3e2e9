"""RISE (Xu et al., arXiv:2410.06638) on arithmetic chains: do error-injected step pairs add to DPO + NLL?

Per seed (policy init, SFT data, rollouts and test prompts):
1. SFT a tiny Transformer on K-step chains whose steps are wrong with probability ``sft_error_rate``, stopped
   early so greedy accuracy is not saturated (the implicit_prm reproduction's ``experiment.train_policy``).
2. Self-sampling: ``rollouts_per_prompt`` temperature-1 attempts per train prompt, strict correctness.
3. Arms from the SFT policy at equal optimizer steps (``arms``): RISE = full pairs + ``edited_per_problem``
   rule-edited step pairs, DPO + NLL = full pairs only; the SFT policy itself is the third arm.
4. ``n_test_prompts`` fresh prompts: greedy strict accuracy, sampled accuracy, per-step error rates by type.
Metrics are percent; ``<metric>_s<seed>`` per seed, the plain name the mean over seeds. Seeds run ``workers`` at a
time in forked processes, one torch thread each.
"""

from __future__ import annotations

import sys
import time
from statistics import mean
from typing import Any

import torch

from lmlab.harness import map_jobs, repro_module

from . import arms as ar
from . import evaluate as ev

ARMS = ("sft", "dpo", "rise")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def seed_job(cfg: dict, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    ex = repro_module("implicit_prm", "experiment")
    t0 = time.perf_counter()
    task = ex.make_task(cfg)
    codec = ex.make_codec(task)
    sets = ex.prompt_sets(cfg, seed)
    everything = set(sets["rollout"]) | set(sets["val"]) | set(sets["test"])
    policy, out = ex.train_policy(cfg, seed, codec, everything)
    out["disjoint_prompt_sets"] = float(len(everything) == sum(len(v) for v in sets.values()))
    log(f"seed {seed}: SFT greedy strict accuracy {out['sft_greedy_acc']:.3f} ({time.perf_counter() - t0:.0f} s)")
    train = ex.rollouts(policy, codec, cfg, sets["rollout"], cfg["rollouts_per_prompt"], seed)
    out["train_attempt_strict_acc"] = 100 * sum(train.strict) / len(train.strict)
    models, info = ar.arms(policy, train, codec, task.cfg, cfg, seed)
    out |= info
    models["sft"] = policy
    for name in ARMS:
        out |= {f"{name}_{k}": v for k, v in ev.evaluate(models[name], codec, cfg, sets["test"], seed + 2).items()}
    out["seconds"] = time.perf_counter() - t0
    log(f"seed {seed}: pairs full {out['full_pairs']} step {out['step_pairs']}; greedy acc sft {out['sft_acc']:.1f} "
        f"dpo {out['dpo_acc']:.1f} rise {out['rise_acc']:.1f}; injected err sft {out['sft_err_injected']:.2f} "
        f"dpo {out['dpo_err_injected']:.2f} rise {out['rise_err_injected']:.2f} ({out['seconds']:.0f} s)")
    return out


def summarise(cfg: dict, runs: list[dict]) -> dict[str, Any]:
    m: dict[str, Any] = {}
    for key, v in runs[0].items():
        if not isinstance(v, (int, float)):
            continue
        vals = [100 * r[key] if key == "sft_greedy_acc" else r[key] for r in runs]
        m[key] = mean(vals)
        for s, x in zip(cfg["seeds"], vals):
            m[f"{key}_s{s}"] = x
    for metric in ("acc", "sampled_acc", "err_injected"):
        m[f"rise_minus_dpo_{metric}"] = m[f"rise_{metric}"] - m[f"dpo_{metric}"]
        m[f"rise_minus_sft_{metric}"] = m[f"rise_{metric}"] - m[f"sft_{metric}"]
        m[f"dpo_minus_sft_{metric}"] = m[f"dpo_{metric}"] - m[f"sft_{metric}"]
    for key in ("disjoint_prompt_sets", "equal_steps", "edits_wrong", "sft_classifier_agrees",
                "dpo_classifier_agrees", "rise_classifier_agrees"):
        m[key] = min(r[key] for r in runs)
    return m


def run(cfg: dict, smoke: bool) -> dict:
    runs = map_jobs(seed_job, [(cfg, s) for s in cfg["seeds"]], cfg["workers"])
    return summarise(cfg, runs)
