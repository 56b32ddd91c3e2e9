"""Compress a model with a method of the compression registry and save it (``lmlab compress``, repro/flatquant).

    out = compress("flatquant", "smollm2-135m", "runs/q", bits="w4a4kv4", calib="corpus_en", eval_windows=16)

The model is anything ``lmlab.load`` reads. Calibration text is ``corpus_en`` (its train split), a UTF-8 file (its
first 90 %), or ``none`` for data-free methods (rtn, hadamard); windows are drawn at seeded random offsets.
Methods whose config has ``nsamples`` / ``seq_len`` (FlatQuant) take the window count and length from it, the
others from ``nsamples`` / ``seq_len`` here. ``eval_windows`` > 0 also scores the perplexity of evenly spaced
validation windows (corpus_en val, or the file's last 10 %) before and after, with the tokenizer's BOS
convention (``core.scoring.bos_convention``). The folder holds the compressed model (``compression.saving``)
and the tokenizer; ``lmlab.load(out)`` reads it back.

``out`` is checked before any work: a folder holding files lmlab did not write (a training run folder, a
Hugging Face folder, anything else) is refused unless ``overwrite``; then the model and tokenizer files are
written next to what is there, each atomically, and nothing else is removed (``core.checkpoint.save``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.compression import REGISTRY
from lmlab.compression.evaluate import score_windows, windows
from lmlab.compression.saving import save_quantized, saved_sizes
from lmlab.core.checkpoint import output_mode
from lmlab.core.config import apply_overrides
from lmlab.core.scoring import bos_convention
from lmlab.loader import load


def token_streams(calib: str, tok: Any) -> tuple[np.ndarray, np.ndarray]:
    """(train tokens, validation tokens) as 1-D arrays for ``calib`` (corpus_en or a text file)."""
    if calib == "corpus_en":
        from lmlab.tasks import corpus_en

        return corpus_en.tokenize("train", tok), corpus_en.tokenize("val", tok)
    path = Path(calib)
    if not path.is_file():
        raise FileNotFoundError(f"calibration source {calib!r} is neither 'corpus_en', 'none' nor an existing "
                                "text file")
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    return np.asarray(tok.encode(text[:cut])), np.asarray(tok.encode(text[cut:]))


def method_config(method: str, bits: str | None, overrides: list[str]) -> Any:
    cfg = REGISTRY.config(method)()
    if bits and "bits" not in {f.name for f in dataclasses.fields(cfg)}:
        raise ValueError(f"method {method!r} takes no bits setting")
    return apply_overrides(cfg, list(overrides) + ([f"bits={bits}"] if bits else []))


def save_tokenizer(tok: Any, out: Path) -> None:
    """Write ``tok`` into folder ``out`` file by file, each atomically (a tokenizer of lmlab or Hugging Face)."""
    if hasattr(tok, "save"):  # lmlab tokenizers: one tokenizer.json, written atomically
        tok.save(out / "tokenizer.json")
    elif hasattr(tok, "tok"):  # HFTokenizer: the wrapped transformers tokenizer's files, staged then renamed
        with tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer-") as staging:
            tok.tok.save_pretrained(staging)
            for f in sorted(Path(staging).iterdir()):
                os.replace(f, out / f.name)


def compress(method: str, model: str, out: str | Path, *, bits: str | None = None, calib: str = "corpus_en",
             nsamples: int = 32, seq_len: int = 512, seed: int = 0, eval_windows: int = 0, eval_len: int = 512,
             overrides: list[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Compress, save to ``out``, return {report, sizes, ppl_before, ppl_after, bos_used, eval_tokens}.

    ``overwrite``: write into a folder holding files lmlab did not write, next to them (module docstring).
    """
    out = Path(out)
    output_mode(out, overwrite)  # refuse a foreign folder or a file in the way before any work
    cfg = method_config(method, bits, overrides or [])
    net, tok, _ = load(model)
    if tok is None:
        raise ValueError(f"{model}: no tokenizer found next to the model")
    calib_ids, val = None, None
    if calib != "none" or eval_windows:
        if calib == "none":
            raise ValueError("evaluation needs validation text: pass calib='corpus_en' or a text file")
        train_ids, val_ids = token_streams(calib, tok)
        calib_ids = windows(train_ids, getattr(cfg, "nsamples", nsamples), getattr(cfg, "seq_len", seq_len),
                            seed=seed)
        val = windows(val_ids, eval_windows, eval_len) if eval_windows else None
    bos = bos_convention(tok)
    result: dict[str, Any] = {}
    if val is not None:
        before = score_windows(net, val, bos_id=bos)
        result |= {"ppl_before": before.perplexity, "bos_used": before.bos_used, "eval_tokens": before.tokens}
    net, report = REGISTRY.get(method)(cfg).fit(net, calib_ids)
    if val is not None:
        result["ppl_after"] = score_windows(net, val, bos_id=bos).perplexity
    save_quantized(out, net, report, overwrite=overwrite)
    save_tokenizer(tok, out)
    return result | {"report": report, "sizes": saved_sizes(out), "bits": getattr(cfg, "bits", "")}
