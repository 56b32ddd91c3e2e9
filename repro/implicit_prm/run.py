"""Implicit PRM (Yuan et al., arXiv:2412.01981) on arithmetic chains: process rewards from outcome labels only.

Per seed (policy init, SFT data, rollouts and test prompts):
1. SFT a tiny Transformer on K-step chains whose steps are wrong with probability ``sft_error_rate``.
2. ``rollouts_per_prompt`` temperature-1 rollouts of ``n_rollout_prompts`` prompts, labelled by the strict
   verifier (every step right).
3. Reward models, each a copy of the SFT policy, reference = the frozen SFT policy: implicit PRM with the CE loss
   (``ce``), with DPO on correct x wrong pairs (``dpo``), CE on one rollout per prompt (``ce1``); the ORM value
   baseline with its lr x epochs sweep picked on validation rollouts (``rewards.train_orm``).
4. ``n_test_prompts`` fresh prompts x ``n_samples``: ``evaluate`` metrics.
Metrics are percent (first-error ratios are accuracy / chance); ``<metric>_s<seed>`` per seed, the plain name the
mean over seeds. Seeds run ``workers`` at a time in forked processes, one torch thread each.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from statistics import mean
from typing import Any

import torch

from . import evaluate as ev
from . import experiment as ex
from . import rewards as rw


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def seed_job(cfg: dict, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    task = ex.make_task(cfg)
    codec = ex.make_codec(task)
    comma_id = codec.tok.encode(",")[0]
    sets = ex.prompt_sets(cfg, seed)
    everything = set(sets["rollout"]) | set(sets["val"]) | set(sets["test"])
    policy, out = ex.train_policy(cfg, seed, codec, everything)
    out["sft_seconds"] = time.perf_counter() - t0
    log(f"seed {seed}: SFT greedy strict accuracy {out['sft_greedy_acc']:.3f} ({out['sft_seconds']:.0f} s)")
    train = ex.rollouts(policy, codec, cfg, sets["rollout"], cfg["rollouts_per_prompt"], seed)
    val = ex.rollouts(policy, codec, cfg, sets["val"], cfg["n_samples"], seed + 1)
    test = ex.rollouts(policy, codec, cfg, sets["test"], cfg["n_samples"], seed + 2)
    out["train_rollout_strict_acc"] = sum(train.strict) / len(train.strict)
    out["disjoint_prompt_sets"] = float(len(everything) == sum(len(v) for v in sets.values()))
    out["strict_implies_final"] = float(all(f for s, f in zip(test.strict + train.strict,
                                                              test.final_ok + train.final_ok) if s))
    out |= ev.baselines(test)
    log(f"seed {seed}: training rollouts strictly correct {out['train_rollout_strict_acc']:.3f}, test pass@1 "
        f"{out['pass1']:.3f} ({time.perf_counter() - t0:.0f} s)")
    ends = ex.step_ends(test, comma_id)
    score = rw.prm_val_score(policy, val, ex.step_ends(val, comma_id), cfg["beta"])
    models = {"ce": rw.train_ce(policy, train, cfg, seed, score), "dpo": rw.train_dpo(policy, train, cfg, seed, score),
              "ce1": rw.train_ce(policy, train, cfg, seed, score, per_prompt=1)}
    for name, (model, info) in models.items():
        out |= {f"{name}_{k}": v for k, v in info.items() if k != "val_grid"}
        out[f"{name}_val_grid"] = info["val_grid"]
        rewards = rw.prm_step_rewards(model, policy, test, ends, cfg["beta"])
        out |= ev.prm_metrics(name, test, rewards, cfg["beta"])
        if name == "ce":
            seq = cfg["beta"] * (rw.ref_sums(model, test.ids, test.response_mask)
                                 - rw.ref_sums(policy, test.ids, test.response_mask))
            out["sum_identity_err"] = float((torch.stack([r.sum() for r in rewards]) - seq).abs().max())
    orm, info = rw.train_orm(policy, train, val, cfg, seed, codec.mask_id)
    out |= info
    out["bon_orm"] = rw.bon_accuracy(rw.orm_scores(orm, test, codec.mask_id), test.final_ok, test.n)
    out["seconds"] = time.perf_counter() - t0
    log(f"seed {seed}: pass@1 {out['pass1']:.3f} maj {out['majority']:.3f} pass@N {out['passN']:.3f} "
        f"BoN ce-min {out['bon_ce_min']:.3f} wmaj ce-min {out['wmaj_ce_min']:.3f} ORM {out['bon_orm']:.3f} "
        f"fe ce {out['fe_ce']:.3f} dpo {out['fe_dpo']:.3f} ce1 {out['fe_ce1']:.3f} ({out['seconds']:.0f} s)")
    return out


PERCENT = ("pass1", "pass1_strict", "passN", "majority", "bon_", "wmaj_", "fe_ce", "fe_dpo", "fe_ce1",
           "train_rollout_strict_acc", "sft_greedy_acc", "orm_val_bon", "ce_val_bon", "dpo_val_bon",
           "ce1_val_bon")


def summarise(cfg: dict, runs: list[dict]) -> dict[str, Any]:
    m: dict[str, Any] = {}
    for key, v in runs[0].items():
        if not isinstance(v, (int, float)):
            continue
        pct = key.startswith(PERCENT) and not key.endswith(("_ratio", "_n", "_chance", "_steps"))
        vals = [100 * r[key] if pct else r[key] for r in runs]
        m[key] = mean(vals)
        for s, x in zip(cfg["seeds"], vals):
            m[f"{key}_s{s}"] = x
    for s, r in zip(cfg["seeds"], runs):
        for key in ("orm_grid", "ce_val_grid", "dpo_val_grid", "ce1_val_grid"):
            m[f"{key}_s{s}"] = r[key]
    m["wmaj_ce_min_minus_majority"] = m["wmaj_ce_min"] - m["majority"]
    m["bon_ce_min_minus_pass1"] = m["bon_ce_min"] - m["pass1"]
    m["bon_ce_min_minus_orm"] = m["bon_ce_min"] - m["bon_orm"]
    m["disjoint_prompt_sets"] = min(r["disjoint_prompt_sets"] for r in runs)
    m["strict_implies_final"] = min(r["strict_implies_final"] for r in runs)
    m["sum_identity_err"] = max(r["sum_identity_err"] for r in runs)
    return m


def run(cfg: dict, smoke: bool) -> dict:
    if cfg["workers"] > 1:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=cfg["workers"], mp_context=ctx) as pool:
            runs = list(pool.map(seed_job, [cfg] * len(cfg["seeds"]), cfg["seeds"]))
    else:
        runs = [seed_job(cfg, s) for s in cfg["seeds"]]
    return summarise(cfg, runs)
