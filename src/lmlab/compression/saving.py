"""Save and reload a quantized model: safetensors weights + JSON manifest; reloading gives identical outputs.

A saved folder (``lmlab.core.checkpoint`` layout) holds ``model.safetensors`` (the quantized model's state
dict: packed INT4 codes, scales, online transform factors, clip ratios, folded norms and embeddings) and
``meta.json``:

    {"format": 1, "arch": "hf-llama", "base": {"kind": "hf" | "lmlab", "config": {...}, "wrapped": bool,
     "dtype": "float32"}, "modules": {"model.layers.0.self_attn.q_proj": {"type": "QLinear", ...}, ...},
     "storage": {"dtype": "bfloat16", "tensors": 27}, "sizes": {"fp_bytes": ..., "saved_bytes": ...},
     "report": {...}}

The tensors no quantizer owns (embedding, head, norms: "plain" tensors) are stored in the model's own dtype, or
in ``dtype`` (bfloat16 / float16 halve a float32 embedding); quantizer tensors (codes, scales, transforms, clip
ratios) are stored as they are. ``sizes``: ``fp_bytes`` is the model's tensors before compression (the
report's, when one is given), ``saved_bytes`` what this folder holds (model.safetensors + meta.json).

``load_quantized`` rebuilds the base model from its config (random weights) in the model's dtype, replaces the
listed modules by empty quantized modules of the same spec, and loads the state dict strictly, so nothing is
left unloaded; plain tensors stored in a narrower dtype are widened back exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.core.checkpoint import META, WEIGHTS, CheckpointError, load_into, load_tensors, read_meta, save
from lmlab.core.runtime import atomic_write

from .base import Report, get_module, resolve_arch, set_module, unwrap
from .qlayers import QKVQuant, QLinear, QNorm, build, enable_hf_hook

FORMAT = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quantized_modules(model: nn.Module) -> dict[str, dict]:
    """{path: spec} of the quantized modules in ``model`` (paths relative to ``unwrap(model)``)."""
    kinds = (QLinear, QNorm, QKVQuant)
    return {name: m.spec() for name, m in unwrap(model).named_modules() if isinstance(m, kinds)}


def plain_names(model: nn.Module) -> list[str]:
    """State-dict names of the floating tensors no quantizer owns (embedding, head, norms, ...)."""
    root = unwrap(model)
    owned = [f"{n}." for n, m in root.named_modules() if isinstance(m, (QLinear, QKVQuant))]
    owned += [f"{n}.site." for n, m in root.named_modules() if isinstance(m, QNorm)]
    return [k for k, v in root.state_dict().items() if v.is_floating_point() and not k.startswith(tuple(owned))]


def _dtype_name(dtype: str | torch.dtype | None, default: torch.dtype) -> str:
    name = str(default if dtype is None else dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"storage dtype {dtype!r} is not supported; expected one of {', '.join(DTYPES)} (or None "
                         "for the model's own dtype)")
    return name


def _cast(state: dict[str, torch.Tensor], names: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``state`` with ``names`` cast to dtype; tensors sharing storage (tied embeddings) stay one tensor."""
    out, done = dict(state), {}
    for k in names:
        v = state[k]
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key not in done:
            done[key] = v.detach().to(dtype)
        out[k] = done[key]
    return out


def _write_sizes(path: Path, meta: dict, fp_bytes: int | None) -> dict[str, Any]:
    """Add ``sizes`` to meta.json (atomically); saved_bytes counts meta.json itself, so iterate to a fixed point."""
    weights = (path / WEIGHTS).stat().st_size
    sizes: dict[str, Any] = {"fp_bytes": fp_bytes, "saved_bytes": weights}
    for _ in range(4):
        text = json.dumps({**meta, "sizes": sizes}, indent=2, sort_keys=True)
        total = weights + len(text.encode("utf-8"))
        if total == sizes["saved_bytes"]:
            break
        sizes = {**sizes, "saved_bytes": total}
    atomic_write(path / META, text)
    return sizes


