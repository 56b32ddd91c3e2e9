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
import copy
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit, urlunsplit

Messages = list[dict[str, Any]]
CAPABILITIES = ("n", "logprobs", "json_schema", "tools", "seed")
ROLES = ("system", "user", "assistant", "tool")
MODEL_ENV = "LMLAB_LLM_MODEL"  # the model of an --llm URL without ?model= (and of a replay file with several)
log = logging.getLogger(__name__)


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


class SyncChat:
    """The synchronous ``chat(messages, **params)`` that every client here shares."""

    def chat(self, messages: Messages, **params: Any) -> ChatResult:
        return run_sync(self, messages, **params)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- results as JSON


def result_to_json(result: ChatResult) -> str:
    """Canonical JSON of a result without its ``cached`` flag: what the cache stores and what replays compare."""
    d = asdict(result)
    d.pop("cached")
    return json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def result_from_json(text: str, cached: bool = False) -> ChatResult:
    """The ChatResult that ``result_to_json`` wrote (KeyError / TypeError / ValueError when it is not one)."""
    d = json.loads(text)

    def completion(c: dict[str, Any]) -> Completion:
        lps = c["logprobs"]
        if lps is not None:
            lps = [TokenLogprob(**{**t, "top": [(a, float(b)) for a, b in t["top"]]}) for t in lps]
        return Completion(**{**c, "logprobs": lps})

    return ChatResult(**{**d, "completions": [completion(c) for c in d["completions"]], "usage": Usage(**d["usage"]),
                         "cached": cached})


# ---------------------------------------------------------------------------------------------- ScriptedClient

Reply = str | Completion | Callable[[Messages], Any]  # a callable reply returns a str or a Completion
Rule = Callable[[Messages], Any] | tuple[str | re.Pattern[str], Reply]  # a callable rule returns a Reply or None


def last_user_text(messages: Messages) -> str:
    """The content of the last user message ("" when there is none)."""
    return next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")


def _as_completion(reply: Any, messages: Messages) -> Completion:
    if callable(reply):
        reply = reply(messages)
    if isinstance(reply, str):
        return Completion(text=reply, finish_reason="stop")
    if isinstance(reply, Completion):
        return copy.deepcopy(reply)
    raise TypeError(f"a scripted reply must be a str, a Completion or a callable returning one, got {reply!r}")


class ScriptedClient(SyncChat):
    """Deterministic answers for tests: the first matching rule answers.

    A rule is a callable ``rule(messages) -> reply | None`` (None = no match) or a pair ``(regex, reply)`` searched
    in the last user message. A reply is a str, a Completion, or a callable ``reply(messages) -> str | Completion``
    (called once per completion, so n > 1 may differ). ``calls`` counts requests and ``requests`` records each one
    as ``(messages, params)``; a request that no rule matches is a LookupError naming its last user message.
    """

    def __init__(self, rules: list[Rule], model: str = "scripted") -> None:
        self.rules = [self._check_rule(i, r) for i, r in enumerate(rules)]
        self.model = model
        self.capabilities = frozenset(CAPABILITIES)
        self.calls = 0
        self.requests: list[tuple[Messages, ChatParams]] = []

    @staticmethod
    def _check_rule(i: int, rule: Any) -> Rule:
        if isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], (str, re.Pattern)):
            return re.compile(rule[0]), rule[1]
        if callable(rule):
            return rule
        raise TypeError(f"rules[{i}] = {rule!r}: expected a callable or a (regex, reply) pair")

    def _reply(self, messages: Messages) -> Reply:
        text = last_user_text(messages)
        for rule in self.rules:
            if isinstance(rule, tuple):
                if rule[0].search(text):
                    return rule[1]
            elif (reply := rule(messages)) is not None:
                return reply
        raise LookupError(f"ScriptedClient: no rule of {len(self.rules)} matches the last user message {text!r}")

    async def achat(self, messages: Messages, params: ChatParams) -> ChatResult:
        check_messages(messages)
        self.calls += 1
        self.requests.append((copy.deepcopy(messages), params))
        reply = self._reply(messages)
        completions = [_as_completion(reply, messages) for _ in range(params.n)]
        usage = Usage(prompt_tokens=sum(len((m.get("content") or "").split()) for m in messages),
                      completion_tokens=sum(len(c.text.split()) for c in completions))
        return ChatResult(completions, usage, self.model, request_hash(self.model, messages, params))


# ---------------------------------------------------------------------------------------------- OpenAIClient


class ChatRequestError(RuntimeError):
    """A request the server refused, or that still failed after all its retries."""


