"""The one pipeline runner: stages over JSONL records against a ``ChatClient``, resumable by record id.

A pipeline (``base.Pipeline``) turns one input record into one output record with async stages that call the
LLM. ``run(pipeline, in_path, out_path, llm)``:

- resumes by record id: records whose id is already in ``out_path`` are skipped; a torn last line (a kill mid
  write) is cut off first. Every output line is written whole, flushed and fsynced under one lock, so a SIGKILL
  leaves at most one torn line and a re-run repeats no finished record (with a ``CachedClient``, not even its
  requests);
- never stops on one record: a stage error (unparseable model output, a timeout) goes to
  ``<out>.errors.jsonl`` as ``{"id", "stage", "error"}`` and the record is retried on the next run;
- adds provenance to each output record (``_provenance``: pipeline, prompt version, model, the request hashes
  of its LLM calls) and keeps a token ledger (requests, cached requests, prompt / completion tokens) that
  ``<out>.summary.json`` records with the counts;
- runs up to ``concurrency`` records at once, with a progress line or bar on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmlab.core.chat import ChatClient, ChatParams, ChatResult, Messages
from lmlab.core.results import now
from lmlab.core.runtime import atomic_write, progress

from .base import Pipeline


@dataclass
class Ledger:
    """Token and request counts of a run."""

    requests: int = 0
    cached: int = 0  # requests served by a response cache (no model call)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, result: ChatResult) -> None:
        self.requests += 1
        self.cached += int(result.cached)
        self.prompt_tokens += result.usage.prompt_tokens
        self.completion_tokens += result.usage.completion_tokens


class RecordingClient:
    """A ChatClient view that notes the request hashes of one record and feeds the run's ledger."""

    def __init__(self, inner: ChatClient, ledger: Ledger):
        self.inner, self.ledger, self.hashes = inner, ledger, []
        self.model, self.capabilities = inner.model, inner.capabilities

    async def achat(self, messages: Messages, params: ChatParams) -> ChatResult:
        result = await self.inner.achat(messages, params)
        self.hashes.append(result.request_hash)
        self.ledger.add(result)
        return result

    def chat(self, messages: Messages, **params: Any) -> ChatResult:
        raise TypeError("pipeline stages are async: use `await llm.achat(messages, ChatParams(...))`")


@dataclass
class Summary:
    pipeline: str
    prompt_version: str
    model: str
    records_in: int = 0
    skipped_done: int = 0  # already in the output (resumed)
    written: int = 0
    failed: int = 0
    ledger: Ledger = field(default_factory=Ledger)
    date: str = ""


def read_records(path: Path, id_key: str) -> list[dict[str, Any]]:
    """Input records; each must be a JSON object with a unique ``id_key`` (errors name the line)."""
    out, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or id_key not in rec:
                raise ValueError(f"{path}:{i}: expected a JSON object with an {id_key!r} field")
            if rec[id_key] in seen:
                raise ValueError(f"{path}:{i}: duplicate {id_key} {rec[id_key]!r}")
            seen.add(rec[id_key])
            out.append(rec)
    return out


def done_ids(path: Path, id_key: str) -> set:
    """Ids already written to ``path``; a torn last line is cut off (the file ends after the last newline)."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
    return {json.loads(line)[id_key] for line in data[:cut].decode("utf-8").splitlines() if line.strip()}


class LineWriter:
    """Appends whole JSON lines (flushed and fsynced) from concurrent tasks."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")
        self.lock = asyncio.Lock()

    async def write(self, record: dict[str, Any]) -> None:
        async with self.lock:
            self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


async def _run(pipeline: Pipeline, records: list[dict], out: LineWriter, errors: LineWriter, llm: ChatClient,
               summary: Summary, concurrency: int, id_key: str) -> None:
    sem = asyncio.Semaphore(concurrency)
    bar = progress(total=len(records), desc=pipeline.name)

    async def one(rec: dict) -> None:
        async with sem:
            client = RecordingClient(llm, summary.ledger)
            stage = "?"
            try:
                result = dict(rec)
                for stage_fn in pipeline.stages:
                    stage = getattr(stage_fn, "__name__", type(stage_fn).__name__)
                    result = await stage_fn(result, client)
            except Exception as e:  # noqa: BLE001 - any stage failure is recorded, never stops the run
                await errors.write({id_key: rec[id_key], "stage": stage, "error": f"{type(e).__name__}: {e}"})
                summary.failed += 1
            else:
                result["_provenance"] = {"pipeline": pipeline.name, "prompt_version": pipeline.prompt_version,
                                         "model": llm.model, "requests": client.hashes}
                await out.write(result)
                summary.written += 1
            bar.update(1)

    await asyncio.gather(*(one(r) for r in records))
    bar.close()


def run(pipeline: Pipeline, in_path: str | Path, out_path: str | Path, llm: ChatClient, *, concurrency: int = 4,
        id_key: str = "id") -> Summary:
    """Run ``pipeline`` over the records of ``in_path`` into ``out_path`` (module docstring); the summary."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    in_path, out_path = Path(in_path), Path(out_path)
    err_path = out_path.with_name(out_path.stem + ".errors.jsonl")
    records = read_records(in_path, id_key)
    done = done_ids(out_path, id_key)
    todo = [r for r in records if r[id_key] not in done]
    if err_path.exists():  # earlier failures are retried: their lines go
        retry = {r[id_key] for r in todo}
        kept = [line for line in err_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get(id_key) not in retry]
        atomic_write(err_path, "".join(line + "\n" for line in kept))
    summary = Summary(pipeline.name, pipeline.prompt_version, llm.model, len(records), len(records) - len(todo),
                      date=now())
    out, errors = LineWriter(out_path), LineWriter(err_path)
    try:
        asyncio.run(_run(pipeline, todo, out, errors, llm, summary, concurrency, id_key))
    finally:
        out.close()
        errors.close()
    atomic_write(out_path.with_name(out_path.stem + ".summary.json"), json.dumps(asdict(summary), indent=2))
    return summary