def save_quantized(path: str | Path, model: nn.Module, report: Report | None = None,
                   dtype: str | torch.dtype | None = None, *, overwrite: bool = False) -> Path:
    """Write ``model`` (compressed by a method of this family) to folder ``path``.

    ``dtype``: storage of the plain tensors (float32 | bfloat16 | float16; None = the model's own dtype).
    ``report`` (optional) is stored and gets ``saved_bytes``; its ``fp_bytes`` gives the full-precision size.
    ``overwrite``: write into a folder holding files lmlab did not write, next to them (``core.checkpoint.save``).
    """
    from lmlab.core.config import to_dict
    from lmlab.core.hf import HFCausalLM
    from lmlab.core.transformer import Transformer

    root, modules = unwrap(model), quantized_modules(model)
    if not modules:
        raise ValueError("the model holds no quantized modules: compress it before save_quantized")
    if isinstance(root, Transformer):
        base: dict[str, Any] = {"kind": "lmlab", "config": to_dict(root.cfg)}
    elif hasattr(root, "config") and hasattr(root.config, "to_dict"):
        base = {"kind": "hf", "config": root.config.to_dict(), "wrapped": isinstance(model, HFCausalLM)}
    else:
        raise ValueError(f"cannot save a {type(root).__name__}: expected an lmlab Transformer or a Hugging "
                         "Face "
                         "model (optionally wrapped in HFCausalLM)")
    arch = resolve_arch(model)
    own = get_module(root, arch.embed).weight.dtype
    base["dtype"] = _dtype_name(None, own)
    storage, names = _dtype_name(dtype, own), plain_names(model)
    state = _cast(root.state_dict(), names, DTYPES[storage]) if DTYPES[storage] != own else root.state_dict()
    meta = {"kind": "lmlab-quantized", "format": FORMAT, "arch": arch.name, "base": base, "modules": modules,
            "storage": {"dtype": storage, "tensors": len(names)},
            "report": report.to_dict() if report is not None else None}
    out = save(path, {"model": state}, meta, overwrite=overwrite)
    fp = report.fp_bytes if report is not None and report.fp_bytes else None
    sizes = _write_sizes(out, read_meta(out), fp)  # the meta as saved (save may add keys)
    if report is not None:
        report.saved_bytes = sizes["saved_bytes"]
    return out


def saved_sizes(path: str | Path) -> dict[str, Any]:
    """{"fp_bytes", "saved_bytes", "folder_bytes"} of a saved folder; folder_bytes counts every file in it
    (e.g. a tokenizer saved next to the model)."""
    path = Path(path)
    sizes = dict(read_meta(path).get("sizes") or {})
    sizes["folder_bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return sizes


def _base_model(base: dict) -> nn.Module:
    if base["kind"] == "lmlab":
        from lmlab.core.config import from_dict
        from lmlab.core.transformer import Transformer, TransformerConfig

        return Transformer(from_dict(TransformerConfig, base["config"]))
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(base["config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return AutoModelForCausalLM.from_config(config)


def load_quantized(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, meta) from a folder written by ``save_quantized``."""
    meta = read_meta(path)
    if meta.get("format") != FORMAT or "modules" not in meta:
        raise CheckpointError(f"{path} is not a quantized lmlab model (format {meta.get('format')!r}, "
                              f"expected {FORMAT})")
    root = _base_model(meta["base"]).to(DTYPES[meta["base"].get("dtype", "float32")])
    for name, spec in meta["modules"].items():
        original = get_module(root, name) if spec["type"] == "QNorm" else None
        set_module(root, name, build(spec, original))
        if spec["type"] == "QKVQuant" and meta["base"]["kind"] == "hf":
            enable_hf_hook(root.config)
    load_into(root, load_tensors(path), str(path))
    model: nn.Module = root
    if meta["base"].get("wrapped"):
        from lmlab.core.hf import HFCausalLM

        model = HFCausalLM(root)
    return model.eval(), meta


def from_checkpoint(folder: str | Path, meta: dict) -> nn.Module:
    """The quantized model saved in ``folder`` (kind lmlab-quantized; ``lmlab.load`` calls this)."""
    return load_quantized(folder)[0]
