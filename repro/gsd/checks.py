"""Measurements of the GSD reproduction: decoder comparison on held-out prompts, and the sampling test.

``compare`` runs plain greedy (AR) and each speculative decoder on every prompt, alternating decoders prompt
by prompt so that a busy machine slows all of them alike, and checks token identity against AR.
``sampling_test`` draws many 3-token continuations from a small-vocabulary model with a speculative decoder
and compares their histogram with the exact sampling distribution (enumerated with ``core.sampling.probs``,
the same function plain sampling draws from): chi-square p-value and total variation distance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import chisquare

from lmlab.core.sampling import probs
from lmlab.decoding.base import Sampling
from lmlab.decoding.chain import ChainSpeculative
from lmlab.decoding.chain import Config as ChainConfig
from lmlab.decoding.gsd import Config as GSDConfig
from lmlab.decoding.gsd import GraphSpeculative
from lmlab.decoding.reference import Greedy
from lmlab.decoding.tree import Config as TreeConfig
from lmlab.decoding.tree import TreeSpeculative


def decoders(draft: Any, cfg: dict[str, Any], sampling: Sampling | None = None) -> dict:
    """Chain, tree and GSD at the same depth (and the same node budget for tree and GSD); ``gsd_m<m>`` for
    each extra merge context in ``cfg["extra_merge_contexts"]``."""
    s = sampling or Sampling()
    shape = dict(depth=cfg["depth"], budget=cfg["budget"], top_k=cfg["top_k"], width=cfg["width"],
                 sibling_threshold=cfg["sibling_threshold"], leaf_threshold=cfg["leaf_threshold"], sampling=s)
    out = {"chain": ChainSpeculative(ChainConfig(depth=cfg["depth"], sampling=s), draft),
           "tree": TreeSpeculative(TreeConfig(**shape), draft),
           "gsd": GraphSpeculative(GSDConfig(merge_context=cfg["merge_context"], **shape), draft)}
    for m in cfg.get("extra_merge_contexts", []):
        out[f"gsd_m{m}"] = GraphSpeculative(GSDConfig(merge_context=m, **shape), draft)
    return out


def compare(target: Any, decs: dict[str, Any], prompts: list[list[int]], max_new: int,
            tag: str) -> dict[str, float]:
    """Greedy AR vs each decoder on every prompt: identity, tau, draft work, wall-clock speed-up."""
    totals = {name: {"new": 0, "rounds": 0, "draft": 0, "sec": 0.0, "same": 0, "merged": 0, "edges": 0}
              for name in ["ar", *decs]}
    consistent = True
    for prompt in prompts:
        ref = Greedy().generate(target, prompt, max_new)
        runs = {"ar": ref} | {name: dec.generate(target, prompt, max_new) for name, dec in decs.items()}
        for name, gen in runs.items():
            t, s = totals[name], gen.stats
            t["new"] += s.new_tokens
            t["rounds"] += s.rounds
            t["draft"] += s.draft_tokens
            t["sec"] += s.seconds
            t["same"] += gen.tokens == ref.tokens
            consistent &= s.accepted + s.rounds == s.new_tokens
            t["merged"] += getattr(s, "merged_accepts", 0)  # GraphStats (tree, GSD)
            t["edges"] += getattr(s, "merge_edges", 0)
    out: dict[str, float] = {f"{tag}_stats_consistent": float(consistent)}
    out[f"{tag}_identical_frac"] = min(totals[n]["same"] for n in decs) / len(prompts)
    out[f"{tag}_ar_tokens_per_s"] = totals["ar"]["new"] / totals["ar"]["sec"]
    for name in decs:
        t = totals[name]
        out[f"{tag}_tau_{name}"] = t["new"] / t["rounds"]
        out[f"{tag}_draft_evals_{name}"] = t["draft"] / t["new"]
        out[f"{tag}_speedup_{name}"] = totals["ar"]["sec"] / t["sec"]
        if name != "chain":
            out[f"{tag}_merge_edges_per_round_{name}"] = t["edges"] / t["rounds"]
            out[f"{tag}_merged_accepts_frac_{name}"] = t["merged"] / t["rounds"]
    if {"chain", "tree", "gsd"} <= set(decs):
        out[f"{tag}_tau_gsd_over_chain"] = out[f"{tag}_tau_gsd"] / out[f"{tag}_tau_chain"]
        out[f"{tag}_tau_gsd_over_tree"] = out[f"{tag}_tau_gsd"] / out[f"{tag}_tau_tree"]
        evals = out[f"{tag}_draft_evals_gsd"] / out[f"{tag}_draft_evals_tree"]
        out[f"{tag}_draft_evals_gsd_over_tree"] = evals
        out[f"{tag}_speedup_gsd_over_tree"] = out[f"{tag}_speedup_gsd"] / out[f"{tag}_speedup_tree"]
    return out


@torch.no_grad()
def exact_distribution(model: Any, prompt: list[int], k: int, s: Sampling) -> dict[tuple[int, ...], float]:
    """P(next k tokens) under plain sampling, by enumeration (only feasible for a small vocabulary)."""
    V = model.cfg.vocab_size
    out = {(): 1.0}
    for _ in range(k):
        grown = {}
        for seq, p in out.items():
            if p == 0.0:
                continue
            row = probs(model(torch.tensor([prompt + list(seq)]))[0, -1], s.temperature, s.top_k, s.top_p)
            for t in range(V):
                if row[t] > 0:
                    grown[seq + (t,)] = p * float(row[t])
        out = grown
    return out


def sampling_test(target: Any, dec: Any, prompt: list[int], k: int, s: Sampling, n: int) -> dict[str, float]:
    exact = exact_distribution(target, prompt, k, s)
    outcomes = sorted(exact)
    index = {o: i for i, o in enumerate(outcomes)}
    counts = np.zeros(len(outcomes))
    impossible = merges = 0
    for seed in range(n):
        gen = dec.generate(target, prompt, k, seed=seed)
        out = tuple(gen.tokens)
        merges += getattr(gen.stats, "merge_edges", 0)
        if out in index:
            counts[index[out]] += 1
        else:
            impossible += 1
    p = np.array([exact[o] for o in outcomes])
    p = p / p.sum()
    keep = p * n >= 5  # pool outcomes with fewer than 5 expected draws
    obs, exp = counts[keep], p[keep] * n
    if (~keep).any():
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, p[~keep].sum() * n)
    chi = chisquare(obs, exp * obs.sum() / exp.sum()) if obs.sum() else None
    # the TV distance an exact sampler would show at this sample size (sampling noise floor)
    floor = 0.5 * float(np.sum(np.sqrt(2 * p * (1 - p) / (math.pi * n))))
    tv = 0.5 * float(np.abs(counts / n - p).sum())
    return {"chi2_p": float(chi.pvalue) if chi else float("nan"), "tv": tv,
            "tv_noise_floor": floor, "impossible": float(impossible), "outcomes": float(len(outcomes)),
            "merge_edges_per_sample": merges / n}