def _import_openai() -> Any:
    try:
        import openai
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("OpenAIClient needs the `openai` package: pip install 'lmlab[llm]'") from e
    return openai


def _api_key(env: str | None) -> str:
    """The key in the environment variable ``env``; "EMPTY" (what local servers accept) when no variable is named."""
    if env is None:
        return "EMPTY"
    key = os.environ.get(env, "")
    if not key:
        raise ValueError(f"api_key_env={env!r}: that environment variable is not set or empty")
    return key


def _request_kwargs(model: str, messages: Messages, params: ChatParams, n: int, seed: int | None) -> dict[str, Any]:
    """The chat-completions arguments of one request; fields left at "not asked" are not sent."""
    kw: dict[str, Any] = {"model": model, "messages": messages, "temperature": params.temperature,
                          "top_p": params.top_p, "max_tokens": params.max_tokens}
    if n > 1:
        kw["n"] = n
    if seed is not None:
        kw["seed"] = seed
    if params.stop:
        kw["stop"] = list(params.stop)
    if params.response_format is not None:
        kw["response_format"] = params.response_format
    if params.tools:
        kw["tools"] = list(params.tools)
    if params.logprobs:
        kw["logprobs"] = True
        kw["top_logprobs"] = params.logprobs
    return kw


def _completion(choice: Any) -> Completion:
    """An openai ``Choice`` as a Completion (logprobs -> TokenLogprob, tool calls -> OpenAI-style dicts)."""
    logprobs = None
    if choice.logprobs is not None and choice.logprobs.content is not None:
        logprobs = [TokenLogprob(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs or []])
                    for t in choice.logprobs.content]
    calls = choice.message.tool_calls
    tool_calls = [c.model_dump(mode="json", exclude_none=True) for c in calls] if calls else None
    return Completion(choice.message.content or "", choice.finish_reason, logprobs, tool_calls)


def _retryable(e: Exception, openai: Any) -> bool:
    """Timeouts, lost connections, 429 and 5xx are worth another try; other refusals are final."""
    if isinstance(e, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(e, openai.APIStatusError) and (e.status_code == 429 or e.status_code >= 500)


class OpenAIClient(SyncChat):
    """Any OpenAI-compatible chat endpoint through the ``openai`` package (AsyncOpenAI).

    Retries timeouts, connection errors, 429 and 5xx ``max_retries`` times with exponential backoff
    (``backoff_s * 2**attempt``); at most ``concurrency`` requests are in flight. n > 1 goes as one request when
    "n" is in ``capabilities`` (the default assumes it); when the server returns fewer choices (llama.cpp's server
    ignores n), the missing ones are requested one by one with seeds seed+k, and "n" is dropped from
    ``capabilities``. ``http_client`` (an httpx AsyncClient) is passed to the openai client, e.g. for a proxy.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout: float = 60.0,
                 max_retries: int = 3, concurrency: int = 8, capabilities: Any = None, backoff_s: float = 0.5,
                 http_client: Any = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: expected an http:// or https:// URL")
        if not model:
            raise ValueError("model must be a non-empty model name")
        for name, value, low in (("timeout", timeout, 1e-9), ("max_retries", max_retries, 0),
                                 ("concurrency", concurrency, 1), ("backoff_s", backoff_s, 0)):
            if value < low:
                raise ValueError(f"{name} must be >= {low:g}, got {value}")
        caps = frozenset(CAPABILITIES if capabilities is None else capabilities)
        if unknown := caps - set(CAPABILITIES):
            raise ValueError(f"capabilities {sorted(unknown)} unknown; expected a subset of {CAPABILITIES}")
        self.base_url, self.model, self.capabilities = base_url, model, caps
        self.timeout, self.max_retries, self.concurrency, self.backoff_s = timeout, max_retries, concurrency, backoff_s
        self._openai = _import_openai()
        self._key = _api_key(api_key_env)
        self._http_client = http_client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"OpenAIClient(base_url={self.base_url!r}, model={self.model!r})"

    def _bind(self) -> tuple[Any, asyncio.Semaphore]:
        """The openai client and semaphore of the running event loop (each ``chat`` call runs a new loop)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._sem = loop, asyncio.Semaphore(self.concurrency)
            self._client = self._openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key, timeout=self.timeout,
                                                    max_retries=0, http_client=self._http_client)
        assert self._sem is not None
        return self._client, self._sem

    async def _request(self, messages: Messages, params: ChatParams, n: int,
                       seed: int | None) -> tuple[list[Completion], Usage]:
        client, sem = self._bind()
        kwargs = _request_kwargs(self.model, messages, params, n, seed)
        for attempt in range(self.max_retries + 1):
            try:
                async with sem:
                    resp = await client.chat.completions.create(**kwargs)
                break
            except self._openai.OpenAIError as e:
                what = f"{self.base_url} (model {self.model!r}): {type(e).__name__}: {e}"
                if not _retryable(e, self._openai):
                    raise ChatRequestError(f"request refused by {what}") from e
                if attempt == self.max_retries:
                    raise ChatRequestError(f"request failed after {attempt + 1} attempts to {what}") from e
                delay = self.backoff_s * 2**attempt
                log.warning("chat request to %s failed (%s), retry %d in %.2fs", self.base_url, type(e).__name__,
                            attempt + 1, delay)
                await asyncio.sleep(delay)
        if not resp.choices:
            raise ChatRequestError(f"{self.base_url} (model {self.model!r}) returned no choices")
        u = resp.usage
        usage = Usage(u.prompt_tokens or 0, u.completion_tokens or 0) if u is not None else Usage()
        return [_completion(c) for c in sorted(resp.choices, key=lambda c: c.index)], usage

    async def achat(self, messages: Messages, params: ChatParams) -> ChatResult:
        check_messages(messages)
        native = "n" in self.capabilities
        completions, usage = await self._request(messages, params, params.n if native else 1, params.seed)
        if len(completions) < params.n:
            if native:
                log.info("%s returned %d of n=%d choices: emulating n by separate requests", self.base_url,
                         len(completions), params.n)
                self.capabilities = self.capabilities - {"n"}
            seeds = [None if params.seed is None else params.seed + k for k in range(len(completions), params.n)]
            for more, u in await asyncio.gather(*(self._request(messages, params, 1, s) for s in seeds)):
                completions += more[:1]
                usage = Usage(usage.prompt_tokens + u.prompt_tokens, usage.completion_tokens + u.completion_tokens)
        return ChatResult(completions[:params.n], usage, self.model, request_hash(self.model, messages, params))


