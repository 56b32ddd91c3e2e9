"""The pipeline runner: outputs with provenance, failures to the errors file, a token ledger, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlab.core.chat import ChatParams, ChatResult, Completion, Usage, request_hash, run_sync
from lmlab.pipelines.base import Pipeline, prompt, prompts_version
from lmlab.pipelines.runner import run

SRC = Path(__file__).resolve().parents[2] / "src"


class Echo:
    """A deterministic LLM for the runner's tests: answers the upper-cased last user message."""

    model, capabilities = "echo", frozenset({"n", "seed"})

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay = [], delay

    async def achat(self, messages, params):
        import asyncio

        await asyncio.sleep(self.delay)
        text = messages[-1]["content"]
        self.calls.append(text)
        return ChatResult([Completion(text.upper(), "stop")], Usage(len(text), len(text)), self.model,
                          request_hash(self.model, messages, params))

    def chat(self, messages, **params):
        return run_sync(self, messages, **params)


async def shout(record, llm):
    out = await llm.achat([{"role": "user", "content": record["text"]}], ChatParams(max_tokens=16))
    return {**record, "loud": out.text}


async def parse_number(record, llm):
    if not record["loud"].strip().isdigit() and record["loud"].startswith("BAD"):
        raise ValueError(f"unparseable model output {record['loud']!r}")
    return record


PIPE = Pipeline("shout", [shout, parse_number], prompt_version="v1")


def write_input(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": i, "text": ("bad" if i == 3 else f"rec {i}")}) + "\n"
                            for i in range(n)))


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_outputs_errors_provenance_and_ledger(tmp_path):
    write_input(tmp_path / "in.jsonl", 6)
    llm = Echo()
    summary = run(PIPE, tmp_path / "in.jsonl", tmp_path / "out.jsonl", llm, concurrency=3)
    out = lines(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in out) == [0, 1, 2, 4, 5]
    r0 = next(r for r in out if r["id"] == 0)
    assert r0["loud"] == "REC 0" and r0["_provenance"]["pipeline"] == "shout"
    assert r0["_provenance"]["requests"] == [request_hash("echo", [{"role": "user", "content": "rec 0"}],
                                                          ChatParams(max_tokens=16))]
    (err,) = lines(tmp_path / "out.errors.jsonl")
    assert err["id"] == 3 and err["stage"] == "parse_number" and "unparseable" in err["error"]
    assert (summary.written, summary.failed, summary.ledger.requests) == (5, 1, 6)
    assert summary.ledger.prompt_tokens == sum(len(t) for t in llm.calls)
    assert json.loads((tmp_path / "out.summary.json").read_text())["written"] == 5


def test_a_rerun_skips_finished_records_cuts_a_torn_line_and_retries_failures(tmp_path):
    write_input(tmp_path / "in.jsonl", 5)
    run(PIPE, tmp_path / "in.jsonl", tmp_path / "out.jsonl", Echo())
    with open(tmp_path / "out.jsonl", "a") as f:
        f.write('{"id": 99, "lo')  # a write cut by a kill
    llm = Echo()
    summary = run(PIPE, tmp_path / "in.jsonl", tmp_path / "out.jsonl", llm)
    assert llm.calls == ["bad"] and summary.skipped_done == 4  # only the failed record is tried again
    assert sorted(r["id"] for r in lines(tmp_path / "out.jsonl")) == [0, 1, 2, 4]
    assert len(lines(tmp_path / "out.errors.jsonl")) == 1  # the retry failed again: one line, not two


def test_sigkill_then_rerun_finishes_without_duplicates_or_repeats(tmp_path):
    write_input(tmp_path / "in.jsonl", 12)
    script = f"""
import sys, json
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_runner import PIPE, Echo
from lmlab.pipelines.runner import run
run(PIPE, {str(tmp_path / 'in.jsonl')!r}, {str(tmp_path / 'out.jsonl')!r}, Echo(delay=0.2), concurrency=1)
"""
    env = {**os.environ, "PYTHONPATH": str(SRC), "LMLAB_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = tmp_path / "out.jsonl"
        if out.exists() and len(out.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    whole = [x for x in (tmp_path / "out.jsonl").read_text().split("\n")[:-1]]  # a torn last part is not a line
    first = {json.loads(x)["id"] for x in whole if x.strip()}
    assert 3 <= len(first) < 11  # killed part way
    llm = Echo()
    run(PIPE, tmp_path / "in.jsonl", tmp_path / "out.jsonl", llm)
    ids = [r["id"] for r in lines(tmp_path / "out.jsonl")]
    assert sorted(ids) == [i for i in range(12) if i != 3] and len(ids) == len(set(ids))
    assert not {int(t.split()[1]) for t in llm.calls if t != "bad"} & first  # no finished record asked again


def test_prompts_are_templates(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "ask.txt").write_text("Q: $question\nA:")
    assert prompt("demo/ask", root=tmp_path, question="why?") == "Q: why?\nA:"
    with pytest.raises(ValueError, match=r"\$question"):
        prompt("demo/ask", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="demo/ask"):
        prompt("demo/nope", root=tmp_path)
    v1 = prompts_version("demo", root=tmp_path)
    (tmp_path / "demo" / "ask.txt").write_text("Question: $question\nA:")
    assert prompts_version("demo", root=tmp_path) != v1 and len(v1) == 12


def test_bad_input_names_the_line(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "a"}\n{"text": "no id"}\n')
    with pytest.raises(ValueError, match=r"in.jsonl:2: expected a JSON object with an 'id' field"):
        run(PIPE, tmp_path / "in.jsonl", tmp_path / "out.jsonl", Echo())


def test_lmlab_pipeline_verb_runs_a_registered_pipeline(tmp_path, capsys, monkeypatch):
    """The verb end to end on a pipeline registered for the test (the registry is a plain table), with the
    response cache recording every answer and a replay run asking nothing."""
    import lmlab.pipelines as fam
    from lmlab.cli.main import main
    from lmlab.core.registry import Entry

    monkeypatch.setitem(fam.REGISTRY._entries, "shout", Entry(f"{__name__}:Shout", paper="test",
                                                              summary="upper-cases a text"))
    write_input(tmp_path / "in.jsonl", 4)
    cache = tmp_path / "cache.sqlite"
    monkeypatch.setenv("LMLAB_LLM_MODEL", "echo")
    assert main(["pipeline", "shout", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "a.jsonl"),
                 "--llm", "local:unused", "--cache", str(cache)]) == 2  # local: needs a real model spec
    assert "neither an lmlab folder" in capsys.readouterr().err
    monkeypatch.setattr("lmlab.serve.LocalClient", lambda spec: Echo())
    assert main(["pipeline", "shout", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "a.jsonl"),
                 "--llm", "local:echo", "--cache", str(cache)]) == 0
    assert "3 written, 1 failed" in capsys.readouterr().out
    assert main(["pipeline", "shout", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "b.jsonl"),
                 "--llm", f"replay:{cache}"]) == 0
    out = capsys.readouterr().out
    assert "4 requests (4 cached)" in out
    assert [r["loud"] for r in lines(tmp_path / "b.jsonl")] == [r["loud"] for r in lines(tmp_path / "a.jsonl")]


class Shout:
    """A registered method's shape: built from its config (none here), ``pipeline()`` gives what the runner runs."""

    def pipeline(self) -> Pipeline:
        return PIPE
