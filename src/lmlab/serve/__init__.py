"""Serving lmlab models: ``LocalClient`` (an in-process ``ChatClient``) and ``lmlab serve`` (OpenAI-compatible).

    from lmlab.serve import LocalClient, run
    LocalClient("runs/tiny").chat([{"role": "user", "content": "hi"}]).text
    run("runs/tiny", decoder="gsd", draft="skip:odd", port=8000)     # blocks; Ctrl-C stops it
    run("runs/tiny", adapters=["a=runs/tiny-a", "b=runs/tiny-b"])    # models "runs/tiny", "a" and "b"

``create_app`` (``serve.app``) is the FastAPI app; ``run`` builds the client and the app and serves them with
uvicorn. FastAPI and uvicorn are imported only when the server is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lmlab.core.chat import ChatParams

from .local import LocalClient

__all__ = ["LocalClient", "background", "create_app", "make_client", "parse_adapters", "run"]

LOOPBACK = "127.0.0.1"


def make_client(spec: str, cache: str | None = None) -> Any:
    """``core.chat.make_client`` with ``local:SPEC`` served by ``LocalClient`` (the CLI's ``--llm``)."""
    from lmlab.core.chat import make_client as make

    return make(spec, cache, local=LocalClient)


def create_app(client: LocalClient, api_key: str | None = None) -> Any:
    """The FastAPI app serving ``client`` (see ``lmlab.serve.app``)."""
    from .app import create_app as make

    return make(client, api_key)


def parse_adapters(items: Sequence[str]) -> dict[str, str]:
    """``["NAME=PATH", ...]`` (``lmlab serve --adapter``) as {name: path}; a malformed or repeated NAME is an
    error naming it."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"--adapter {item!r} is not NAME=PATH (e.g. --adapter legal=runs/lm-legal)")
        if name in out:
            raise ValueError(f"--adapter name {name!r} is given twice ({out[name]} and {path})")
        out[name] = path
    return out


def run(model: str, *, decoder: str = "greedy", draft: str | None = None, overrides: Sequence[str] = (),
        host: str = LOOPBACK, port: int = 8000, api_key: str | None = None,
        on_ready: Callable[[str], None] | None = None, check: bool = False, adapters: Sequence[str] = ()) -> None:
    """Serve ``model`` (any ``lmlab.load`` spec) at http://host:port/v1 until interrupted.

    ``adapters``: ``NAME=PATH`` items; each adapter is served on the one loaded base as model ``NAME``.
    ``on_ready(url)`` is called once the model is loaded, just before the server starts listening. ``check``:
    answer one short chat request per served model in process through the built app's client, then return
    without listening.
    """
    import uvicorn

    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    client = LocalClient(model, decoder=decoder, draft=draft, decoder_overrides=overrides,
                         adapters=parse_adapters(adapters))
    app = create_app(client, api_key)
    if check:
        for name in client.models:
            client.generate([{"role": "user", "content": "Hello"}], ChatParams(max_tokens=4), name)
    if on_ready is not None:
        on_ready(f"http://{host}:{port}/v1")
    if not check:
        uvicorn.run(app, host=host, port=port, log_level="warning")


def free_port(host: str = LOOPBACK) -> int:
    """A port the OS says is free on ``host`` now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def background(client: LocalClient, api_key: str | None = None, host: str = LOOPBACK,
               timeout: float = 20.0) -> Iterator[int]:
    """``client`` served on a background uvicorn thread at a free port of ``host``; yields the port once
    ``/health`` answers and stops the server on exit (tests, benchmarks, in-process pipelines)."""
    import http.client
    import threading
    import time

    import uvicorn

    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(create_app(client, api_key), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = http.client.HTTPConnection(host, port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError(f"lmlab serve did not come up on {host}:{port} within {timeout} s") from None
                time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