# ---------------------------------------------------------------------------------------------- CachedClient

_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,    -- request_hash(model, messages, params)
    model TEXT NOT NULL,
    request TEXT NOT NULL,   -- canonical JSON of {model, messages, params}: what was asked
    response TEXT NOT NULL,  -- result_to_json(ChatResult)
    checksum TEXT NOT NULL,  -- sha256 of response
    created REAL NOT NULL)"""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _open_cache(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_SCHEMA)
    except sqlite3.DatabaseError as e:
        db.close()
        raise ValueError(f"{path} is not a SQLite response cache: {e}") from e
    return db


def _corruption(text: Any, checksum: Any) -> str | None:
    """Why a stored response cannot be served (None when it can)."""
    if not isinstance(text, str) or not isinstance(checksum, str):
        return "response or checksum is not text"
    if _sha256(text) != checksum:
        return "checksum mismatch"
    try:
        result_from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        return f"undecodable response: {type(e).__name__}: {e}"
    return None


class CachedClient(SyncChat):
    """A SQLite response cache (WAL mode) in front of a client, keyed by ``request_hash(model, messages, params)``.

    A miss asks the inner client and stores the request JSON, the response JSON and its sha256; a hit returns the
    stored result (``cached=True``) without a model call, byte-identical in ``result_to_json`` to the first answer.
    A row whose checksum or JSON is bad is logged, deleted and asked again. Concurrent requests with one key make
    one inner call. ``replay_only=True`` (no inner client needed) turns a miss into a LookupError naming the
    request hash; its ``model`` defaults to the one model the file holds. ``hits`` / ``misses`` count answers.
    """

    def __init__(self, client: ChatClient | None, path: str | Path, replay_only: bool = False,
                 model: str | None = None) -> None:
        if client is None and not replay_only:
            raise ValueError("CachedClient needs an inner client unless replay_only=True")
        if client is not None and model is not None and model != client.model:
            raise ValueError(f"model={model!r} differs from the inner client's model {client.model!r}")
        self.path = Path(path)
        if replay_only and not self.path.is_file():
            raise FileNotFoundError(f"replay cache {str(self.path)!r} does not exist")
        self.client, self.replay_only = client, replay_only
        self._lock = threading.Lock()  # one connection, possibly used from several threads' event loops
        self._db = _open_cache(self.path)
        self.model = model or (client.model if client is not None else self._recorded_model())
        # a replay answers whatever was recorded; what was not recorded is a miss error anyway
        self.capabilities = client.capabilities if client is not None else frozenset(CAPABILITIES)
        self.hits = self.misses = 0
        self._inflight: dict[str, asyncio.Task[str]] = {}

    def _recorded_model(self) -> str:
        with self._lock:
            models = [r[0] for r in self._db.execute("SELECT DISTINCT model FROM responses ORDER BY model")]
        if len(models) != 1:
            found = f"models {models}" if models else "no recorded responses"
            raise ValueError(f"replay cache {str(self.path)!r} has {found}: pass model= (or set {MODEL_ENV})")
        return models[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CachedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lookup(self, key: str) -> str | None:
        """The stored response JSON, or None on a miss (a corrupt row is deleted and counts as a miss)."""
        with self._lock:
            row = self._db.execute("SELECT response, checksum FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        problem = _corruption(*row)
        if problem is None:
            return row[0]
        log.warning("response cache %s: the row of request %s is corrupt (%s)", self.path, key, problem)
        if self.replay_only:
            raise LookupError(f"replay cache {str(self.path)!r}: the response of request {key} is corrupt ({problem})")
        with self._lock, self._db:
            self._db.execute("DELETE FROM responses WHERE key = ?", (key,))
        return None

    async def _fetch(self, key: str, messages: Messages, params: ChatParams) -> str:
        assert self.client is not None
        result = await self.client.achat(messages, params)
        self.misses += 1
        result = ChatResult(result.completions, result.usage, result.model, request_hash=key)
        text = result_to_json(result)
        request = json.dumps({"model": self.model, "messages": messages, "params": params.to_dict()},
                             sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                             (key, self.model, request, text, _sha256(text), time.time()))
        return text

    async def achat(self, messages: Messages, params: ChatParams) -> ChatResult:
        check_messages(messages)
        key = request_hash(self.model, messages, params)
        text = self._lookup(key)
        if text is not None:
            self.hits += 1
            return result_from_json(text, cached=True)
        if self.replay_only:
            raise LookupError(f"replay cache {str(self.path)!r} has no response for request {key} "
                              f"(model {self.model!r}, last user message {last_user_text(messages)[:80]!r})")
        task = self._inflight.get(key)
        leader = task is None
        if task is None:
            task = asyncio.ensure_future(self._fetch(key, messages, params))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._inflight.pop(key) if self._inflight.get(key) is t else None)
        text = await asyncio.shield(task)
        return result_from_json(text, cached=not leader)  # a follower made no model call of its own


# ---------------------------------------------------------------------------------------------- make_client


def _http_client(spec: str) -> OpenAIClient:
    """``http(s)://HOST/v1?model=NAME&api_key_env=VAR`` -> OpenAIClient (model defaults to $LMLAB_LLM_MODEL)."""
    parts = urlsplit(spec)
    query = parse_qs(parts.query, keep_blank_values=True)
    if unknown := set(query) - {"model", "api_key_env"}:
        raise ValueError(f"--llm {spec!r}: unknown query keys {sorted(unknown)}; expected model=, api_key_env=")
    model = query.get("model", [os.environ.get(MODEL_ENV, "")])[-1]
    if not model:
        raise ValueError(f"--llm {spec!r} names no model: add ?model=NAME or set {MODEL_ENV}")
    base_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return OpenAIClient(base_url, model, api_key_env=query.get("api_key_env", [None])[-1])


