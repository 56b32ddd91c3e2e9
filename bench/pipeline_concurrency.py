"""Pipeline runner concurrency: records/s at concurrency 8 (A) vs 1 (B) against a real ``lmlab serve``.

One pipeline stage asks the served model to continue each record's text (greedy, 24 new tokens) through
``core.chat.OpenAIClient``; the runner (``pipelines.runner.run``) writes every output line, fsynced, with provenance.
The server runs the random Transformer of ``serve_overhead`` in process and generates one request at a time
(``serve.LocalClient`` holds a lock), so concurrency can only overlap HTTP, JSON and file work with generation: this
measures what the runner and the client gain from it on one CPU server. Against a batching server (vLLM) the gain
would come from batched generation instead. Outputs of both runs are checked identical.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lmlab.core.chat import ChatParams
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer
from lmlab.harness import ABCase, ABRuns, ab_cases

RECORDS, NEW = 24, 24


async def cont(record: dict, llm) -> dict:
    out = await llm.achat([{"role": "user", "content": record["text"]}], ChatParams(max_tokens=NEW))
    return {**record, "continuation": out.text}


def run(quick: bool = False) -> dict:
    from lmlab.core.chat import OpenAIClient
    from lmlab.harness import load_bench, repo_root
    from lmlab.pipelines.base import Pipeline
    from lmlab.pipelines.runner import run as run_pipeline
    from lmlab.serve import LocalClient, background

    rounds, n = (1, 4) if quick else (5, RECORDS)
    pipe = Pipeline("continue", [cont], prompt_version="bench")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = load_bench(repo_root(), "serve_overhead").write_model(tmp / "model")  # the same served model
        (tmp / "in.jsonl").write_text("".join(json.dumps({"id": i, "text": f"Record {i}: rivers and seas."}) + "\n"
                                              for i in range(n)))
        with background(LocalClient(spec)) as port:
            client = OpenAIClient(f"http://127.0.0.1:{port}/v1", spec)

            def at(concurrency: int):
                def arm(r: int) -> tuple[float, list[str]]:
                    out = tmp / f"out-{concurrency}.jsonl"  # a fresh output file each run (no resume)
                    with Timer() as t:
                        run_pipeline(pipe, tmp / "in.jsonl", out, client, concurrency=concurrency)
                    rows = sorted((json.loads(x) for x in out.read_text().splitlines()), key=lambda d: d["id"])
                    out.unlink()
                    return n / t.seconds, [d["continuation"] for d in rows]
                return arm

            def build(threads: int) -> list[ABCase]:
                def fields(runs: ABRuns) -> dict:
                    return {"records": n, "new_tokens": NEW, "loadavg_1m": os.getloadavg()[0],
                            "outputs_identical": all(o == runs.outputs["b"][0]
                                                     for o in runs.outputs["a"] + runs.outputs["b"])}

                return [ABCase("", {"a": at(8), "b": at(1)}, rounds if threads == 1 else min(rounds, 3),
                               fields=fields)]

            cases = ab_cases(build)
    return bench_record("pipeline_concurrency", "pipeline runner, concurrency 8", "pipeline runner, concurrency 1",
                        "records/s against lmlab serve (one-stage pipeline, 24 greedy tokens per record)", cases,
                        runs=rounds)

