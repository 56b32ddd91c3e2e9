"""The LM protocol: what every language model in lmlab offers, whoever built it.

lmlab's ``Transformer`` and ``core.hf.HFCausalLM`` (any Hugging Face causal LM) both satisfy it, and so do the
draft views (``decoding.drafts``). Families type against ``LM`` and ``Cache``; they never probe ``model.cfg``
or ``model.config``:

    vocab_size, max_seq_len, n_layers   ints
    device                              the device of the model's parameters
    new_cache(batch=1, max_len=None)    a ``Cache``: length, batch, truncate(n), gather(index), select_batch(rows)
    forward(ids, *, cache=None, positions=None, mask=None) -> logits (B, T, V)
        ids (B, T) long; positions (T,) | (B, T); mask bool (T, S) | (B, T, S) | (B, 1, T, S), True = attend,
        S = cached + T. With a cache, the new keys/values are appended and ``cache.length`` grows by T.

``is_lm(obj)`` is the structural check (``isinstance(obj, LM)`` also works: the protocols are runtime-checkable).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Cache(Protocol):
    """A key/value cache that speculative decoders can roll back and compact."""

    max_len: int

    @property
    def length(self) -> int: ...  # valid positions, shared by all layers

    @property
    def batch(self) -> int: ...

    def truncate(self, n: int) -> None: ...  # keep the first n positions

    def gather(self, index: torch.Tensor) -> None: ...  # keep positions ``index`` (increasing), compacted

    def select_batch(self, rows: torch.Tensor) -> None: ...  # keep batch rows ``rows``, in that order


@runtime_checkable
class LM(Protocol):
    """A causal (or bidirectional) token model with an explicit-position, explicit-mask forward and a cache."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_seq_len(self) -> int: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> Cache: ...

    def forward(self, ids: torch.Tensor, *, cache: Cache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def __call__(self, ids: torch.Tensor, *, cache: Cache | None = None, positions: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor: ...


def is_lm(obj: object) -> bool:
    """True when ``obj`` offers the whole LM surface (attributes and methods)."""
    return isinstance(obj, LM)


def require_lm(obj: object, who: str = "this method") -> LM:
    """``obj`` itself when it is an LM, else a TypeError naming what is missing."""
    missing = [n for n in ("vocab_size", "max_seq_len", "n_layers", "device", "new_cache", "forward")
               if not hasattr(obj, n)]
    if missing:
        raise TypeError(f"{who} needs an lmlab LM (core.lm.LM: a Transformer or an HFCausalLM); "
                        f"{type(obj).__name__} lacks {', '.join(missing)}")
    return obj  # type: ignore[return-value]


def param_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); cpu for a module with neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
