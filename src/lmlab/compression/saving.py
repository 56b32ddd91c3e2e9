"""Save and reload a quantized model: safetensors weights + JSON manifest; reloading gives identical outputs.

A saved folder (``lmlab.core.checkpoint`` layout) holds ``model.safetensors`` (the quantized model's state
dict: packed INT4 codes, scales, online transform factors, clip ratios, folded norms and embeddings) and
``meta.json``:

    {"format": 1, "arch": "hf-llama", "base": {"kind": "hf" | "lmlab", "config": {...}, "wrapped": bool},
     "modules": {"model.layers.0.self_attn.q_proj": {"type": "QLinear", ...}, ...}, "report": {...}}

``load_quantized`` rebuilds the base model from its config (random weights), replaces the listed modules by
empty quantized modules of the same spec, and loads the state dict strictly, so nothing is left unloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lmlab.core.checkpoint import CheckpointError, load_into, load_tensors, read_meta, save

from .base import Report, get_module, resolve_arch, set_module, unwrap
from .qlayers import QKVQuant, QLinear, QNorm, build, enable_hf_hook

FORMAT = 1


def quantized_modules(model: nn.Module) -> dict[str, dict]:
    """{path: spec} of the quantized modules in ``model`` (paths relative to ``unwrap(model)``)."""
    kinds = (QLinear, QNorm, QKVQuant)
    return {name: m.spec() for name, m in unwrap(model).named_modules() if isinstance(m, kinds)}


def save_quantized(path: str | Path, model: nn.Module, report: Report | None = None) -> Path:
    """Write ``model`` (compressed by a method of this family) to folder ``path``."""
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
    meta = {"kind": "lmlab-quantized", "format": FORMAT, "arch": resolve_arch(model).name, "base": base,
            "modules": modules,
            "report": report.to_dict() if report is not None else None}
    return save(path, {"model": root.state_dict()}, meta)


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
    root = _base_model(meta["base"])
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
