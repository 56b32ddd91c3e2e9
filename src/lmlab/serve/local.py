"""LocalClient: a ``core.chat.ChatClient`` over any model ``lmlab.load`` reads, decoded by lmlab's decoders.

    client = LocalClient("runs/tiny")                                  # plain greedy / sampling
    client = LocalClient("smollm2-135m", decoder="gsd", draft="skip:odd", decoder_overrides=["depth=6"])
    client.chat([{"role": "user", "content": "Name three rivers."}], temperature=0.8, seed=1, n=2).text

Requests map onto decoders as ``lmlab generate`` does (``recipes.generate.decoder_config``): temperature 0 is
greedy decoding (``greedy``, or a speculative decoder with ``sample=False``); temperature > 0 samples with
(temperature, top_p) through the decoder's config (``sample``, or the speculative decoder's ``sampling`` table).
The i-th of n completions uses seed ``seed + i``. Generation stops at the tokenizer's end-of-text token
(finish_reason "stop") or after ``max_tokens`` (finish_reason "length"). Stop strings are applied after
generation: the text is cut before the first stop string and only the tokens needed to reach it are counted.
Logprobs (k > 0) are recomputed with one forward pass over prompt + completion (the model's own distribution,
temperature 1), the naive reference a cached implementation would be checked against.

Messages become a prompt through the tokenizer's chat template (Hugging Face tokenizers). lmlab's own
tokenizers have no template: the prompt is the messages as "role: content" lines followed by "assistant:".
One generation runs at a time (a lock); ``achat`` runs it in a worker thread so an event loop stays responsive.

Adapters: ``LocalClient("runs/lm", adapters={"a": "runs/lm-a", "b": "runs/lm-b"})`` loads the base once and adds
each adapter (``lmlab.adapters.load``) under its name; a request names the adapter it runs with (``model=``), the
base model's name runs none. The adapter is switched inside the generation lock, so requests never mix them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab import adapters as adapter_family
from lmlab.core.chat import (
    ChatParams,
    ChatResult,
    Completion,
    Messages,
    TokenLogprob,
    Usage,
    check_messages,
    request_hash,
)
from lmlab.core.checkpoint import read_meta
from lmlab.decoding import REGISTRY as DECODERS
from lmlab.decoding import build, token_decoders
from lmlab.loader import PEFT_CONFIG, load, model_folder
from lmlab.recipes.generate import decoder_config, load_draft

logger = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 256  # when a request gives none, capped by the room left in the context


@dataclass
class Generated:
    """One completion before it becomes a ``Completion``: its token ids, text and why it ended."""

    ids: list[int]
    text: str
    finish_reason: str


def render_messages(messages: Messages, tok: Any) -> str:
    """The prompt text of a chat: the HF chat template, else "role: content" lines ending in "assistant:"."""
    hf = getattr(tok, "tok", None)
    if hasattr(hf, "apply_chat_template") and getattr(hf, "chat_template", None):
        return hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    lines = [f"{m['role']}: {m.get('content', '')}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def cut_at_stop(ids: list[int], tok: Any, stop: Sequence[str]) -> tuple[list[int], str] | None:
    """(the fewest leading ids whose text reaches a stop string, the text before it), or None if none occurs."""
    for i in range(1, len(ids) + 1):
        text = tok.decode(ids[:i])
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return ids[:i], text[: min(hits)]
    return None


@torch.no_grad()
def token_logprobs(model: Any, tok: Any, prompt: list[int], ids: list[int], k: int) -> list[TokenLogprob]:
    """Each completion token's logprob and the top-k alternatives, from one forward pass over prompt + ids."""
    if not ids:
        return []
    seq = torch.tensor([prompt + ids], device=model.device)  # (1, P+N)
    logits = model(seq)[0, len(prompt) - 1: -1].float()  # (N, V): the logits that predicted each completion token
    logp = torch.log_softmax(logits, dim=-1)  # (N, V)
    chosen = logp.gather(-1, torch.tensor(ids, device=logp.device)[:, None])[:, 0]  # (N,)
    top_v, top_i = logp.topk(min(k, logp.shape[-1]), dim=-1)  # (N, k), (N, k)
    return [TokenLogprob(tok.decode([t]), float(chosen[j]),
                         [(tok.decode([int(i)]), float(v)) for v, i in zip(top_v[j], top_i[j])])
            for j, t in enumerate(ids)]


