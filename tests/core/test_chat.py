"""core.chat: parameters, message checks, the request hash, ScriptedClient, CachedClient, OpenAIClient (over a
scripted HTTP transport of the real ``openai`` package) and make_client."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import json
import logging
import sqlite3
import subprocess
import sys

import pytest

from lmlab.core.chat import (
    CachedClient,
    ChatParams,
    ChatRequestError,
    ChatResult,
    Completion,
    OpenAIClient,
    ScriptedClient,
    TokenLogprob,
    Usage,
    check_messages,
    make_client,
    request_hash,
    result_from_json,
    result_to_json,
)

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]


def test_request_hash_is_stable_and_sensitive_to_every_part():
    h = request_hash("m", MSGS, ChatParams(seed=1))
    assert h == request_hash("m", [dict(m) for m in MSGS], ChatParams(seed=1)) and len(h) == 64
    others = {request_hash("m2", MSGS, ChatParams(seed=1)), request_hash("m", MSGS[1:], ChatParams(seed=1)),
              request_hash("m", MSGS, ChatParams(seed=2)), request_hash("m", MSGS, ChatParams(seed=1, n=2))}
    assert h not in others and len(others) == 4


@pytest.mark.parametrize("bad, needle", [(dict(n=0), "n must"), (dict(temperature=-1), "temperature"),
                                         (dict(top_p=0), "top_p"), (dict(max_tokens=0), "max_tokens"),
                                         (dict(logprobs=-1), "logprobs")])
def test_bad_params_name_the_field(bad, needle):
    with pytest.raises(ValueError, match=needle):
        ChatParams(**bad)


def test_bad_messages_name_the_message():
    assert check_messages(MSGS) is MSGS
    for bad in ([], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}]):
        with pytest.raises(ValueError, match="messages"):
            check_messages(bad)


def test_chat_imports_no_torch():
    code = "import sys, lmlab.core.chat; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


# ----------------------------------------------------------------------------------------------- ScriptedClient


def test_scripted_rules_replies_and_records():
    counter = iter(range(100))
    client = ScriptedClient([
        (r"river", "Nile"),
        (r"count", lambda msgs: f"n{next(counter)}"),
        lambda msgs: Completion("tool!", "tool_calls") if "weather" in msgs[-1]["content"] else None,
    ])
    assert client.capabilities == {"n", "logprobs", "json_schema", "tools", "seed"}
    r = client.chat(ask("Name a river."))
    assert (r.text, r.completions[0].finish_reason, r.model) == ("Nile", "stop", "scripted")
    assert r.request_hash == request_hash("scripted", ask("Name a river."), ChatParams())
    assert r.usage == Usage(prompt_tokens=5, completion_tokens=1)
    many = client.chat(ask("count please"), n=3, seed=4)
    assert [c.text for c in many.completions] == ["n0", "n1", "n2"]  # n honoured, callable called per completion
    assert client.chat(ask("weather in Rome")).completions[0].finish_reason == "tool_calls"
    assert client.calls == 3 and [p.n for _, p in client.requests] == [1, 3, 1]
    assert client.requests[1] == (ask("count please"), ChatParams(n=3, seed=4))


def test_scripted_records_a_copy_and_rejects_unknown_requests_and_bad_rules():
    client = ScriptedClient([("^yes$", "ok")])
    msgs = ask("yes")
    client.chat(msgs)
    msgs[1]["content"] = "changed later"
    assert client.requests[0][0][1]["content"] == "yes"
    with pytest.raises(LookupError, match="'something else'"):
        client.chat(ask("something else"))
    assert client.calls == 2
    with pytest.raises(TypeError, match=r"rules\[1\]"):
        ScriptedClient([("a", "b"), 42])
    with pytest.raises(TypeError, match="scripted reply"):
        ScriptedClient([("x", 3.5)]).chat(ask("x"))


def test_result_json_round_trip_keeps_logprobs_and_tool_calls():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}
    r = ChatResult([Completion("hé", "stop", [TokenLogprob("h", -0.25, [("h", -0.25), ("x", -2.0)])], [call])],
                   Usage(3, 1), "m", "abc")
    back = result_from_json(result_to_json(r))
    assert back == r and back.completions[0].logprobs[0].top[1] == ("x", -2.0)
    assert result_to_json(back) == result_to_json(r)


# ----------------------------------------------------------------------------------------------- CachedClient


class SlowClient:
    """Delegates to a ScriptedClient after yielding to the event loop (so concurrent requests overlap)."""

    def __init__(self, inner: ScriptedClient) -> None:
        self.inner, self.model, self.capabilities = inner, inner.model, inner.capabilities

    async def achat(self, messages, params):
        await asyncio.sleep(0.02)
        return await self.inner.achat(messages, params)


def test_cache_second_run_makes_no_call_and_is_byte_identical(tmp_path):
    lp = [TokenLogprob("Nile", -0.5, [("Nile", -0.5)])]
    inner = ScriptedClient([("river", lambda m: Completion("Nile", "stop", lp))])
    path = tmp_path / "sub" / "cache.sqlite"
    with CachedClient(inner, path) as cache:
        first = cache.chat(ask("A river?"), n=2, logprobs=1)
        assert inner.calls == 1 and not first.cached and cache.misses == 1
        again = cache.chat(ask("A river?"), n=2, logprobs=1)
        assert inner.calls == 1 and again.cached and cache.hits == 1
        assert result_to_json(again) == result_to_json(first)
        assert again.request_hash == request_hash("scripted", ask("A river?"), ChatParams(n=2, logprobs=1))
        cache.chat(ask("A river?"), n=1)  # other params: another key
        assert inner.calls == 2
    with CachedClient(inner, path) as reopened:  # a later run over the same file
        assert result_to_json(reopened.chat(ask("A river?"), n=2, logprobs=1)) == result_to_json(first)
        assert inner.calls == 2
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = db.execute("SELECT request FROM responses WHERE key = ?", (first.request_hash,)).fetchone()
    stored = json.loads(row[0])
    assert stored["messages"] == ask("A river?") and stored["params"]["n"] == 2


def break_checksum(db):
    db.execute("UPDATE responses SET response = replace(response, 'Nile', 'Nilo')")


def break_json(db):  # a checksum that matches a body that is not a result: only decoding can tell
    db.execute("UPDATE responses SET response = '{broken', checksum = ?", (hashlib.sha256(b"{broken").hexdigest(),))


@pytest.mark.parametrize("corrupt", [break_checksum, break_json])
def test_cache_corrupt_row_is_logged_deleted_and_requested_again(tmp_path, corrupt, caplog):
    inner = ScriptedClient([("river", "Nile")])
    path = tmp_path / "c.sqlite"
    with CachedClient(inner, path) as cache:
        first = cache.chat(ask("A river?"))
    with sqlite3.connect(path) as db:
        corrupt(db)
    with CachedClient(inner, path) as cache, caplog.at_level(logging.WARNING, logger="lmlab.core.chat"):
        again = cache.chat(ask("A river?"))
        assert inner.calls == 2 and not again.cached and again.text == "Nile"
        assert first.request_hash in caplog.text and "corrupt" in caplog.text
        assert cache.chat(ask("A river?")).cached and inner.calls == 2  # the fresh row serves again
    with sqlite3.connect(path) as db:
        corrupt(db)
    replay = CachedClient(None, path, replay_only=True)
    with pytest.raises(LookupError, match=f"{first.request_hash} is corrupt"):
        replay.chat(ask("A river?"))


def test_replay_only_serves_recorded_and_names_the_missing_hash(tmp_path, monkeypatch):
    monkeypatch.delenv("LMLAB_LLM_MODEL", raising=False)
    path = tmp_path / "rec.sqlite"
    with CachedClient(ScriptedClient([("river", "Nile")], model="m1"), path) as rec:
        recorded = rec.chat(ask("A river?"))
    replay = make_client(f"replay:{path}")
    assert replay.model == "m1"  # the one model the file holds
    assert result_to_json(replay.chat(ask("A river?"))) == result_to_json(recorded)
    missing = request_hash("m1", ask("A lake?"), ChatParams())
    with pytest.raises(LookupError, match=missing):
        replay.chat(ask("A lake?"))
    with pytest.raises(FileNotFoundError, match="nope.sqlite"):
        make_client(f"replay:{tmp_path / 'nope.sqlite'}")
    with pytest.raises(ValueError, match="needs an inner client"):
        CachedClient(None, path)


def test_concurrent_same_key_requests_call_the_model_once(tmp_path):
    inner = ScriptedClient([("river", "Nile"), ("lake", "Baikal")])
    cache = CachedClient(SlowClient(inner), tmp_path / "c.sqlite")

    async def many():
        same = [cache.achat(ask("A river?"), ChatParams()) for _ in range(5)]
        return await asyncio.gather(*same, cache.achat(ask("A lake?"), ChatParams()))

    results = asyncio.run(many())
    assert inner.calls == 2 and cache.misses == 2
    assert len({result_to_json(r) for r in results[:5]}) == 1 and results[5].text == "Baikal"
    assert [r.cached for r in results[:5]].count(False) == 1


def test_inner_errors_are_not_cached(tmp_path):
    inner = ScriptedClient([("river", "Nile")])
    with CachedClient(inner, tmp_path / "c.sqlite") as cache:
        for _ in range(2):
            with pytest.raises(LookupError, match="no rule"):
                cache.chat(ask("A lake?"))
        assert inner.calls == 2 and cache.misses == 0


# ----------------------------------------------------------------------------------------------- OpenAIClient

HAVE_OPENAI = importlib.util.find_spec("openai") is not None
needs_openai = pytest.mark.skipif(not HAVE_OPENAI, reason="needs the llm extra (openai)")
# the HTTP library under the installed openai package (httpx, or its successor httpx2)
httpx = importlib.import_module("httpx2" if importlib.util.find_spec("httpx2") else "httpx") if HAVE_OPENAI else None


def completion_body(texts, usage=(3, 2), logprobs=None, tool_calls=None):
    choices = [{"index": i, "finish_reason": "stop", "logprobs": logprobs,
                "message": {"role": "assistant", "content": t, "tool_calls": tool_calls}} for i, t in enumerate(texts)]
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": choices,
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}


class Server:
    """Scripted HTTP answers, in order (the last one repeats); records each request's headers and JSON body."""

    def __init__(self, *answers):
        self.answers, self.requests = list(answers), []

    def __call__(self, request):
        self.requests.append((request.headers, json.loads(request.content)))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        return httpx.Response(status, json=body)

    def client(self, **kw):
        kw.setdefault("backoff_s", 0.0)
        transport = httpx.MockTransport(self)
        return OpenAIClient("http://llm.test/v1", "m", http_client=httpx.AsyncClient(transport=transport), **kw)


