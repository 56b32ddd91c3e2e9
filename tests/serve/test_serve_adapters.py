"""``lmlab serve --adapter NAME=PATH``: several adapters on one loaded base, picked by each request's ``model``.

A real uvicorn server (``lmlab.serve.background``) over a tiny random lmlab Transformer run folder and two adapters
saved for it (a LoRA and a MALoRA with random B, so each visibly changes the output); every answer is compared
with greedy generation in process by the adapter loaded alone with ``lmlab.load``.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
from pathlib import Path

import pytest
import torch
from test_serve import write_run  # the same tiny run folder as the serve tests

import lmlab
from lmlab import adapters
from lmlab.adapters.layers import lora, malora
from lmlab.cli.main import main
from lmlab.core.chat import ChatParams
from lmlab.recipes.generate import generate_text
from lmlab.serve import LocalClient, background, parse_adapters

PROMPT = "In the beginning"


def save_adapter(run: str, folder: Path, cfg, seed: int, base: str | None = None) -> str:
    model = adapters.apply(lmlab.load(run)[0], cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            for mix in layer.adapters.values():
                mix.B.copy_(torch.randn(mix.B.shape, generator=gen) * 0.5)
    adapters.save(model, folder, base=base or run)
    return str(folder)


@pytest.fixture
def served(tmp_path) -> tuple[str, dict[str, str]]:
    run = write_run(tmp_path / "run")
    return run, {"a": save_adapter(run, tmp_path / "a", lora(rank=4), 1),
                 "b": save_adapter(run, tmp_path / "b", malora(rank=4), 2)}


def post(port: int, body: dict, path: str = "/v1/completions") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def completion(port: int, model: str, max_tokens: int = 16) -> str:
    status, body = post(port, {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0})
    assert status == 200, body
    assert body["model"] == model
    choice = body["choices"][0]
    return choice["text"] + ("<eos>" if choice["finish_reason"] == "stop" else "")


def in_process(spec: str, max_tokens: int = 16) -> str:
    return generate_text(spec, PROMPT, max_new_tokens=max_tokens)[0]


def test_each_request_runs_the_adapter_it_names(served):
    run, named = served
    client = LocalClient(run, adapters=named)
    want = {run: in_process(run), "a": in_process(named["a"]), "b": in_process(named["b"])}
    assert len(set(want.values())) == 3, want  # the adapters change the greedy text: the test can tell them apart
    with background(client) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/models")
        assert [m["id"] for m in json.loads(conn.getresponse().read())["data"]] == [run, "a", "b"]
        assert {name: completion(port, name) for name in want} == want
        # concurrent requests for different adapters: each adapter is switched under the generation lock
        order = ["a", "b", run, "b", "a", run, "a", "b"]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda name: completion(port, name), order))
        assert got == [want[name] for name in order]
        status, body = post(port, {"model": "b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                   "temperature": 0}, "/v1/chat/completions")
        assert status == 200 and body["model"] == "b"
        status, body = post(port, {"model": "c", "prompt": PROMPT, "max_tokens": 2})
    assert status == 404 and body["error"]["param"] == "model" and body["error"]["code"] == "model_not_found"
    assert body["error"]["message"] == f"model 'c' is not served here; this server serves {run!r}, 'a', 'b'"
    assert client.target.active is None  # no adapter left switched on between requests


def test_local_client_and_cli_refuse_bad_adapter_settings(served, capsys, caplog, tmp_path):
    run, named = served
    other = save_adapter(run, tmp_path / "other", lora(rank=2), 3, base=str(tmp_path / "another-run"))
    with caplog.at_level("WARNING", logger="lmlab.serve.local"):
        LocalClient(run, adapters={"a": named["a"], "o": other})
    assert [r.getMessage() for r in caplog.records] == [f"adapter 'o' was trained on {tmp_path / 'another-run'}, "
                                                        f"and is served on {run}"]
    with pytest.raises(ValueError, match="adapter name .* the served model's own name"):
        LocalClient(run, adapters={run: named["a"]})
    with pytest.raises(ValueError, match="is not NAME=PATH"):
        parse_adapters(["a"])
    with pytest.raises(ValueError, match="'a' is given twice"):
        parse_adapters([f"a={named['a']}", f"a={named['b']}"])
    assert parse_adapters([f"a={named['a']}", f" b = {named['b']}"]) == named
    with pytest.raises(ValueError, match="model 'z' is not served here; served: .*'a', 'b'"):
        LocalClient(run, adapters=named).complete(PROMPT, ChatParams(max_tokens=2), "z")
    assert main(["serve", "--model", run, "--adapter", f"a={named['a']}", "--adapter", f"b={named['b']}",
                 "--check"]) == 0
    assert capsys.readouterr().out.strip() == f"checked {run} at http://127.0.0.1:8000/v1"
    assert main(["serve", "--model", run, "--adapter", f"a={Path(run) / 'nothing'}", "--check"]) == 2
    assert "no adapter there" in capsys.readouterr().err


def test_a_peft_lora_folder_is_served_like_an_lmlab_adapter(served, tmp_path):
    run, named = served
    model, tok, _ = lmlab.load(named["a"])
    adapters.save_peft(model, tmp_path / "peft", base_model_name_or_path=run)
    client = LocalClient(run, adapters={"p": str(tmp_path / "peft")})
    got = client.complete(PROMPT, ChatParams(max_tokens=16, temperature=0), "p").completions[0].text
    assert got == in_process(named["a"]).removesuffix("<eos>")
