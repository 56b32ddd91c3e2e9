"""Lazy registries: method name -> "module:attr" string, imported only when the method is used.

Each family's ``__init__.py`` holds one ``Registry`` table, one line per method. Because targets are strings,
``lmlab list`` can show every method without importing torch (lm-evaluation-harness's lazy model table).
``tests/test_layout.py`` checks that every entry resolves, has a test file and a ``repro/<slug>/`` folder.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("stable", "experimental")

# Capability tags: what a method promises or needs. ``tests/contracts/`` reads them, so a method inherits the
# matching contract tests by its registry line; an unknown tag is refused (a typo would silently skip a test).
CAPS: dict[str, str] = {
    "hf": "works on a Hugging Face causal LM wrapped in core.hf.HFCausalLM (models: maps to and from Llama)",
    "kv_cache": "uses a KV cache (models: incremental decoding; compressors: quantizes the KV cache)",
    "sampling": "decoder that samples exactly from core.sampling.probs of the target's logits",
    "greedy-lossless": "decoder whose greedy output is token-identical to plain greedy decoding",
    "draft": "decoder that takes a draft model: cls(cfg, draft=draft)",
    "rerank": "decoder that samples N candidates and picks by a scorer: cls(cfg, scorer=scorer)",
    "calibration": "compressor that needs calibration token ids (N, T) in fit(model, calib)",
    "save": "compressor whose output round-trips compression.saving.save_quantized / load_quantized",
    "bidirectional": "trains or runs a bidirectional (mask='bidirectional') Transformer on ids + src_mask",
    "image": "works on images (N, C, H, W) with class labels",
    "diffusion": "a diffusion model or loss over noise levels (timesteps)",
    "preference": "loss on chosen/rejected response pairs with reference log-probs (ref_chosen, ref_rejected)",
    "outcome-reward": "loss on single responses with 0/1 outcome labels and reference log-probs (ref_logp)",
    "scorer": "objectives entry that scores responses (no training loss): no Trainer contract applies",
    "data": "objectives entry that builds training data (no training loss): no Trainer contract applies",
}


@dataclass(frozen=True)
class Entry:
    target: str  # "package.module:attr" of the method's main object (class or function)
    paper: str  # "arXiv:2407.16207" or a short citation
    summary: str  # one line: what the method does
    status: str = "experimental"  # stable | experimental
    config: str | None = None  # "package.module:Config" of the method's config dataclass, if any
    caps: tuple[str, ...] = field(default_factory=tuple)  # capability tags, e.g. ("hf", "kv_cache")
    repro: str | None = None  # slug of repro/<slug>/ when it differs from the registry name

    def __post_init__(self) -> None:
        if ":" not in self.target:
            raise ValueError(f"registry target {self.target!r} must be 'module:attr'")
        if self.status not in STATUSES:
            raise ValueError(f"registry status {self.status!r} must be one of {STATUSES}")
        if not isinstance(self.caps, tuple):
            raise ValueError(f"registry caps of {self.target!r} must be a tuple of tags, got {self.caps!r}")
        unknown = [c for c in self.caps if c not in CAPS]
        if unknown:
            raise ValueError(f"registry caps {unknown} of {self.target!r} are unknown; known caps: "
                             f"{', '.join(CAPS)} (a new one goes into lmlab.core.registry.CAPS with its meaning)")

    @property
    def module(self) -> str:
        return self.target.split(":")[0]


def load_target(target: str) -> Any:
    """Import ``"module:attr"`` and return the attribute."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """A named, ordered table of lazily imported entries."""

    def __init__(self, family: str, entries: dict[str, Entry]):
        self.family = family
        self._entries = dict(entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            known = ", ".join(self._entries) or "(none)"
            raise KeyError(f"unknown {self.family} method {name!r}; known: {known}")
        return self._entries[name]

    def get(self, name: str) -> Any:
        """Import and return the method's main object."""
        return load_target(self.entry(name).target)

    def config(self, name: str) -> type | None:
        e = self.entry(name)
        return load_target(e.config) if e.config else None
