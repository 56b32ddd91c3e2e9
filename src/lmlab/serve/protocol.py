"""OpenAI request models (pydantic) and response bodies for ``lmlab serve``.

Requests are validated field by field; a bad field becomes a 400 whose OpenAI-style error body names it
(``app.py``). Fields lmlab does not implement are refused with a clear message rather than ignored when they
would change the output (``response_format`` json_schema / json_object, ``tools``, logprobs while streaming);
fields that only tag a request (``user``, ``stream_options``) are accepted and ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmlab.core.chat import ChatParams, ChatResult, TokenLogprob


class Unsupported(ValueError):
    """A well-formed request asking for something lmlab serve does not do (yet); ``param`` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] = ""

    def plain(self) -> dict[str, str]:
        """The message as ``{"role", "content": str}`` (text parts joined)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class Sampling(BaseModel):
    """The fields chat and text completions share (OpenAI names, ranges and defaults)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    n: int = Field(1, ge=1, le=16)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False

    def stops(self) -> tuple[str, ...] | None:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None and (len(stop) > 4 or any(not s for s in stop)):
            raise Unsupported(f"stop must be up to 4 non-empty strings, got {stop!r}", "stop")
        return tuple(stop) if stop else None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None

    def top_k(self) -> int:
        """The ChatParams logprobs k: 0 = none; at least 1 when logprobs (the chosen token's own logprob)."""
        if self.top_logprobs and not self.logprobs:
            raise Unsupported("top_logprobs needs logprobs: true", "top_logprobs")
        return max(1, self.top_logprobs or 0) if self.logprobs else 0

    def check_supported(self) -> None:
        kind = (self.response_format or {}).get("type", "text")
        if kind not in ("text", "json_object", "json_schema"):
            raise Unsupported(f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'",
                              "response_format")
        if kind == "json_schema" and not isinstance((self.response_format.get("json_schema") or {}).get("schema"),
                                                    dict):
            raise Unsupported("response_format json_schema needs json_schema.schema, a JSON schema object",
                              "response_format")
        if self.tools:
            raise Unsupported("tools are not supported yet by lmlab serve", "tools")
        if self.stream and self.logprobs:
            raise Unsupported("logprobs with stream: true is not supported yet by lmlab serve", "logprobs")


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    def text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise Unsupported(f"prompt must be one string, got a list of {len(self.prompt)}", "prompt")
            return self.prompt[0]
        return self.prompt

    def check_supported(self) -> None:
        if self.echo:
            raise Unsupported("echo is not supported yet by lmlab serve", "echo")
        if self.stream and self.logprobs:
            raise Unsupported("logprobs with stream: true is not supported yet by lmlab serve", "logprobs")


def params_of(req: Sampling, max_tokens: int | None, logprobs: int) -> ChatParams:
    fmt = getattr(req, "response_format", None)
    return ChatParams(n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens,
                      stop=req.stops(), seed=req.seed, logprobs=logprobs,
                      response_format=fmt if fmt and fmt.get("type", "text") != "text" else None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def error_body(message: str, param: str | None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(lps: list[TokenLogprob] | None, top: int) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {"content": [{**_entry(t.token, t.logprob), "top_logprobs": [_entry(s, v) for s, v in t.top[:top]]}
                        for t in lps]}


def text_logprobs(lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    offsets, pos = [], 0
    for t in lps:
        offsets.append(pos)
        pos += len(t.token)
    return {"tokens": [t.token for t in lps], "token_logprobs": [t.logprob for t in lps],
            "top_logprobs": [dict(t.top) for t in lps], "text_offset": offsets}


def usage_body(result: ChatResult) -> dict[str, int]:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


def chat_body(result: ChatResult, top: int) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                "logprobs": chat_logprobs(c.logprobs, top)} for i, c in enumerate(result.completions)]
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": result.model, "choices": choices, "usage": usage_body(result)}


def text_body(result: ChatResult) -> dict[str, Any]:
    choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": text_logprobs(c.logprobs)}
               for i, c in enumerate(result.completions)]
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": result.model, "choices": choices, "usage": usage_body(result)}
