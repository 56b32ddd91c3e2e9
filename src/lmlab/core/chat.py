"""Chat clients: the one way lmlab's pipelines talk to an LLM (no torch imported here).

A ``ChatClient`` answers ``achat(messages, params) -> ChatResult``; ``chat(...)`` is its synchronous wrapper.
``messages`` are OpenAI-style dicts ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``.
Implementations: ``OpenAIClient`` (any OpenAI-compatible endpoint through the ``openai`` package: vLLM,
llama.cpp server, ``lmlab serve``, a hosted API), ``ScriptedClient`` (deterministic answers for tests), and
``serve.LocalClient`` (an lmlab model in process). ``CachedClient`` wraps any of them with a SQLite response
cache keyed by ``request_hash(model, messages, params)``: a run recorded once replays byte-identically, which is
what makes pipelines resumable and their tests deterministic.

``capabilities`` says what a client does natively: "n" (n > 1 in one request), "logprobs", "json_schema",
"tools", "seed". Callers never assume a capability; clients emulate what they can (n > 1 as n requests).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

Messages = list[dict[str, Any]]
CAPABILITIES = ("n", "logprobs", "json_schema", "tools", "seed")
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatParams:
    """Sampling and output settings of one request (OpenAI chat-completions names and meanings)."""

    n: int = 1  # completions per request
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None  # {"type": "json_schema", "json_schema": {"name", "schema"}}
    tools: tuple[dict[str, Any], ...] | None = None  # OpenAI tool definitions
    logprobs: int = 0  # 0 = none; k > 0 = the chosen token's logprob and the top-k alternatives

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)  # the top-k alternatives (token, logprob)


@dataclass
class Completion:
    text: str
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls" | None
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI-style {"id", "type", "function": {"name", "arguments"}}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatResult:
    completions: list[Completion]
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    request_hash: str = ""  # request_hash(model, messages, params): provenance and the cache key
    cached: bool = False  # served from a response cache without a model call

    @property
    def text(self) -> str:
        """The first completion's text."""
        return self.completions[0].text


def check_messages(messages: Messages) -> Messages:
    """The messages, or a ValueError naming the first bad one."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content", ""), str):
            raise ValueError(f"messages[{i}] = {m!r}: expected {{'role': one of {ROLES}, 'content': str}}")
    return messages


def request_hash(model: str, messages: Messages, params: ChatParams) -> str:
    """sha256 of the canonical JSON of (model, messages, params): equal requests, equal keys."""
    blob = json.dumps({"model": model, "messages": messages, "params": params.to_dict()}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@runtime_checkable
class ChatClient(Protocol):
    model: str
    capabilities: frozenset[str]

    async def achat(self, messages: Messages, params: ChatParams) -> ChatResult: ...

    def chat(self, messages: Messages, **params: Any) -> ChatResult: ...


def run_sync(client: ChatClient, messages: Messages, **params: Any) -> ChatResult:
    """``client.achat`` from synchronous code (not from inside a running event loop)."""
    return asyncio.run(client.achat(check_messages(messages), ChatParams(**params)))
