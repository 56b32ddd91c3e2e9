"""Fine-grained MoE MLP forward (A) vs a dense SwiGLU MLP with equal active parameters (B), naive dispatch extra.

A is ``models.moe.MoEMLP`` with its sorted dispatch (assignments sorted by expert, one pass per expert over its
contiguous slice, ``index_add_`` back); B is the core ``GatedMLP`` whose hidden width equals the MoE's active
expert width (k selected experts + shared experts, F/m wide each), so B does the same matmul work per token as
A's experts minus the router. The extra column is ``NaiveMoEMLP`` (the per-token reference loop) on the same
weights and input. The metric is MLP forward tokens per second (no grad, fp32, one prefill-shaped batch), so
``ratio`` = A / B compares the routed MLP (routing, dispatch and experts) with the dense FFN of equal active size,
and ``fast_over_naive`` is the sorted dispatch's speed-up over the reference.

Cases, each for 1 and 2 torch threads: C=256, F=1024, E=8 top-2 with m=1 (8 experts, k=2) and m=4 with one
shared expert (32 experts, k=8, width 256).
"""

from __future__ import annotations

import torch

from lmlab.core.blocks import GatedMLP
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.core.transformer import TransformerConfig
from lmlab.harness import ABCase, ABRuns, ab_cases
from lmlab.models.moe import MoEMLP, NaiveMoEMLP, layer_params

DIM, FFN = 256, 1024
CASES = {"E8 K2 m1": dict(experts=8, top_k=2, granularity=1),
         "E8 K2 m4 shared1": dict(experts=8, top_k=2, granularity=4, shared=1)}


def modules(mlp: dict) -> tuple[MoEMLP, NaiveMoEMLP, GatedMLP, int]:
    """(MoE, its naive twin with the same weights, the dense SwiGLU of equal active width, that width)."""
    cfg = TransformerConfig(dim=DIM, ffn_dim=FFN, n_heads=4, slot_args={"mlp": mlp})
    device = resolve_device()
    torch.manual_seed(0)
    moe = MoEMLP(cfg).to(device).eval()
    naive = NaiveMoEMLP(cfg).to(device).eval()
    naive.load_state_dict(moe.state_dict())
    width = (moe.moe.k + moe.moe.shared) * moe.width
    dense = GatedMLP(TransformerConfig(dim=DIM, ffn_dim=width, n_heads=4)).to(device).eval()
    return moe, naive, dense, width


@torch.no_grad()
def tokens_per_s(module: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    with Timer() as t:
        for _ in range(reps):
            module(x)
    return reps * x.shape[0] * x.shape[1] / t.seconds


def case(label: str, mlp: dict, tokens: int, rounds: int, reps: int) -> ABCase:
    moe, naive, dense, width = modules(mlp)
    x = torch.randn(1, tokens, DIM, device=resolve_device())
    with torch.no_grad():
        assert (moe(x) - naive(x)).abs().max() < 1e-4  # the arms compute the same function

    def fields(runs: ABRuns) -> dict:
        p = layer_params(TransformerConfig(dim=DIM, ffn_dim=FFN, n_heads=4, slot_args={"mlp": mlp}))
        return {"naive_value": runs.value("naive"), "fast_over_naive": runs.value("moe") / runs.value("naive"),
                "tokens": tokens, "dense_width": width, "moe_active_params": p["active"],
                "moe_total_params": p["total"], "dense_params": 3 * DIM * width, **mlp}

    return ABCase(label, {"moe": lambda r: tokens_per_s(moe, x, reps), "dense": lambda r: tokens_per_s(dense, x, reps),
                          "naive": lambda r: tokens_per_s(naive, x, 1)}, rounds, fields=fields)


def run(quick: bool = False) -> dict:
    rounds, tokens, reps = (1, 32, 1) if quick else (5, 1024, 5)
    cases = ab_cases(lambda n: [case(label, mlp, tokens, rounds, reps) for label, mlp in CASES.items()])
    return bench_record("moe_dispatch", "MoE MLP, sorted dispatch", "dense SwiGLU of equal active parameters",
                        "MLP forward tokens/s (fp32, no grad, one batch of tokens)", cases, runs=rounds)


if __name__ == "__main__":
    for c in run()["cases"]:
        print(c["label"], round(c["a_value"]), round(c["b_value"]), round(c["ratio"], 3),
              round(c["fast_over_naive"], 1))