@needs_openai
@pytest.mark.parametrize("status", [500, 503, 429])
def test_openai_retries_transient_errors_then_succeeds(status):
    server = Server((status, {"error": {"message": "busy"}}), completion_body(["hello"]))
    r = server.client(max_retries=2).chat(ask("hi"), temperature=0.5, stop=["\n"])
    assert r.text == "hello" and len(server.requests) == 2 and r.model == "m"
    body = server.requests[-1][1]
    assert body["messages"] == ask("hi") and body["stop"] == ["\n"] and body["temperature"] == 0.5
    assert "n" not in body and "seed" not in body and "logprobs" not in body


@needs_openai
def test_openai_does_not_retry_a_refusal():
    server = Server((400, {"error": {"message": "bad schema"}}))
    with pytest.raises(ChatRequestError, match="refused.*bad schema"):
        server.client(max_retries=3).chat(ask("hi"))
    assert len(server.requests) == 1


@needs_openai
def test_openai_timeout_fails_after_max_retries():
    server = Server(httpx.ReadTimeout("slow"))
    with pytest.raises(ChatRequestError, match="after 3 attempts.*APITimeoutError"):
        server.client(max_retries=2, timeout=0.5).chat(ask("hi"))
    assert len(server.requests) == 3


@needs_openai
def test_openai_emulates_n_with_seeds_when_the_server_returns_one_choice():
    server = Server(completion_body(["a"]), completion_body(["b"]), completion_body(["c"]))
    client = server.client()
    r = client.chat(ask("hi"), n=3, seed=7, temperature=1.0)
    assert [c.text for c in r.completions] == ["a", "b", "c"] and r.usage == Usage(9, 6)
    assert [(b.get("n"), b.get("seed")) for _, b in server.requests] == [(3, 7), (None, 8), (None, 9)]
    assert "n" not in client.capabilities  # learned: later calls emulate from the start
    client.chat(ask("hi"), n=2, seed=1)
    assert [(b.get("n"), b.get("seed")) for _, b in server.requests[3:]] == [(None, 1), (None, 2)]