def _resolved(spec: str) -> str:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def add_adapters(model: Any, named: Mapping[str, str], taken: str) -> Any:
    """``model`` with each adapter of ``named`` (name -> adapter folder, run folder of ``lmlab train adapter`` or
    PEFT LoRA folder) added under its name, none active."""
    for name, path in named.items():
        if not name or name == taken:
            raise ValueError(f"adapter name {name!r} is empty or the served model's own name; give another NAME")
        folder = model_folder(Path(path).expanduser())
        if folder is None and (Path(path).expanduser() / PEFT_CONFIG).is_file():
            folder = Path(path).expanduser()
            model = adapter_family.load_peft(folder, model, name)
            trained_on = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
        elif folder is None:
            raise ValueError(f"adapter {name}={path}: no adapter there (neither an lmlab adapter or run folder with "
                             f"meta.json, nor a PEFT folder with {PEFT_CONFIG})")
        else:
            model = adapter_family.load(folder, model, name)
            trained_on = read_meta(folder).get("base")
        if trained_on and _resolved(trained_on) != _resolved(taken):
            logger.warning("adapter %r was trained on %s, and is served on %s", name, trained_on, taken)
    model.set_active(None)
    return model


class LocalClient:
    """An lmlab model (or a Hugging Face one through ``lmlab.load``) in process, as a ``ChatClient``."""

    capabilities = frozenset({"n", "logprobs", "seed", "json_schema"})

    def __init__(self, model: str | tuple[Any, Any], decoder: str = "greedy", draft: str | None = None,
                 decoder_overrides: Sequence[str] = (), name: str | None = None,
                 adapters: Mapping[str, str] | None = None):
        """``model``: a spec for ``lmlab.load`` or a (model, tokenizer) pair; ``decoder``: a decoding registry
        name (greedy, sample, chain_sd, tree_sd, gsd); ``draft``: the speculative decoders' draft (a model spec
        sharing the tokenizer, or ``skip:...``); ``decoder_overrides``: ``key=value`` settings of its config;
        ``adapters``: name -> adapter folder, each served as model ``name`` on the one loaded base."""
        self.target, self.tok = model if isinstance(model, tuple) else load(model)[:2]
        if self.tok is None:
            raise ValueError(f"model {model!r} has no tokenizer next to it; LocalClient needs one to encode text")
        self.model = name or (model if isinstance(model, str) else "local")
        if adapters:
            self.target = add_adapters(self.target, adapters, self.model)
        self.adapters = list(adapters or [])
        if decoder not in token_decoders(rerank=False):
            raise ValueError(f"decoder {decoder!r} cannot serve text; expected one of {token_decoders(rerank=False)} "
                             "(best-of-N decoders need a scorer: use them from Python or lmlab generate)")
        self.speculative = "draft" in DECODERS.entry(decoder).caps
        if draft is not None and not self.speculative:
            raise ValueError(f"a draft is only used by chain_sd, tree_sd and gsd, not by {decoder!r}")
        self.decoder, self.overrides = decoder, list(decoder_overrides)
        self.draft = load_draft(draft, self.target, self.tok) if draft else None
        self._lock = threading.Lock()
        self._decoder(ChatParams(temperature=0.0))  # bad overrides or a missing draft fail here, not per request
        self._decoder(ChatParams(temperature=1.0))

    @property
    def models(self) -> list[str]:
        """The model names requests may give: the base model's, then each adapter's."""
        return [self.model, *self.adapters]

    def _using(self, model: str | None) -> contextlib.AbstractContextManager:
        """Run adapter ``model`` (the base model's name or None: no adapter) for one generation."""
        if model is not None and model not in self.models:
            raise ValueError(f"model {model!r} is not served here; served: {', '.join(map(repr, self.models))}")
        if not self.adapters:
            return contextlib.nullcontext()
        return self.target.using(None if model in (None, self.model) else model)

    @property
    def context(self) -> int:
        """The model's context length in tokens (prompt + completion)."""
        return int(self.target.max_seq_len)

    def prompt_of(self, messages: Messages) -> str:
        """The prompt text ``messages`` become (``render_messages``)."""
        return render_messages(check_messages(messages), self.tok)

    def room(self, prompt: str) -> int:
        """Tokens a completion of ``prompt`` may have: the default max_tokens, capped by the context left."""
        return max(1, min(DEFAULT_MAX_TOKENS, self.context - len(self.tok.encode(prompt))))

    def _decoder(self, params: ChatParams) -> Any:
        """The decoder for one request: greedy at temperature 0, else sampling with (temperature, top_p); a
        response_format with a JSON schema decodes autoregressively under it (``decoding.constrained``)."""
        sample = params.temperature > 0
        temperature = params.temperature if sample else None
        top_p = params.top_p if sample and params.top_p < 1 else None
        if params.response_format is not None and params.response_format.get("type", "text") != "text":
            from lmlab.decoding.base import Sampling
            from lmlab.decoding.constrained import SchemaDecoder, schema_of

            sampling = Sampling(sample=sample, temperature=temperature or 1.0, top_p=top_p)
            return SchemaDecoder(schema_of(params.response_format), self.tok, sampling)
        if self.speculative:
            cfg = decoder_config(self.decoder, sample, temperature, None, top_p, self.overrides)
            return build(self.decoder, cfg, draft=self.draft)
        name = "sample" if sample else "greedy"
        overrides = self.overrides if name == self.decoder else []  # a "sample" server's overrides shape sampling
        return build(name, decoder_config(name, False, temperature, None, top_p, overrides))

    def _one(self, dec: Any, prompt: list[int], params: ChatParams, seed: int | None) -> Generated:
        eos = self.tok.eos_id
        ids = list(dec.generate(self.target, prompt, params.max_tokens, seed=seed, eos_id=eos).tokens)
        # ended before max_tokens without an eos: a JSON-schema constraint completed its document
        reason = "stop" if (eos is not None and eos in ids) or len(ids) < params.max_tokens else "length"
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos) + 1]
        body = ids[:-1] if eos is not None and ids and ids[-1] == eos else ids  # the text leaves out the eos
        cut = cut_at_stop(body, self.tok, params.stop) if params.stop else None
        if cut is not None:
            return Generated(cut[0], cut[1], "stop")
        return Generated(ids, self.tok.decode(body), reason)

    def complete(self, prompt: str, params: ChatParams, model: str | None = None) -> ChatResult:
        """n completions of the raw text ``prompt`` (no chat template): the text-completions path; ``model``
        picks an adapter by name (None or the base model's name: none)."""
        if params.tools:
            raise ValueError(f"LocalClient does not support tools yet (capabilities: {sorted(self.capabilities)})")
        ids = self.tok.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens; give some text")
        with self._lock, torch.no_grad(), self._using(model):  # the adapter is switched under the lock
            dec = self._decoder(params)
            seeds = [None if params.seed is None else params.seed + i for i in range(params.n)]
            gens = [self._one(dec, ids, params, s) for s in seeds]
            completions = [Completion(g.text, g.finish_reason, token_logprobs(self.target, self.tok, ids, g.ids,
                                                                              params.logprobs)
                                      if params.logprobs else None) for g in gens]
        usage = Usage(prompt_tokens=len(ids), completion_tokens=sum(len(g.ids) for g in gens))
        return ChatResult(completions, usage, model or self.model)

    def generate(self, messages: Messages, params: ChatParams, model: str | None = None) -> ChatResult:
        """The blocking chat call: render the messages, complete them, stamp the request hash."""
        result = self.complete(self.prompt_of(messages), params, model)
        result.request_hash = request_hash(model or self.model, messages, params)
        return result

    async def achat(self, messages: Messages, params: ChatParams) -> ChatResult:
        """``generate`` in a worker thread (one generation at a time)."""
        return await asyncio.to_thread(self.generate, messages, params)

    def chat(self, messages: Messages, **params: Any) -> ChatResult:
        """Synchronous chat: ``params`` are ``ChatParams`` fields (n, temperature, top_p, max_tokens, ...)."""
        if isinstance(params.get("stop"), (list, str)):
            stop = params["stop"]
            params["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return self.generate(messages, ChatParams(**params))
