"""Implicit PRM (Yuan et al., arXiv:2412.01981) on arithmetic chains: process rewards from outcome labels only.

Per seed (policy init, SFT data, rollouts and test prompts):
1. SFT a tiny Transformer on K-step chains whose steps are wrong with probability ``sft_error_rate``.
2. ``rollouts_per_prompt`` temperature-1 rollouts of ``n_rollout_prompts`` prompts, labelled by the strict
   verifier (every step right).
3. Reward models, each a copy of the SFT policy, reference = the frozen SFT policy: implicit PRM with the CE loss
   (``ce``), with DPO on correct x wrong pairs (``dpo``), CE on one rollout per prompt (``ce1``); two ORM
   baselines, each with its lr x epochs sweep picked on validation rollouts: the policy fine-tuned end to end
   (``rewards.train_orm``, ``bon_orm``) and a value head on the frozen policy (``rewards.train_frozen_orm``,
   ``bon_orm_frozen``). The gate compares with the one of better validation BoN (``orm_choice``: 0 / 1,
   ``bon_orm_chosen``).
4. ``n_test_prompts`` fresh prompts x ``n_samples``: ``evaluate`` metrics.
5. Not gated: the FLOPs ratio Math-Shepherd / implicit PRM (``objectives.labelling_cost``) at the measured token
   counts of the training rollouts (``flops_ratio_vs_math_shepherd``).
Metrics are percent (first-error ratios are accuracy / chance); ``<metric>_s<seed>`` per seed, the plain name the
mean over seeds. Seeds run ``workers`` at a time in forked processes, one torch thread each.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from statistics import mean
from typing import Any

import torch

from lmlab.harness import map_jobs
from lmlab.objectives import labelling_cost as lc

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
    head, info = rw.train_frozen_orm(policy, train, val, cfg, seed)
    out |= info
    with torch.no_grad():
        out["bon_orm_frozen"] = rw.bon_accuracy(head(rw.last_features(policy, test)), test.final_ok, test.n)
    out["orm_choice"] = rw.orm_choice(out)  # by validation only: 0 full fine-tune, 1 frozen trunk
    out["bon_orm_chosen"] = out["bon_orm_frozen"] if out["orm_choice"] else out["bon_orm"]
    out |= labelling_flops(cfg, policy, train)
    out["seconds"] = time.perf_counter() - t0
    log(f"seed {seed}: pass@1 {out['pass1']:.3f} maj {out['majority']:.3f} pass@N {out['passN']:.3f} "
        f"BoN ce-min {out['bon_ce_min']:.3f} wmaj ce-min {out['wmaj_ce_min']:.3f} ORM {out['bon_orm']:.3f} "
        f"frozen-trunk ORM {out['bon_orm_frozen']:.3f} (chosen: {out['orm_choice']}) "
        f"fe ce {out['fe_ce']:.3f} dpo {out['fe_dpo']:.3f} ce1 {out['fe_ce1']:.3f} ({out['seconds']:.0f} s)")
    return out


def labelling_flops(cfg: dict, policy: torch.nn.Module, train: ex.Rollouts) -> dict[str, float]:
    """Math-Shepherd / implicit-PRM FLOPs (``objectives.labelling_cost``) at this seed's measured token counts:
    mean prompt (through ``<sep>``) and response (through ``<eos>``) lengths of the training rollouts, K steps,
    ``flops_mc_per_step`` completions per step, the CE schedule's epochs; with and without prefix caching."""
    resp = train.response_mask.sum(1).double()  # (R,)
    prompt = train.last.double() + 1 - resp  # (R,) tokens before the response
    s = lc.LabellingSetup(params=policy.num_params(), prompt_tokens=float(prompt.mean()),
                          response_tokens=float(resp.mean()), steps=cfg["chain_steps"],
                          mc_per_step=cfg["flops_mc_per_step"], responses=cfg["rollouts_per_prompt"],
                          instructions=cfg["n_rollout_prompts"], epochs=cfg["prm_epochs"])
    return {"flops_prompt_tokens": s.prompt_tokens, "flops_response_tokens": s.response_tokens,
            "flops_ratio_vs_math_shepherd": lc.flops_ratio(s),
            "flops_ratio_vs_math_shepherd_no_prefix_cache": lc.flops_ratio(replace(s, prefix_cached=False))}


PERCENT = ("pass1", "pass1_strict", "passN", "majority", "bon_", "wmaj_", "fe_ce", "fe_dpo", "fe_ce1",
           "train_rollout_strict_acc", "sft_greedy_acc", "orm_val_bon", "orm_frozen_val_bon", "ce_val_bon",
           "dpo_val_bon", "ce1_val_bon")


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
        for key in ("orm_grid", "orm_frozen_grid", "ce_val_grid", "dpo_val_grid", "ce1_val_grid"):
            m[f"{key}_s{s}"] = r[key]
    m["wmaj_ce_min_minus_majority"] = m["wmaj_ce_min"] - m["majority"]
    m["bon_ce_min_minus_pass1"] = m["bon_ce_min"] - m["pass1"]
    m["bon_ce_min_minus_orm"] = m["bon_ce_min"] - m["bon_orm_chosen"]  # the ORM with the better validation BoN
    m["disjoint_prompt_sets"] = min(r["disjoint_prompt_sets"] for r in runs)
    m["strict_implies_final"] = min(r["strict_implies_final"] for r in runs)
    m["sum_identity_err"] = max(r["sum_identity_err"] for r in runs)
    return m


def run(cfg: dict, smoke: bool) -> dict:
    if cfg["track"] not in ("tiny", "smollm2"):
        raise ValueError(f"track must be 'tiny' or 'smollm2', got {cfg['track']!r}")
    if cfg["track"] == "smollm2":  # the real-model track: its own defaults (smollm2.DEFAULTS), not gated
        if smoke:
            raise ValueError("the SmolLM2 track has no smoke run; its plumbing is tested in "
                             "tests/objectives/test_implicit_prm_hf.py")
        from .smollm2 import run_smollm2

        return run_smollm2({})
    runs = map_jobs(seed_job, [(cfg, s) for s in cfg["seeds"]], cfg["workers"])
    return summarise(cfg, runs)
