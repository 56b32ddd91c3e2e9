"""The OpenAI-compatible HTTP app of ``lmlab serve`` (FastAPI) over a ``LocalClient``.

    GET  /health                 {"status": "ok", "model": ...} (no API key needed: a liveness probe)
    GET  /v1/models              the served models: the base model, then each adapter (``--adapter NAME=PATH``)
    POST /v1/chat/completions    OpenAI chat completions (n, temperature, top_p, max_tokens, stop, seed, logprobs)
    POST /v1/completions         OpenAI text completions on the raw prompt (no chat template)

``stream: true`` answers with server-sent events: chunks carrying delta content, then ``data: [DONE]``. The
completion is generated first and then streamed in word-sized pieces, so streaming changes how the answer
arrives, not when generation ends. A client that disconnects mid-stream only ends its own response.
Bad requests get 400 (404 for an unknown model, 401 without the API key) with an OpenAI-style error body
``{"error": {"message", "type", "param", "code"}}`` that names the offending field. A request's ``model`` picks
the adapter it runs with (its name) or none (the base model's name).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from lmlab.core.chat import ChatResult

from .local import LocalClient
from .protocol import ChatRequest, CompletionRequest, Unsupported, chat_body, error_body, new_id, params_of, text_body


class ApiError(Exception):
    """An HTTP error answered with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def pieces(text: str) -> list[str]:
    """``text`` split into word-sized stream pieces (each word with the whitespace before it); joined = text."""
    return re.findall(r"\s*\S+|\s+", text)


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first pydantic error as a 400 naming the field (e.g. ``messages.0.role``)."""
    err = exc.errors()[0]
    param = ".".join(str(x) for x in err.get("loc", ())[1:]) or "body"
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    return ApiError(400, f"{param}: {err.get('msg', 'invalid value')}{got}", param, err.get("type"))


def chat_stream(result: ChatResult) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion: a role chunk, content deltas, a finish chunk per choice."""
    head = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": result.model}
    out = []
    for i, c in enumerate(result.completions):
        deltas = [{"role": "assistant", "content": ""}, *({"content": p} for p in pieces(c.text))]
        out += [{**head, "choices": [{"index": i, "delta": d, "finish_reason": None, "logprobs": None}]}
                for d in deltas]
        out.append({**head, "choices": [{"index": i, "delta": {}, "finish_reason": c.finish_reason,
                                         "logprobs": None}]})
    return out


def text_stream(result: ChatResult) -> list[dict[str, Any]]:
    """The chunks of a streamed text completion: text pieces, then a finish chunk per choice."""
    head = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": result.model}
    out = []
    for i, c in enumerate(result.completions):
        out += [{**head, "choices": [{"index": i, "text": p, "finish_reason": None, "logprobs": None}]}
                for p in pieces(c.text)]
        out.append({**head, "choices": [{"index": i, "text": "", "finish_reason": c.finish_reason,
                                         "logprobs": None}]})
    return out


def event_stream(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield sse(chunk)
            await asyncio.sleep(0)  # a point where a disconnected client's response is cancelled
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def create_app(client: LocalClient, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving ``client``; with ``api_key``, /v1 routes need ``Authorization: Bearer <key>``."""
    app = FastAPI(title="lmlab serve")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.param, exc.code, exc.kind), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _api_error(request, validation_error(exc))

    def authorized(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key", "authentication_error")

    def check_model(name: str) -> None:
        if name not in client.models:
            raise ApiError(404, f"model {name!r} is not served here; this server serves "
                           f"{', '.join(map(repr, client.models))}", "model", "model_not_found")

    async def answer(call: Any, *args: Any) -> ChatResult:
        try:
            return await asyncio.to_thread(call, *args)
        except ValueError as e:  # a request the model cannot take (too long for its context, ...)
            raise ApiError(400, str(e), getattr(e, "param", None)) from e

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": client.model}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "lmlab"}
                                           for name in client.models]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(req: ChatRequest) -> Any:
        check_model(req.model)
        messages = [m.plain() for m in req.messages]
        try:
            req.check_supported()
            top = req.top_k()
            max_tokens = req.max_completion_tokens or req.max_tokens
            params = params_of(req, max_tokens or client.room(client.prompt_of(messages)), top)
        except (Unsupported, ValueError) as e:
            raise ApiError(400, str(e), getattr(e, "param", None)) from e
        result = await answer(client.generate, messages, params, req.model)
        if req.stream:
            return event_stream(chat_stream(result))
        return chat_body(result, req.top_logprobs or 0)

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(req: CompletionRequest) -> Any:
        check_model(req.model)
        try:
            req.check_supported()
            prompt = req.text()
            params = params_of(req, req.max_tokens or client.room(prompt), req.logprobs or 0)
        except (Unsupported, ValueError) as e:
            raise ApiError(400, str(e), getattr(e, "param", None)) from e
        result = await answer(client.complete, prompt, params, req.model)
        if req.stream:
            return event_stream(text_stream(result))
        return text_body(result)

    return app