@needs_openai
def test_openai_native_n_is_one_request_and_declared_capabilities_are_honoured():
    server = Server(completion_body(["a", "b"]))
    assert [c.text for c in server.client().chat(ask("hi"), n=2).completions] == ["a", "b"]
    assert len(server.requests) == 1 and server.requests[0][1]["n"] == 2
    single = Server(completion_body(["x"]))
    single.client(capabilities={"logprobs"}).chat(ask("hi"), n=2, seed=3)
    assert [(b.get("n"), b.get("seed")) for _, b in single.requests] == [(None, 3), (None, 4)]
    with pytest.raises(ValueError, match="unknown"):
        single.client(capabilities={"telepathy"})


@needs_openai
def test_openai_maps_logprobs_usage_tool_calls_and_passes_response_format():
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": None,
                       "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": None},
                                        {"token": "Yo", "logprob": -2.5, "bytes": None}]}]}
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}
    server = Server(completion_body(["Hi"], usage=(11, 1), logprobs=lp, tool_calls=[call]))
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    r = server.client().chat(ask("hi"), logprobs=2, response_format=fmt, tools=(tool,), max_tokens=9)
    c = r.completions[0]
    assert c.logprobs == [TokenLogprob("Hi", -0.1, [("Hi", -0.1), ("Yo", -2.5)])]
    assert c.tool_calls == [call] and r.usage == Usage(11, 1) and r.usage.total_tokens == 12
    body = server.requests[0][1]
    assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["max_tokens"] == 9
    assert body["response_format"] == fmt and body["tools"] == [tool]


