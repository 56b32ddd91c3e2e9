"""Greedy decoding throughput: lmlab KV-cache loop (A) vs Hugging Face ``generate(do_sample=False)`` (B).

Same weights in both (``llama_from_transformer``), batch 1, a 16-token prompt and 128 new tokens. The metric
is new tokens per second including the prefill. The lean loop below is prefill, then one token at a time
through the preallocated ``KVCache`` under ``torch.inference_mode`` (the decoding family owns the shared
generation loop; this one is the baseline it must match). ``generate`` runs as shipped (it uses no_grad); for
transparency each case also records HF ``generate`` wrapped in ``torch.inference_mode``
(``b_inference_mode_value``). The embedding is drawn with std 1 so that the logits are far from ties and both
implementations must produce the same tokens, which is checked and recorded.
"""

from __future__ import annotations

import os

import torch

from lmlab.core.hf import llama_from_transformer
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.harness import ABCase, ABRuns, ab_cases

CFG = dict(vocab_size=4096, dim=256, n_layers=4, n_heads=4, max_seq_len=512)
PROMPT, NEW = 16, 128


@torch.inference_mode()
def greedy(model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation (B, max_new_tokens) of ``prompt`` (B, T) with the model's KV cache."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    cache = model.new_cache(batch=prompt.shape[0], max_len=prompt.shape[1] + max_new_tokens)
    logits = model(prompt, cache=cache)[:, -1]  # (B, V)
    out = torch.empty(prompt.shape[0], max_new_tokens, dtype=torch.long, device=prompt.device)
    for i in range(max_new_tokens):
        nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        out[:, i:i + 1] = nxt
        if i + 1 < max_new_tokens:  # the last token needs no forward pass
            logits = model(nxt, cache=cache)[:, -1]
    return out


def make_models(seed: int = 0) -> tuple[Transformer, torch.nn.Module]:
    torch.manual_seed(seed)
    a = Transformer(TransformerConfig(**CFG)).eval().to(resolve_device())
    with torch.no_grad():
        a.tok_emb.weight.normal_(0.0, 1.0)  # peaked logits: no near-ties between the two implementations
    return a, llama_from_transformer(a).eval()


@torch.no_grad()
def hf_greedy(model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    return out[:, prompt.shape[1]:]


def hf_greedy_inference_mode(model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int):
    with torch.inference_mode():
        return hf_greedy(model, prompt, max_new_tokens)


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    """(new tokens per second, the tokens) of one call."""
    with Timer() as t:
        out = fn(*args)
    return out.shape[1] / t.seconds, out


def run(quick: bool = False) -> dict:
    rounds, new = (2, 16) if quick else (11, NEW)
    prompt = torch.randint(0, CFG["vocab_size"], (1, PROMPT), generator=torch.Generator().manual_seed(0))
    a, b = make_models()
    prompt = prompt.to(a.device)

    def build(threads: int) -> list[ABCase]:
        load = {}

        def warmup() -> None:
            greedy(a, prompt, 4), hf_greedy(b, prompt, 4)
            load["1m"] = os.getloadavg()[0]

        def fields(runs: ABRuns) -> dict:
            ta, tb, tc = runs.outputs["a"], runs.outputs["b"], runs.outputs["b_inference_mode"]
            return {"loadavg_1m_at_start": load["1m"],
                    "tokens_identical": all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(ta, tb, tc)),
                    "b_inference_mode_value": runs.value("b_inference_mode"),
                    "b_inference_mode_runs": runs.values["b_inference_mode"],
                    "ratio_vs_b_inference_mode": runs.value("a") / runs.value("b_inference_mode"),
                    "new_tokens": new, "prompt_tokens": PROMPT, "params": a.num_params()}

        arms = {"a": lambda r: timed(greedy, a, prompt, new), "b": lambda r: timed(hf_greedy, b, prompt, new),
                "b_inference_mode": lambda r: timed(hf_greedy_inference_mode, b, prompt, new)}
        return [ABCase("", arms, rounds if threads == 1 else min(rounds, 3), warmup=warmup, fields=fields)]

    return bench_record("decode_throughput", "lmlab KVCache greedy loop", "HF generate(do_sample=False)",
                        "new tokens/s (batch 1, fp32, incl. prefill)", ab_cases(build), runs=rounds)


if __name__ == "__main__":
    rec = run()
    for c in rec["cases"]:
        print(c["label"], round(c["a_value"]), round(c["b_value"]), round(c["ratio"], 3),
              c["tokens_identical"])