def make_client(spec: str, cache: str | Path | None = None,
                local: Callable[[str], ChatClient] | None = None) -> ChatClient:
    """The client of a CLI ``--llm`` string, optionally behind a response cache at ``cache``.

    ``http://...`` / ``https://...`` (an OpenAI-compatible endpoint, model from ``?model=`` or $LMLAB_LLM_MODEL),
    ``replay:FILE`` (answers only from the response cache FILE) or ``local:SPEC`` (an lmlab model in process,
    built by ``local(SPEC)``: ``lmlab.serve.make_client`` passes ``LocalClient``; core imports no serve).
    """
    if spec.startswith(("http://", "https://")):
        client = _http_client(spec)
    elif spec.startswith("local:"):
        if local is None:
            raise ValueError(f"--llm {spec!r} runs an lmlab model in process: use lmlab.serve.make_client")
        if not spec[len("local:"):]:
            raise ValueError("--llm local:SPEC needs a model spec after 'local:'")
        client = local(spec[len("local:"):])
    elif spec.startswith("replay:"):
        if cache is not None:
            raise ValueError(f"--llm {spec!r} already is a cache; a second cache ({cache}) makes no sense")
        if not spec[len("replay:"):]:
            raise ValueError("--llm replay:FILE needs a file after 'replay:'")
        return CachedClient(None, spec[len("replay:"):], replay_only=True, model=os.environ.get(MODEL_ENV) or None)
    else:
        raise ValueError(f"--llm {spec!r}: expected http://..., https://..., replay:FILE or local:SPEC")
    return CachedClient(client, cache) if cache is not None else client