@needs_openai
def test_openai_api_key_comes_from_the_named_env_var(monkeypatch):
    monkeypatch.setenv("LMLAB_TEST_KEY", "sk-secret")
    server = Server(completion_body(["ok"]))
    client = server.client(api_key_env="LMLAB_TEST_KEY")
    client.chat(ask("hi"))
    client.chat(ask("hi again"))  # a second event loop reuses the client
    assert server.requests[0][0]["authorization"] == "Bearer sk-secret" and "sk-secret" not in repr(client)
    server.client().chat(ask("hi"))
    assert server.requests[-1][0]["authorization"] == "Bearer EMPTY"
    monkeypatch.delenv("LMLAB_TEST_KEY")
    with pytest.raises(ValueError, match="LMLAB_TEST_KEY"):
        server.client(api_key_env="LMLAB_TEST_KEY")


@needs_openai
def test_openai_bad_arguments_name_the_value():
    for kw, needle in [(dict(max_retries=-1), "max_retries"), (dict(concurrency=0), "concurrency"),
                       (dict(timeout=0), "timeout")]:
        with pytest.raises(ValueError, match=needle):
            OpenAIClient("http://x/v1", "m", **kw)
    with pytest.raises(ValueError, match="ftp://x"):
        OpenAIClient("ftp://x", "m")


@needs_openai
def test_openai_concurrency_is_bounded():
    active, peak = [0], [0]

    async def handler(request):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.01)
        active[0] -= 1
        return httpx.Response(200, json=completion_body(["x"]))

    client = OpenAIClient("http://llm.test/v1", "m", concurrency=2,
                          http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))

    async def many():
        return await asyncio.gather(*(client.achat(ask(f"q{i}"), ChatParams()) for i in range(6)))

    assert len(asyncio.run(many())) == 6 and peak[0] == 2


# ----------------------------------------------------------------------------------------------- make_client


@needs_openai
def test_make_client_http_forms(monkeypatch, tmp_path):
    monkeypatch.delenv("LMLAB_LLM_MODEL", raising=False)
    c = make_client("http://localhost:8000/v1?model=qwen")
    assert isinstance(c, OpenAIClient) and (c.base_url, c.model) == ("http://localhost:8000/v1", "qwen")
    with pytest.raises(ValueError, match="LMLAB_LLM_MODEL"):
        make_client("https://api.example/v1")
    monkeypatch.setenv("LMLAB_LLM_MODEL", "env-model")
    assert make_client("https://api.example/v1").model == "env-model"
    with pytest.raises(ValueError, match="temperature"):
        make_client("http://h/v1?model=a&temperature=1")
    cached = make_client("http://h/v1?model=a", cache=tmp_path / "c.sqlite")
    assert isinstance(cached, CachedClient) and cached.model == "a"
    for bad in ("ftp://x", "qwen", "replay:"):
        with pytest.raises(ValueError, match="--llm"):
            make_client(bad)
