"""lmlab: recent transformer and LLM research methods as tested components on one shared core.

``lmlab.registries()`` returns every family's registry; ``lmlab.load(spec)`` loads any model lmlab writes or
reads (``lmlab.loader``); importing lmlab imports no torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

FAMILIES = ("models", "decoding", "compression", "adapters", "objectives", "laws", "pipelines", "tasks")


def registries() -> dict:
    """family name -> Registry (lazy tables; nothing heavy is imported)."""
    return {f: importlib.import_module(f"lmlab.{f}").REGISTRY for f in FAMILIES}


def find(name: str):
    """(family, Entry) of a method by registry name; KeyError listing all names if unknown."""
    hits = [(f, r.entry(name)) for f, r in registries().items() if name in r]
    if not hits:
        names = sorted(n for r in registries().values() for n in r)
        raise KeyError(f"unknown method {name!r}; known: {', '.join(names)}")
    return hits[0]


def load(spec, *, device=None, dtype=None):
    """(model, tokenizer, meta) from an lmlab folder, a Hugging Face folder, a .gguf or a pretrained name.

    See ``lmlab.loader.load``.
    """
    from .loader import load as _load

    return _load(spec, device=device, dtype=dtype)
