"""DAPE v2 attention forward (A) vs the core SDPA attention (B): time and peak memory against the sequence length.

A is ``models.dape.DAPEAttention`` with its defaults (Kerple bias, kernel 1 x 3, conv width 32): it builds the full
(B, H, T, T) logits, the 2H-channel feature map [A; Bias], a 32-channel hidden map and the H-channel correction,
then a masked softmax. B is the core ``Attention`` (``F.scaled_dot_product_attention`` with its fused causal path),
NoPE for both, the same projections. Model width 256, 8 heads of 32, batch 1, fp32, no grad, one attention layer.

Metric: attention forward calls per second, so ``ratio`` = A / B is DAPE's speed as a fraction of SDPA's (below 1:
DAPE is slower). Peak memory: the forward runs once more under ``torch.profiler`` with ``profile_memory=True``; every
allocation (an op's self allocated bytes, at the op's start) and every free (the profiler's ``[memory]`` events) is
put on one timeline and the peak of the running sum is the forward's peak of bytes allocated beyond its inputs and
weights (CPU allocator events, so it is a measurement, not a count of tensor shapes). ``memory_ratio`` = B's peak over
A's (below 1: DAPE needs more), ``dape_peak_mib`` / ``sdpa_peak_mib`` the values; ``n2_mib`` is the size of one
(B, H, T, T) fp32 tensor for scale. Cases: T = 128, 256, 512, 1024 at 1 and 2 threads.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from lmlab.core.blocks import Attention, Context, NoPE
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.core.transformer import TransformerConfig
from lmlab.harness import ABCase, ab_cases
from lmlab.models.dape import DAPEAttention

DIM, HEADS = 256, 8
MIB = 2 ** 20


def modules() -> tuple[DAPEAttention, Attention]:
    """DAPE v2 (Kerple, 1 x 3, width 32) and SDPA attention with the same q/k/v/o weights."""
    cfg = TransformerConfig(dim=DIM, n_heads=HEADS, n_layers=1, max_seq_len=4096, pos="nope", attn="dape")
    torch.manual_seed(0)
    dape = DAPEAttention(cfg, 0).to(resolve_device()).eval()
    sdpa = Attention(cfg, 0).to(resolve_device()).eval()
    keep = sdpa.state_dict()
    sdpa.load_state_dict({k: v for k, v in dape.state_dict().items() if k in keep})
    return dape, sdpa


def context(T: int) -> Context:
    return Context(torch.arange(T, device=resolve_device()), NoPE(DIM // HEADS, T))


@torch.no_grad()
def calls_per_s(module: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    with Timer() as t:
        for _ in range(reps):
            module(x, context(x.shape[1]))
    return reps / t.seconds


@torch.no_grad()
def peak_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak of the running sum of allocated minus freed bytes during one forward (torch.profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        module(x, context(x.shape[1]))
    timeline = []
    for e in prof.events():
        usage = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if usage:
            timeline.append((e.time_range.start, usage))
    live = top = 0
    for _, usage in sorted(timeline):
        live += usage
        top = max(top, live)
    return top


def case(T: int, rounds: int, reps: int) -> ABCase:
    dape, sdpa = modules()
    x = torch.randn(1, T, DIM, device=resolve_device())

    def fields(runs) -> dict:
        a, b = peak_bytes(dape, x), peak_bytes(sdpa, x)
        return {"T": T, "dape_peak_mib": a / MIB, "sdpa_peak_mib": b / MIB, "memory_ratio": b / a,
                "n2_mib": HEADS * T * T * 4 / MIB, "dim": DIM, "heads": HEADS, "batch": 1}

    return ABCase(f"T={T}", {"dape": lambda r: calls_per_s(dape, x, reps),
                             "sdpa": lambda r: calls_per_s(sdpa, x, reps)}, rounds, fields=fields)


def run(quick: bool = False) -> dict:
    lengths, rounds = ((32, 64), 1) if quick else ((128, 256, 512, 1024), 3)
    cases = ab_cases(lambda n: [case(T, rounds, 1 if T >= 512 else 3) for T in lengths])
    return bench_record("dape_attention_cost", "DAPE v2 attention (Kerple, 1x3, width 32)", "SDPA attention",
                        "attention forward calls/s (fp32, no grad, batch 1, 8 heads x 32)", cases, runs=rounds)


if __name__ == "__main__":
    for c in run()["cases"]:
        print(c["label"], round(c["ratio"], 4), round(c["memory_ratio"], 4), round(c["dape_peak_mib"], 1),
              round(c["sdpa_peak_mib"], 1))
