"""Training step time of adapter arms on one base, measured alternately in one process (repro and bench).

Each arm is a full ``Trainer.train_step`` (forward, causal LM loss, router balance loss, backward, clipping,
AdamW) on the same batch shape; rounds call every arm once in order (``lmlab.harness.measure_alternately``), so a
busy machine slows all arms alike. A round times ``steps`` consecutive steps; the value is steps per second.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from lmlab import adapters
from lmlab.core.train import TrainConfig, Trainer
from lmlab.harness import ABCase, measure_alternately
from lmlab.objectives.causal_lm import CausalLM


class FixedBatch:
    """One batch for every step (timing only: the work per step does not depend on the data)."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def get_batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        return self.batch


def trainers(base: torch.nn.Module, arms: dict[str, adapters.Config], batch: dict[str, torch.Tensor],
             lr: float = 3e-3) -> dict[str, Trainer]:
    """A Trainer per arm, each on its own copy of ``base`` with the arm's adapter."""
    tcfg = TrainConfig(steps=10**9, lr=lr, warmup_steps=1, progress=False)
    return {name: Trainer(adapters.apply(copy.deepcopy(base), acfg), CausalLM(), FixedBatch(batch), tcfg)
            for name, acfg in arms.items()}


def steps_per_second(trainer: Trainer, steps: int) -> Callable[[int], float]:
    def measure(_round: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps / (time.perf_counter() - t0)
    return measure


def timing_case(base: torch.nn.Module, arms: dict[str, adapters.Config], batch: dict[str, torch.Tensor],
                rounds: int, steps: int, label: str = "") -> ABCase:
    """An ``ABCase`` over ``arms`` (first = A, second = B); one untimed warm-up round of every arm first."""
    ts = trainers(base, arms, batch)
    return ABCase(label, {name: steps_per_second(t, steps) for name, t in ts.items()}, rounds)


def step_ms(base: torch.nn.Module, arms: dict[str, adapters.Config], batch: dict[str, torch.Tensor], rounds: int,
            steps: int) -> dict[str, float]:
    """Median milliseconds per training step of each arm, measured alternately under the current threads."""
    runs = measure_alternately(timing_case(base, arms, batch, rounds, steps))
    return {name: 1000.0 / runs.value(name) for name in arms}
