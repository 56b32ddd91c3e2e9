"""ACDiT sampling: blockwise with the clean-block KV cache (A) vs blockwise recomputing the clean prefix at
every solver step (B), and vs full-sequence DiT sampling (B = L, same width and depth) as a third column.

One image, guidance off, 4 blocks (B = L/4, square tiles), random weights (cost does not depend on them), at
several sequence lengths L (patch 1 on a sqrt(L) x sqrt(L) image). The metric is images per second, so the
ratio A/B is the cache's speedup; ``dit_ratio`` = A / DiT is the speedup over full-sequence sampling, which
the paper's App. A bounds by 2 (only attention is saved). ``analytic_dit_ratio`` is that model's prediction.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.harness import ABCase, ABRuns, ab_cases
from lmlab.models.acdit import ACDiT, Config, analytic_sampling_flops, sample, sample_uncached

SHAPE = dict(patch_size=1, dim=128, n_layers=2, n_heads=4)
STEPS = 5


def images_per_s(fn) -> float:
    with Timer() as t:
        fn()
    return 1.0 / t.seconds


def case(L: int, rounds: int) -> ABCase:
    """Cached (A), uncached (B) and full-sequence DiT sampling of one image of L tokens, alternating."""
    side = math.isqrt(L)
    device = resolve_device()
    torch.manual_seed(0)
    acdit = ACDiT(Config(image_size=side, block_size=L // 4, **SHAPE)).eval().to(device)
    dit = ACDiT(Config(image_size=side, block_size=L, **SHAPE)).eval().to(device)
    y, noise = torch.tensor([1], device=device), torch.randn(1, L, 1).to(device)
    kw = dict(steps=STEPS, guidance=1.0, noise=noise)
    arms = {name: (lambda r, fn=fn: images_per_s(fn)) for name, fn in (
        ("cached", partial(sample, acdit, y, **kw)), ("uncached", partial(sample_uncached, acdit, y, **kw)),
        ("dit", partial(sample, dit, y, **kw)))}
    analytic = analytic_sampling_flops(dit.cfg, STEPS) / analytic_sampling_flops(acdit.cfg, STEPS)

    def fields(runs: ABRuns) -> dict:
        return {"L": L, "dit_value": runs.value("dit"), "dit_ratio": runs.value("cached") / runs.value("dit"),
                "analytic_dit_ratio": analytic, "dit_runs": runs.values["dit"], "steps_per_block": STEPS}

    return ABCase(f"L={L}", arms, rounds, fields=fields)


def run(quick: bool = False) -> dict:
    lengths, rounds = ([64], 1) if quick else ([256, 1024, 4096], 3)
    cases = ab_cases(lambda threads: (case(L, rounds) for L in lengths))
    return bench_record("acdit_kv_cache", "blockwise sampling with clean-block KV cache",
                        "blockwise sampling recomputing the clean prefix",
                        "images/s (1 image, 5 steps/block)", cases, runs=rounds)


if __name__ == "__main__":
    for c in run(quick=True)["cases"]:
        print(c["label"], round(c["ratio"], 3), round(c["dit_ratio"], 3), round(c["analytic_dit_ratio"], 3))
