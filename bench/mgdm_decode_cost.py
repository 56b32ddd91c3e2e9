"""Decoding cost of masked diffusion (MGDM, T steps) vs autoregressive greedy decoding, same task and size.

A: ``lmlab.decoding.masked.masked_decode`` on a bidirectional core Transformer, T = 20 (the paper's default)
and T = 1 (the one-step variant the paper reports for Countdown-4: ~10x faster at 75% vs 91.5% accuracy).
B: greedy decoding of the same-size causal Transformer with the KV cache (prefill, then one token per call),
generating the full target length (no early stop at <eos>, so both decode the same number of positions).
Task: Countdown-4 prompts and the codec layout of ``lmlab.tasks.encoding`` (target region ~30 positions);
batch 32; model 3 layers, width 64. Weights are random: the cost does not depend on them.
Metric: decoded target positions per second (A/B > 1: diffusion is faster); model calls are recorded per case.
A and B run alternately in one process, for 1 and 2 torch threads.
"""

from __future__ import annotations

import torch

from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.masked import Config, masked_decode
from lmlab.decoding.reference import greedy_fill
from lmlab.harness import ABCase, ab_cases
from lmlab.recipes.tasks import build_task
from lmlab.tasks.encoding import TaskCodec

BATCH, DIM, LAYERS = 32, 64, 3


def setup(n: int = BATCH) -> tuple[TaskCodec, torch.Tensor, torch.Tensor, Transformer, Transformer]:
    task = build_task("countdown4")
    examples = task.generate(n, seed=0)
    codec = TaskCodec.fit(task.alphabet, examples)
    ids, maskable = codec.encode_prompts([e.prompt for e in examples])
    device = resolve_device()
    models = []
    for mask in ("bidirectional", "causal"):
        torch.manual_seed(0)
        models.append(Transformer(TransformerConfig(vocab_size=codec.vocab_size, dim=DIM, n_layers=LAYERS,
                                                    n_heads=4, max_seq_len=codec.seq_len, mask=mask)).eval()
                      .to(device))
    return codec, ids.to(device), maskable.to(device), models[0], models[1]


def per_second(fn, positions: int) -> tuple[float, int]:
    """(decoded positions per second, model calls) of one decode."""
    with Timer() as t:
        calls = fn()
    return positions / t.seconds, calls


def run(quick: bool = False) -> dict:
    rounds = 2 if quick else 7
    codec, ids, maskable, diffusion, ar = setup()
    positions = int(maskable.sum())

    def case(steps: int) -> ABCase:
        cfg = Config(steps=steps)

        def a() -> int:
            return masked_decode(diffusion, ids, maskable, codec.mask_id, cfg).stats.model_calls

        def b() -> int:
            return greedy_fill(ar, ids, maskable, codec.eos_id, stop_at_eos=False)[1]

        return ABCase(f"T={steps}", {"a": lambda r: per_second(a, positions), "b": lambda r: per_second(b, positions)},
                      rounds, record_runs=False,
                      fields=lambda runs: {"steps": steps, "a_model_calls": runs.outputs["a"][-1],
                                           "b_model_calls": runs.outputs["b"][-1], "positions": positions,
                                           "batch": BATCH, "target_positions_per_row": codec.target_len + 1})

    cases = ab_cases(lambda threads: (case(steps) for steps in (20, 1)))
    return bench_record("mgdm_decode_cost", "masked diffusion decoding (MGDM top-k, T steps)",
                        "autoregressive greedy with KV cache", "decoded target positions per second",
                        cases, runs=rounds)


if __name__ == "__main__":
    rec = run(quick=True)
    for c in rec["cases"]:
        print(c["label"], f"A {c['a_value']:.0f}/s B {c['b_value']:.0f}/s ratio {c['ratio']:.2f}")
