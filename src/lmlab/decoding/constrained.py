"""JSON-schema constrained decoding: every emitted token keeps the text a prefix of a document the schema accepts.

The grammar engine is llguidance (github.com/guidance-ai/llguidance; PyPI ``llguidance``, in the ``llm`` extra):
a Rust matcher that compiles a JSON schema into a token-level mask in microseconds per token and installs as a
CPU wheel (xgrammar and outlines-core were the alternatives; llguidance needs no build step and takes byte-level
vocabularies directly). Before each choice the logits of the forbidden tokens become -inf (``mask``), after it the
matcher consumes the token (``accept``); decoding stops when the document is complete (``done``). Greedy decoding
picks the model's best allowed token; sampling draws from the model's distribution renormalised over the allowed
tokens. Speculative decoders are not combined with a constraint: a constrained request decodes autoregressively
(``reference.autoregressive(..., constraint=JsonSchema(schema, tok))``).

Tokenizers: lmlab's ``ByteTokenizer`` (one byte per id, specials after) and Hugging Face tokenizers through
``HFTokenizer`` (``llguidance.hf``); others are refused with the list of supported kinds.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import torch

from .base import Generation, Sampling
from .reference import autoregressive

_GRAMMAR_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tok -> LLTokenizer (~1 s to build)


class _ByteVocab:
    """The surface ``llguidance.TokenizerWrapper`` reads, for lmlab's ByteTokenizer."""

    def __init__(self, tok: Any):
        n_special = tok.vocab_size - 256
        self.eos_token_id, self.bos_token_id = tok.eos_id, tok.bos_id
        self.tokens = [bytes([i]) for i in range(256)] + [f"<special_{i}>".encode() for i in range(n_special)]
        self.special_token_ids = list(range(256, tok.vocab_size))

    def __call__(self, text: str | bytes) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode("utf-8"))


def grammar_tokenizer(tok: Any, vocab_size: int) -> Any:
    """An ``llguidance.LLTokenizer`` for an lmlab tokenizer (ByteTokenizer or HFTokenizer) of the model's vocab."""
    import llguidance

    from lmlab.core.tokenizer import ByteTokenizer, HFTokenizer

    if isinstance(tok, ByteTokenizer):
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteVocab(tok)))
    if isinstance(tok, HFTokenizer):
        from llguidance.hf import from_tokenizer

        return from_tokenizer(tok.tok, n_vocab=vocab_size)
    raise TypeError(f"JSON-schema decoding supports ByteTokenizer and Hugging Face tokenizers, not "
                    f"{type(tok).__name__}")


class JsonSchema:
    """A JSON-schema constraint over one generation (``mask``, ``accept``, ``done``); build a new one per request."""

    def __init__(self, schema: dict[str, Any], tok: Any, vocab_size: int):
        import llguidance
        import llguidance.torch as lt

        if not isinstance(schema, dict):
            raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                 defaults={"whitespace_flexible": False})
        if tok not in _GRAMMAR_TOKENIZERS:
            _GRAMMAR_TOKENIZERS[tok] = grammar_tokenizer(tok, vocab_size)
        self.matcher = llguidance.LLMatcher(_GRAMMAR_TOKENIZERS[tok], grammar)
        if self.matcher.get_error():
            raise ValueError(f"JSON schema not accepted: {self.matcher.get_error()}")
        self.vocab_size, self.lt = vocab_size, lt
        self.bitmask = lt.allocate_token_bitmask(1, vocab_size)

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(V,) logits with the forbidden tokens at -inf (a new tensor; float32, on the logits' device)."""
        self.lt.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        out = logits.float().clone()[None]  # (1, V)
        self.lt.apply_token_bitmask_inplace(out, self.bitmask.to(out.device))
        return out[0]

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"token {token} broke the JSON schema constraint: {self.matcher.get_error()}")


def schema_of(response_format: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of an OpenAI ``response_format``: ``json_schema`` (its ``schema``) or ``json_object``."""
    kind = response_format.get("type", "text")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ValueError("response_format json_schema needs json_schema.schema, a JSON schema object")
        return schema
    raise ValueError(f"response_format type {kind!r} is not one of 'json_schema', 'json_object'")


class SchemaDecoder:
    """Autoregressive decoding under a JSON schema, greedy or sampled (the decoders' ``generate`` surface)."""

    def __init__(self, schema: dict[str, Any], tok: Any, sampling: Sampling | None = None):
        self.schema, self.tok, self.sampling = schema, tok, sampling or Sampling()

    def generate(self, model: Any, prompt: list[int] | torch.Tensor, max_new_tokens: int, seed: int | None = None,
                 eos_id: int | None = None) -> Generation:
        constraint = JsonSchema(self.schema, self.tok, model.vocab_size)
        return autoregressive(model, prompt, max_new_tokens, self.sampling, seed, eos_id, constraint)
