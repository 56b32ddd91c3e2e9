"""Online transform cost per token: FlatQuant's Kronecker transform (A) vs a dense n x n rotation (B).

FlatQuant applies P = P1 ⊗ P2 to every token at inference as P1^T X P2 on the token reshaped to (n1, n2)
(``lmlab.compression.transforms.kron_apply``), 2 n (n1 + n2) FLOPs per token, instead of x P with a dense P (2
n^2 FLOPs, what a learned dense rotation would cost; QuaRot avoids it only with fast Hadamard kernels). Sizes:
the hidden sizes of SmolLM2-135M (576 -> 24 x 24) and Llama-3-8B (4096 -> 64 x 64). A batch of 256 tokens is
transformed; the metric is microseconds per token (median of alternating A/B runs), so ratio = A / B < 1 means
the Kronecker form is faster. The FLOP counts and their ratio are recorded beside the times.
"""

from __future__ import annotations

import functools

import torch

from lmlab.compression.transforms import kron_apply, kron_dense, kron_factors
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer
from lmlab.harness import ABCase, ab_cases

SIZES = {"llama-3-8b hidden": 4096, "smollm2-135m hidden": 576}
TOKENS = 256


def timed(fn, x: torch.Tensor, reps: int) -> float:
    """Microseconds per token of ``fn(x)``, best of ``reps`` back-to-back calls."""
    best = float("inf")
    for _ in range(reps):
        with Timer() as t:
            fn(x)
        best = min(best, t.seconds)
    return best / x.shape[0] * 1e6


def case(label: str, n: int, rounds: int, reps: int) -> ABCase:
    """Kronecker (A) vs dense (B) transform of a (TOKENS, n) batch; the two are checked to agree first."""
    g = torch.Generator().manual_seed(0)
    n1, n2 = kron_factors(n)
    a, b = torch.randn(n1, n1, generator=g), torch.randn(n2, n2, generator=g)
    dense = kron_dense(a, b, n)  # (n, n)
    x = torch.randn(TOKENS, n, generator=g)
    assert torch.allclose(kron_apply(x, a, b), x @ dense, rtol=1e-3, atol=1e-2 * n**0.5)
    kron = functools.partial(kron_apply, a=a, b=b)
    full = functools.partial(torch.matmul, other=dense)
    return ABCase(f"{label} n={n} ({n1}x{n2})", {"kron": lambda r: timed(kron, x, reps),
                                                  "dense": lambda r: timed(full, x, reps)}, rounds,
                  warmup=lambda: (kron(x), full(x)), record_runs=False,
                  fields={"n": n, "factors": [n1, n2], "a_flops_per_token": 2 * n * (n1 + n2),
                          "b_flops_per_token": 2 * n * n, "flop_ratio": (n1 + n2) / n})


def run(quick: bool = False) -> dict:
    rounds, reps = (2, 2) if quick else (7, 5)
    cases = ab_cases(lambda threads: (case(label, n, rounds, reps) for label, n in SIZES.items()))
    return bench_record("online_transform_cost", a="Kronecker P1 ⊗ P2 (kron_apply)", b="dense n x n matmul",
                        metric="microseconds per token (256-token batch, lower is better)", cases=cases,
                        runs=rounds)
