"""Adapter training step time: MALoRA (A) vs MoLoRA (B), LoRA as an extra column, at the MALoRA repro's budgets.

The arms of ``repro/malora`` (read from its config.toml): MALoRA N=4 d_s=8 r'=8 top-2, MoLoRA N=4 r=8 top-2 and LoRA
r=16 (the active rank k*r of MoLoRA), on every attention and MLP projection of the same 4 x 128 core Transformer
(random weights: the work of a step does not depend on them). One step is a full ``Trainer.train_step``
(forward, causal LM loss, balance loss, backward, clipping, AdamW) on a batch of 32 tagged-task examples
(21 tokens). The arms alternate round by round (``repro/malora/timing.py``); the metric is training steps per
second, so ``ratio`` > 1 means MALoRA steps faster than MoLoRA. ``lora_value`` / ``lora_ratio`` place LoRA.
"""

from __future__ import annotations

import os
from pathlib import Path

import tomllib
import torch

from lmlab.core.results import bench_record
from lmlab.core.transformer import Transformer
from lmlab.harness import ABRuns, ab_cases, repro_module

CFG = {k: v for k, v in tomllib.loads((Path(__file__).parents[1] / "repro" / "malora" / "config.toml").read_text())
       .items() if not isinstance(v, dict)}  # the full run's top-level settings
BATCH = 32


def build(threads: int, rounds: int, steps: int):
    ex = repro_module("malora", "experiment")
    timing = repro_module("malora", "timing")
    torch.manual_seed(0)
    base = Transformer(ex.base_config(CFG)).eval()
    batch = ex.CODEC.encode(ex.Mixture(list(ex.FINETUNE)).generate(BATCH, seed=0))
    arms = {name: ex.main_arm(name, CFG, 0) for name in ("malora", "molora", "lora")}

    def fields(runs: ABRuns) -> dict:
        lora = runs.value("lora")
        return {"lora_value": lora, "lora_ratio": runs.value("malora") / lora, "batch": BATCH,
                "seq": ex.CODEC.seq_len, "steps_per_round": steps, "loadavg_1m_at_start": os.getloadavg()[0]}

    case = timing.timing_case(base, arms, batch, rounds if threads == 1 else min(rounds, 5), steps)
    case.fields = fields
    yield case


def run(quick: bool = False) -> dict:
    rounds, steps = (2, 1) if quick else (9, 5)
    cases = ab_cases(lambda n: build(n, rounds, steps))
    return bench_record("adapter_step_time",
                        f"MALoRA N=4 d_s={CFG['malora_subspace_rank']} r'={CFG['malora_rank']} top-2",
                        f"MoLoRA N=4 r={CFG['molora_rank']} top-2",
                        "training steps/s (4x128 base, batch 32 x 21 tokens, fwd+bwd+AdamW on the adapter)", cases,
                        runs=rounds)


if __name__ == "__main__":
    rec = run()
    for c in rec["cases"]:
        print(c["label"], round(c["a_value"], 2), round(c["b_value"], 2), round(c["ratio"], 3))
