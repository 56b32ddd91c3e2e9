"""KV-cache bytes of hybrid attention with cross-layer KV sharing (A) vs full attention (B) during generation.

Yi-Lightning's layout (report §2.3): 8 layers "SSSF" (3 sliding-window layers of W keys : 1 full layer), the two
full layers sharing one KV, against the same model with 8 full layers. Each arm prefills a prompt of S - 16 tokens
and greedily decodes 16 more with one cache of S positions (``Transformer.new_cache``), and reports the bytes that
cache holds (``KVCache.nbytes``); the decode speed of the same call is recorded next to it. The metric is bytes, so
the ratio A/B is the memory kept; ``planner_ratio`` is ``core.kv_cache.kv_bytes``'s prediction from the configs
alone, and ``planner_equals_measured`` says whether both arms' bytes equal the planner's exactly.
"""

from __future__ import annotations

import time

import torch

from lmlab.core.kv_cache import kv_bytes
from lmlab.core.results import bench_record
from lmlab.core.runtime import resolve_device
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.harness import ABCase, ABRuns, ab_cases

SHAPE = dict(vocab_size=512, dim=128, n_layers=8, n_heads=4, n_kv_heads=2)
NEW = 16


@torch.no_grad()
def generate(model: Transformer, S: int) -> tuple[int, float]:
    """(bytes of the cache of one greedy generation to S positions, decode tokens per second)."""
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, S - NEW), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(batch=1, max_len=S)
    nxt = model(prompt.to(model.device), cache=cache)[:, -1:].argmax(-1)  # (1, 1)
    t0 = time.perf_counter()
    for _ in range(NEW - 1):
        nxt = model(nxt, cache=cache)[:, -1:].argmax(-1)
    return cache.nbytes, (NEW - 1) / (time.perf_counter() - t0)


def case(S: int, W: int, rounds: int) -> ABCase:
    device = resolve_device()
    torch.manual_seed(0)
    cfgs = {"hybrid": TransformerConfig(**SHAPE, max_seq_len=S, layer_pattern="SSSF", window=W, kv_share=2),
            "full": TransformerConfig(**SHAPE, max_seq_len=S)}
    models = {k: Transformer(c).eval().to(device) for k, c in cfgs.items()}
    planned = {k: kv_bytes(c, S) for k, c in cfgs.items()}

    def fields(runs: ABRuns) -> dict:
        measured = {k: runs.value(k) for k in cfgs}
        speed = {k: sorted(o for o in runs.outputs[k])[len(runs.outputs[k]) // 2] for k in cfgs}
        return {"S": S, "W": W, "planner_ratio": planned["hybrid"] / planned["full"],
                "planner_equals_measured": all(measured[k] == planned[k] for k in cfgs),
                "hybrid_decode_tokens_per_s": speed["hybrid"], "full_decode_tokens_per_s": speed["full"],
                "decode_speed_ratio": speed["hybrid"] / speed["full"]}

    return ABCase(f"S={S} W={W}", {k: (lambda r, m=m: generate(m, S)) for k, m in models.items()}, rounds,
                  warmup=False, fields=fields)


def run(quick: bool = False) -> dict:
    settings, rounds = ([(256, 32)], 1) if quick else ([(1024, 128), (4096, 512), (8192, 1024)], 3)
    cases = ab_cases(lambda threads: (case(S, W, rounds) for S, W in settings))
    return bench_record("kv_memory", "hybrid SSSF + pairwise cross-layer KV (Yi-Lightning)", "full attention",
                        "KV cache bytes of one greedy generation", cases, runs=rounds)


if __name__ == "__main__":
    for c in run(quick=True)["cases"]:
        print(c["label"], c["ratio"], c["planner_ratio"], c["planner_equals_measured"], c["decode_speed_ratio"])
