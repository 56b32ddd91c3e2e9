"""``lmlab serve`` end to end: a real uvicorn server on a free loopback port, reached by the real ``openai`` client.

The model is a tiny random lmlab Transformer with a ByteTokenizer, saved as a run folder the way
``lmlab train lm`` writes one, so the server loads it through ``lmlab.load`` like any user model.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator

import openai
import pytest
import torch

from lmlab.cli.main import main
from lmlab.core.chat import ChatClient, ChatParams
from lmlab.core.checkpoint import save_model
from lmlab.core.config import to_dict
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.reference import Greedy
from lmlab.recipes.generate import generate_text
from lmlab.serve import LocalClient, background, free_port

KEY = "test-key"


def write_run(folder, seed: int = 0, layers: int = 2) -> str:
    """A run folder (model/ with weights, meta.json and tokenizer.json) of a random model whose outputs vary."""
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=259, dim=32, n_layers=layers, n_heads=4, n_kv_heads=2,
                                          max_seq_len=256, tie_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
        model.tok_emb.weight.normal_(0.0, 1.0)
    save_model(folder / "model", model, to_dict(model.cfg))
    ByteTokenizer(["<bos>", "<eos>", "<pad>"]).save(folder / "model" / "tokenizer.json")
    return str(folder)


@contextlib.contextmanager
def serving(client: LocalClient, api_key: str | None = KEY) -> Iterator[int]:
    """The app on a background uvicorn server (``lmlab.serve.background``) with the test API key."""
    with background(client, api_key) as port:
        yield port


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def post(port: int, path: str, body: dict, key: str | None = KEY) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request("POST", path, body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


@pytest.fixture
def run_dir(tmp_path) -> str:
    return write_run(tmp_path / "run")


@pytest.fixture
def api(run_dir) -> Iterator[tuple[openai.OpenAI, str]]:
    with serving(LocalClient(run_dir)) as port:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0), run_dir


HELLO = [{"role": "user", "content": "Hello there"}]


def test_chat_n_seed_and_models(api):
    oa, model = api
    assert [m.id for m in oa.models.list().data] == [model]
    r = oa.chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=8)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content and c.finish_reason in ("stop", "length")
    prompt = len(b"user: Hello there\nassistant:")  # the ByteTokenizer prompt: one token per byte
    assert r.usage.prompt_tokens == prompt and 1 <= r.usage.completion_tokens <= 8
    again = oa.chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=8)
    assert again.choices[0].message.content == c.message.content  # greedy is deterministic
    three = oa.chat.completions.create(model=model, messages=HELLO, n=3, temperature=0.8, seed=5, max_tokens=12)
    texts = [x.message.content for x in three.choices]
    assert [x.index for x in three.choices] == [0, 1, 2] and len(set(texts)) > 1  # seeds 5, 6, 7 differ
    same = oa.chat.completions.create(model=model, messages=HELLO, n=3, temperature=0.8, seed=5, max_tokens=12)
    assert [x.message.content for x in same.choices] == texts  # same seed -> same texts
    other = oa.chat.completions.create(model=model, messages=HELLO, temperature=0.8, seed=6, max_tokens=12)
    assert other.choices[0].message.content == texts[1]  # the i-th completion uses seed + i


def test_streaming_equals_the_whole_answer(api):
    oa, model = api
    whole = oa.chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=16)
    stream = oa.chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=16, stream=True)
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text == whole.choices[0].message.content and len(chunks) >= 3
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    pieces = list(oa.completions.create(model=model, prompt="abc", temperature=0, max_tokens=10, stream=True))
    full = oa.completions.create(model=model, prompt="abc", temperature=0, max_tokens=10)
    assert "".join(p.choices[0].text for p in pieces) == full.choices[0].text


def test_logprobs_match_the_model(api, run_dir):
    oa, model = api
    r = oa.chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=6, logprobs=True,
                                   top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.token == t.top_logprobs[0].token and t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy
    # the first token's logprob is the model's next-token distribution after the prompt, computed here directly
    client = LocalClient(run_dir)
    ids = client.tok.encode("user: Hello there\nassistant:")
    with torch.no_grad():
        logp = torch.log_softmax(client.target(torch.tensor([ids]))[0, -1].float(), -1)
    first = content[0]
    assert first.logprob == pytest.approx(float(logp.max()), abs=1e-5)
    assert client.tok.decode([int(logp.argmax())]) == first.token
    text = oa.completions.create(model=model, prompt="abc", temperature=0.8, seed=1, max_tokens=5, logprobs=2)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == text.usage.completion_tokens
    assert all(len(t) <= 2 for t in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)


@pytest.mark.parametrize("decoder,draft,extra", [
    ("greedy", None, {"temperature": 0}),
    ("sample", None, {"temperature": 0.8, "seed": 3}),
    ("gsd", "skip:1", {"temperature": 0}),
    ("gsd", "skip:1", {"temperature": 0.8, "seed": 3}),
])
def test_server_output_equals_lmlab_generate(run_dir, decoder, draft, extra):
    client = LocalClient(run_dir, decoder=decoder, draft=draft)
    with serving(client) as port:
        status, body = post(port, "/v1/completions", {"model": run_dir, "prompt": "In the beginning",
                                                     "max_tokens": 20, **extra})
    assert status == 200, body
    sampling = extra["temperature"] > 0
    name = "sample" if sampling and decoder == "greedy" else decoder
    text, _ = generate_text(run_dir, "In the beginning", decoder=name, draft=draft, max_new_tokens=20,
                            sample=sampling and name != "sample", temperature=extra["temperature"] or None,
                            seed=extra.get("seed", 0))
    choice = body["choices"][0]
    assert text == choice["text"] + ("<eos>" if choice["finish_reason"] == "stop" else "")


def test_stop_strings_cut_text_and_usage(run_dir):
    client = LocalClient(run_dir)
    text = client.complete("abc", ChatParams(max_tokens=30)).text
    assert len(text) >= 8, text
    stop = text[5:7]  # a string that occurs in the greedy continuation
    end = text.find(stop)
    c = client.complete("abc", ChatParams(max_tokens=30, stop=("zzzz", stop)))
    assert c.completions[0].finish_reason == "stop" and c.text == text[:end]
    # usage counts the tokens generated up to the stop string, not all 30
    ids = Greedy().generate(client.target, client.tok.encode("abc"), 30).tokens
    need = next(i for i in range(1, 31) if stop in client.tok.decode(ids[:i]))
    assert c.usage.completion_tokens == need < 30


def test_bad_requests_name_the_field(api):
    oa, model = api
    port = int(str(oa.base_url).split(":")[-1].split("/")[0])
    cases = [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({"messages": []}, 400, "messages"),
        ({"messages": HELLO, "temperature": -1}, 400, "temperature"),
        ({"messages": HELLO, "n": 0}, 400, "n"),
        ({"messages": HELLO, "max_tokens": "many"}, 400, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 10_000}, 400, None),  # longer than the model's context of 256
        ({"messages": HELLO, "top_logprobs": 2}, 400, "top_logprobs"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         400, "response_format"),
        ({"messages": HELLO, "response_format": {"type": "yaml"}}, 400, "response_format"),
        ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"messages": HELLO, "model": "gpt-4"}, 404, "model"),
        ({"model": model}, 400, "messages"),
    ]
    for body, status, param in cases:
        got, err = post(port, "/v1/chat/completions", {"model": model, **body})
        assert got == status, (body, err)
        assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["param"] == param, err
        if param:
            assert param in err["error"]["message"] or param == "response_format", err
    _, err = post(port, "/v1/chat/completions", {"model": model, "messages": HELLO, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x"}}})
    assert err["error"]["message"] == "response_format json_schema needs json_schema.schema, a JSON schema object"
    got, err = post(port, "/v1/completions", {"model": model, "prompt": "abc", "max_tokens": 300})
    assert got == 400 and "context" in err["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oa.chat.completions.create(model=model, messages=HELLO, temperature=5)


def test_api_key_is_enforced(api):
    oa, model = api
    port = int(str(oa.base_url).split(":")[-1].split("/")[0])
    bad = openai.OpenAI(base_url=str(oa.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=model, messages=HELLO, max_tokens=2)
    for key in (None, "wrong"):
        status, err = post(port, "/v1/completions", {"model": model, "prompt": "a"}, key=key)
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
    assert get(port, "/v1/models")[0] == 401
    assert get(port, "/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200
    assert get(port, "/health")[0] == 200  # the liveness probe needs no key


def test_a_client_leaving_mid_stream_does_not_break_the_server(api):
    oa, model = api
    port = int(str(oa.base_url).split(":")[-1].split("/")[0])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            body = json.dumps({"model": model, "prompt": "abc", "max_tokens": 200, "stream": True,
                               "temperature": 0}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            assert b"200 OK" in s.recv(64)  # read the start of the response, then hang up
    r = oa.chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=4)
    assert r.choices[0].message.content is not None


def test_local_client_refuses_bad_settings(run_dir):
    with pytest.raises(ValueError, match="has no config to set"):
        LocalClient(run_dir, decoder="greedy", decoder_overrides=["depth=3"])
    with pytest.raises(ValueError, match="needs a draft model"):
        LocalClient(run_dir, decoder="gsd")
    with pytest.raises(ValueError, match="cannot serve text"):
        LocalClient(run_dir, decoder="masked")
    with pytest.raises(ValueError, match="only used by chain_sd"):
        LocalClient(run_dir, draft="skip:1")
    client = LocalClient(run_dir, decoder="gsd", draft="skip:1", decoder_overrides=["depth=3"])
    assert isinstance(client, ChatClient) and client.capabilities == {"n", "logprobs", "seed", "json_schema"}
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        client.chat([{"role": "nobody", "content": "x"}])


async def _achat(client: LocalClient) -> list[str]:
    import asyncio

    params = ChatParams(max_tokens=5, temperature=0.8, seed=2)
    results = await asyncio.gather(*(client.achat(HELLO, params) for _ in range(3)))
    return [r.text for r in results]


def test_achat_runs_requests_one_at_a_time_with_equal_results(run_dir):
    import asyncio

    client = LocalClient(run_dir)
    texts = asyncio.run(_achat(client))
    assert texts == [client.chat(HELLO, max_tokens=5, temperature=0.8, seed=2).text] * 3


def test_cli_serve_refuses_a_missing_api_key(run_dir, capsys, monkeypatch):
    monkeypatch.delenv("LMLAB_TEST_NO_SUCH_KEY", raising=False)
    rc = main(["serve", "--model", run_dir, "--api-key-env", "LMLAB_TEST_NO_SUCH_KEY"])
    assert rc == 2 and "LMLAB_TEST_NO_SUCH_KEY" in capsys.readouterr().err
    rc = main(["serve", "--model", run_dir, "--port", "70000"])
    assert rc == 2 and "port must be in 1..65535, got 70000" in capsys.readouterr().err


def test_cli_serve_prints_the_url_and_serves(run_dir):
    import os
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "LMLAB_TEST_KEY": KEY, "LMLAB_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli.main", "serve", "--model", run_dir, "--port",
                             str(port), "--api-key-env", "LMLAB_TEST_KEY"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == f"serving {run_dir} at http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = post(port, "/v1/completions", {"model": run_dir, "prompt": "abc", "max_tokens": 3,
                                                             "temperature": 0})
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_lmlabs_own_clients_against_the_real_server(run_dir, tmp_path, monkeypatch):
    """core.chat.OpenAIClient (behind the SQLite CachedClient) through `lmlab serve` gives what LocalClient gives
    in process; the second run makes no model call and is byte-identical; local: builds a LocalClient."""
    from lmlab.core.chat import CachedClient, OpenAIClient, result_to_json
    from lmlab.serve import make_client

    local = LocalClient(run_dir)
    params = dict(max_tokens=8, temperature=0.8, seed=3, n=2)
    direct = local.chat(HELLO, **params)
    monkeypatch.setenv("LMLAB_TEST_KEY", KEY)
    with serving(local) as port:
        remote = OpenAIClient(f"http://127.0.0.1:{port}/v1", run_dir, api_key_env="LMLAB_TEST_KEY")
        cached = CachedClient(remote, tmp_path / "cache.sqlite")
        first = cached.chat(HELLO, **params)
        assert [c.text for c in first.completions] == [c.text for c in direct.completions]
    replay = CachedClient(None, tmp_path / "cache.sqlite", replay_only=True, model=run_dir)
    again = replay.chat(HELLO, **params)  # the server is gone: only the cache can answer
    assert again.cached and result_to_json(again) == result_to_json(first.__class__(**{**first.__dict__,
                                                                                        "cached": True}))
    in_process = make_client(f"local:{run_dir}")
    assert isinstance(in_process, LocalClient)
    assert in_process.chat(HELLO, max_tokens=8).text == local.chat(HELLO, max_tokens=8).text


def test_cli_serve_check_answers_once_and_exits(run_dir, capsys):
    assert main(["serve", "--model", run_dir, "--check"]) == 0
    assert capsys.readouterr().out.strip() == f"checked {run_dir} at http://127.0.0.1:8000/v1"
    assert main(["serve", "--model", run_dir, "--decoder", "gsd", "--check"]) == 2  # gsd needs a draft
    assert "draft" in capsys.readouterr().err


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "population", "capital"],
          "properties": {"city": {"type": "string", "maxLength": 12},
                         "population": {"type": "integer", "minimum": 0, "maximum": 10**7},
                         "capital": {"type": "boolean"}, "tags": {"type": "array", "maxItems": 2,
                                                                  "items": {"enum": ["river", "sea"]}}}}


def test_json_schema_requests_parse_and_validate(api):
    """Constrained decoding (llguidance) makes even a random model's output a document the schema accepts."""
    import jsonschema

    client, model = api
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
    for temperature, seed in ((0, None), (0.9, 1), (0.9, 2)):
        out = client.chat.completions.create(model=model, messages=HELLO, max_tokens=200, temperature=temperature,
                                             seed=seed, response_format=fmt)
        assert out.choices[0].finish_reason == "stop"  # the document ended well before max_tokens
        doc = json.loads(out.choices[0].message.content)
        jsonschema.validate(doc, SCHEMA)
    plain = client.chat.completions.create(model=model, messages=HELLO, max_tokens=40, temperature=0)
    with pytest.raises(json.JSONDecodeError):  # the same model unconstrained does not write JSON
        json.loads(plain.choices[0].message.content)
    obj = client.chat.completions.create(model=model, messages=HELLO, max_tokens=60, temperature=0,
                                         response_format={"type": "json_object"})
    text = obj.choices[0].message.content  # any object: a random model may not close it within 60 tokens
    assert text.startswith("{") and (obj.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict))
