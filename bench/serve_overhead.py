"""Serving overhead: tokens/s through ``lmlab serve`` + the ``openai`` client (A) vs the same generation in process
(B, ``serve.LocalClient``).

Same model, decoder and requests on both sides: a random Transformer of the decode_throughput shape with a byte
tokenizer, saved as a run folder and loaded through ``lmlab.load``, greedy, 64 new tokens per request (eos off by
construction: the request asks for exactly max_tokens and the count comes from the server's usage). A is the full
path a pipeline pays: HTTP on loopback, JSON, the FastAPI app; B calls ``LocalClient.chat`` directly. The ratio
A/B is the share of in-process throughput the server keeps (the issue's target: >= 0.9). Outputs are checked
equal and recorded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from lmlab.core.checkpoint import save_model
from lmlab.core.config import to_dict
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.harness import ABCase, ABRuns, ab_cases

CFG = dict(vocab_size=259, dim=256, n_layers=4, n_heads=4, max_seq_len=512)
NEW = 64
MESSAGES = [{"role": "user", "content": "Write about rivers and the sea."}]


def write_model(folder: Path) -> str:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**CFG))
    with torch.no_grad():
        model.tok_emb.weight.normal_(0.0, 1.0)  # peaked logits: greedy continuations far from ties
    save_model(folder / "model", model, to_dict(model.cfg))
    ByteTokenizer(["<bos>", "<eos>", "<pad>"]).save(folder / "model" / "tokenizer.json")
    return str(folder)


def run(quick: bool = False) -> dict:
    import openai

    from lmlab.serve import LocalClient, background

    rounds, new = (2, 8) if quick else (9, NEW)
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_model(Path(tmp))
        local = LocalClient(spec)
        with background(local) as port:
            remote = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)

            def served(r: int) -> tuple[float, str]:
                with Timer() as t:
                    out = remote.chat.completions.create(model=spec, messages=MESSAGES, max_tokens=new,
                                                         temperature=0)
                return out.usage.completion_tokens / t.seconds, out.choices[0].message.content

            def in_process(r: int) -> tuple[float, str]:
                with Timer() as t:
                    out = local.chat(MESSAGES, max_tokens=new, temperature=0)
                return out.usage.completion_tokens / t.seconds, out.text

            def build(threads: int) -> list[ABCase]:
                def fields(runs: ABRuns) -> dict:
                    return {"loadavg_1m": os.getloadavg()[0], "new_tokens": new,
                            "texts_identical": len(set(runs.outputs["a"] + runs.outputs["b"])) == 1}

                return [ABCase("", {"a": served, "b": in_process}, rounds if threads == 1 else min(rounds, 3),
                               fields=fields)]

            cases = ab_cases(build)
    return bench_record("serve_overhead", "lmlab serve + openai client (loopback HTTP)", "LocalClient in process",
                        "completion tokens/s (greedy, batch 1, fp32)", cases, runs=rounds)


if __name__ == "__main__":
    rec = run()
    for c in rec["cases"]:
        print(c["label"], round(c["a_value"], 1), round(c["b_value"], 1), round(c["ratio"], 3), c["texts_identical"])
