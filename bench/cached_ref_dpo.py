"""DPO training step with cached reference log-probs (A) vs a live reference forward every step (B).

One ``Trainer.train_step`` (forward of chosen + rejected, DPO loss, backward, AdamW) of ``objectives.dpo.DPO`` on
the same pairs from the same weights. A reads the reference's summed response log-probs from a
``ReferenceCache`` built once before timing (its build time is recorded as context: it is paid once per dataset,
not per step); B runs the frozen reference forward on every batch. The metric is optimizer steps per second, so
a ratio above 1 means the cache wins. A and B alternate within each round; the value is the median over rounds.
The first step's losses of A and B are recorded to show that both compute the same function.
"""

from __future__ import annotations

import copy
import os

import torch

from lmlab.core.data import ExampleBatches
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.harness import ABCase, ab_cases
from lmlab.objectives.dpo import DPO, Config, ReferenceCache

CFG = dict(vocab_size=512, dim=128, n_layers=4, n_heads=4, max_seq_len=128)
PAIRS, BATCH, PROMPT, RESPONSE = 64, 16, 32, 32  # pairs in the dataset, pairs per step, tokens


def make_data(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pairs: a shared prompt, two different responses of RESPONSE tokens."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, CFG["vocab_size"], (PAIRS, PROMPT), generator=g)
    mask = torch.zeros(PAIRS, PROMPT + RESPONSE, dtype=torch.bool)
    mask[:, PROMPT:] = True
    out = {}
    for side in ("chosen", "rejected"):
        out[f"{side}_ids"] = torch.cat([prompt, torch.randint(0, CFG["vocab_size"], (PAIRS, RESPONSE), generator=g)], 1)
        out[f"{side}_mask"] = mask.clone()
    return out


def trainer(policy: Transformer, objective: DPO, data: dict[str, torch.Tensor]) -> Trainer:
    cfg = TrainConfig(steps=10**6, lr=1e-4, warmup_steps=0, grad_clip=1.0, progress=False,
                      device=str(resolve_device()))
    return Trainer(policy, objective, ExampleBatches(data, BATCH, seed=0), cfg)


def steps_per_s(t: Trainer, steps: int) -> float:
    with Timer() as timer:
        for _ in range(steps):
            t.train_step()
    return steps / timer.seconds


def case(data: dict[str, torch.Tensor], rounds: int, steps: int) -> ABCase:
    """Fresh policies (same weights) and one frozen reference; the recorded first step is the warm-up."""
    torch.manual_seed(0)
    dev = resolve_device()
    policy_a = Transformer(TransformerConfig(**CFG)).to(dev)
    policy_b, reference = copy.deepcopy(policy_a), copy.deepcopy(policy_a)
    rollouts_ids = torch.cat([data["chosen_ids"], data["rejected_ids"]])  # (2 PAIRS, T)
    rollouts_mask = torch.cat([data["chosen_mask"], data["rejected_mask"]])
    with Timer() as build:
        cache = ReferenceCache.build(reference, rollouts_ids, rollouts_mask, batch_size=2 * BATCH)
    cached = {**data, "ref_chosen": cache.sums[:PAIRS], "ref_rejected": cache.sums[PAIRS:]}
    a = trainer(policy_a, DPO(Config(beta=0.1)), cached)
    b = trainer(policy_b, DPO(Config(beta=0.1), reference=reference), data)
    loss_a, loss_b = a.train_step()["loss"], b.train_step()["loss"]
    fields = {"loadavg_1m_at_start": os.getloadavg()[0], "first_loss_a": loss_a, "first_loss_b": loss_b,
              "first_loss_abs_diff": abs(loss_a - loss_b), "cache_build_s": build.seconds, "cache_rows": 2 * PAIRS,
              "params": policy_a.num_params(), "pairs_per_step": BATCH, "seq": PROMPT + RESPONSE,
              "steps_per_round": steps}
    return ABCase("", {"a": lambda r: steps_per_s(a, steps), "b": lambda r: steps_per_s(b, steps)}, rounds,
                  warmup=False, fields=fields)


def run(quick: bool = False) -> dict:
    rounds, steps = (2, 1) if quick else (7, 4)
    data = make_data()
    cases = ab_cases(lambda threads: [case(data, rounds if threads == 1 else min(rounds, 5), steps)])
    return bench_record("cached_ref_dpo", "DPO step, cached reference log-probs",
                        "DPO step, live reference forward", "optimizer steps/s (fwd+bwd+AdamW, fp32)", cases,
                        runs=rounds)


if __name__ == "__main__":
    rec = run()
    for c in rec["cases"]:
        print(c["label"], round(c["a_value"], 3), round(c["b_value"], 3), round(c["ratio"], 3))
