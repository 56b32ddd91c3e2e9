"""PEFT interoperability: plain LoRA adapters written and read in the folder layout of Hugging Face PEFT.

LoRA (Hu et al., arXiv:2106.09685) adds ``scale * B A x`` to a frozen linear ``W0 x``. PEFT
(github.com/huggingface/peft) stores one such adapter as a folder of two files:

    adapter_config.json          {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout", "target_modules", ...}
    adapter_model.safetensors    base_model.model.<module>.lora_A.weight (r, d_in), .lora_B.weight (d_out, r)

where ``<module>`` is the module's path in the Hugging Face model (``model.layers.0.self_attn.q_proj`` for Llama)
and ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``). lmlab's LoRA is the same function:
one expert of ``LowRankMixture`` with ``A`` (1, r, d_in), ``B`` (1, d_out, r) and ``scale = alpha / rank``. The
mapping is therefore a rename plus dropping the expert axis:

    lmlab Transformer   layers.<i>.attn.q_proj          <-> model.layers.<i>.self_attn.q_proj   (core.hf.hf_name)
    HFCausalLM          model.<HF path>                 <-> <HF path>    (the wrapper's ``model.`` prefix)
    transformers model  <HF path>                       <-> <HF path>

``use_rslora`` is read exactly by storing ``alpha = lora_alpha * sqrt(r)`` (then ``alpha / r = lora_alpha /
sqrt(r)``); ``save_peft`` always writes ``use_rslora: false`` with the lmlab alpha. Keys with the adapter name
(``lora_A.default.weight``) are read as well as PEFT's usual keys without it.

Refused, each with an error naming it: saving a routed adapter (MoLoRA, HydraLoRA, MALoRA with N > 1 have no PEFT
LoRA form); other PEFT types; ``fan_in_fan_out``, ``bias`` other than "none", DoRA (``use_dora``), per-module
``rank_pattern`` / ``alpha_pattern``, ``modules_to_save`` and the other options that change what the weights mean;
LoRA on embeddings; ``adapter_model.bin`` (a pickle: lmlab never loads one); a module the file names that the model
lacks, or a weight of another shape (both shapes named).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.core.checkpoint import CheckpointError, OutputFolderError
from lmlab.core.runtime import atomic_write

from .layers import Config, lora
from .tuner import AdaptedModel, apply, linear_names, matches_target

RESIDUAL_INITS = ("pissa", "olora", "corda", "loftq")  # initialisations that also change the base weights
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
PREFIX = "base_model.model."
KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.(?P<name>[^.]+))?\.weight")
# PEFT LoraConfig fields that change what the weights mean; lmlab reads a file only where each is off / default
UNSUPPORTED = ("fan_in_fan_out", "use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "lora_bias",
               "layer_replication", "trainable_token_indices", "target_parameters", "alora_invocation_tokens",
               "use_qalora", "megatron_config", "use_bdlora")


# ---------------------------------------------------------------- module names: model <-> Hugging Face path


def hf_paths(model: nn.Module) -> dict[str, str]:
    """``{module name in model: Hugging Face module path}`` for every linear layer of ``model``."""
    from lmlab.core.hf import HFCausalLM, hf_name
    from lmlab.core.transformer import Transformer

    names = linear_names(model)
    if isinstance(model, Transformer):
        return {n: hf_name(n + ".weight").removesuffix(".weight") for n in names}
    if isinstance(model, HFCausalLM):
        return {n: n.removeprefix("model.") for n in names if n.startswith("model.")}
    if hasattr(model, "config") and hasattr(model, "get_input_embeddings"):  # a transformers model itself
        return {n: n for n in names}
    raise TypeError(f"PEFT names exist for an lmlab Transformer, an HFCausalLM or a transformers model; got "
                    f"{type(model).__name__}")


def describe_targets(chosen: list[str], every: list[str]) -> list[str]:
    """target_modules for the ``chosen`` names among ``every`` linear name: their last parts (q_proj, ...) when
    those select exactly ``chosen``, else the full names."""
    leaves = sorted({n.rpartition(".")[2] for n in chosen})
    return leaves if {n for n in every if matches_target(n, leaves)} == set(chosen) else sorted(chosen)


def _base_of(model: nn.Module) -> nn.Module:
    return model.base if isinstance(model, AdaptedModel) else model


# ---------------------------------------------------------------- save


def peft_config(cfg: Config, targets: list[str], base_model_name_or_path: str | None) -> dict[str, Any]:
    """adapter_config.json of an lmlab LoRA config (the fields PEFT's LoraConfig reads; all others default)."""
    alpha = int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
            "revision": None, "inference_mode": True, "r": cfg.rank, "lora_alpha": alpha,
            "lora_dropout": cfg.dropout, "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
            "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}


def peft_state(model: AdaptedModel, name: str) -> dict[str, torch.Tensor]:
    """``{base_model.model.<HF path>.lora_A.weight: (r, d_in), ...lora_B.weight: (d_out, r)}`` of adapter ``name``."""
    paths = hf_paths(model.base)
    out = {}
    for n, layer in model.adapter_layers():
        if name in layer.adapters:
            mix = layer.adapters[name]
            out[f"{PREFIX}{paths[n]}.lora_A.weight"] = mix.expert_down(0).detach().cpu().contiguous()  # (r, d_in)
            out[f"{PREFIX}{paths[n]}.lora_B.weight"] = mix.B[0].detach().cpu().contiguous()  # (d_out, r)
    return out


def _write(folder: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Weights then config, each through a temporary file renamed into place (config last: its presence says
    the folder is complete)."""
    from safetensors.torch import save as to_bytes

    atomic_write(folder / WEIGHTS_FILE, to_bytes(state, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))


def save_peft(model: AdaptedModel, folder: str | Path, name: str | None = None, *,
              base_model_name_or_path: str | None = None, overwrite: bool = False) -> Path:
    """Write LoRA adapter ``name`` (default: the active one) of ``model`` as a PEFT adapter folder.

    ``base_model_name_or_path`` defaults to the wrapped transformers model's ``name_or_path`` (if any). A new or
    empty ``folder`` is written as a temporary sibling folder, then renamed; an existing PEFT adapter folder (or,
    with ``overwrite``, any folder) gets its adapter files replaced, the old config removed first, so an
    interrupted save never leaves a config next to weights it does not describe.
    """
    name = name or model.active
    cfg = model._config(name)
    if cfg.routed:
        raise ValueError(f"adapter {name!r} is {cfg.method} ({cfg.n_experts} routed experts); PEFT's LoRA format "
                         "holds one B A per layer (plain LoRA, or any method with one expert): save it with "
                         "lmlab.adapters.save instead")
    paths = hf_paths(model.base)
    chosen = [paths[n] for n, layer in model.adapter_layers() if name in layer.adapters]
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model.base, "config", None), "_name_or_path", None) or None
    config = peft_config(cfg, describe_targets(chosen, list(paths.values())), base_model_name_or_path)
    state = peft_state(model, name)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"cannot write PEFT adapter folder {folder}: it is a file")
    if folder.is_dir() and any(folder.iterdir()):
        if not (overwrite or (folder / CONFIG_FILE).is_file()):
            held = ", ".join(sorted(p.name for p in folder.iterdir())[:5])
            raise OutputFolderError(f"{folder} holds files that are not a PEFT adapter ({held}); write to another "
                                    "folder, or pass overwrite=True to add the adapter files next to them")
        (folder / CONFIG_FILE).unlink(missing_ok=True)
        _write(folder, state, config)
        return folder
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write(tmp, state, config)
        os.replace(tmp, folder)  # onto an absent or empty folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---------------------------------------------------------------- load


def read_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA folder, checked: a setting lmlab cannot reproduce is an error."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a PEFT adapter folder (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path} holds a PEFT {config.get('peft_type')!r} adapter; lmlab reads LORA only")
    bad = [f"{k}={config[k]!r}" for k in UNSUPPORTED if config.get(k)]
    if config.get("bias", "none") != "none":
        bad.append(f"bias={config['bias']!r}")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(RESIDUAL_INITS):
        bad.append(f"init_lora_weights={init!r} (an unconverted adapter for a residual base model)")
    if bad:
        raise CheckpointError(f"{path}: lmlab's LoRA has no equivalent of {', '.join(bad)} (it reads plain LoRA: "
                              "fan_in_fan_out false, bias 'none', no DoRA, no rank/alpha patterns, no "
                              "modules_to_save)")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise CheckpointError(f"{path}: {key} must be a positive number, got {config.get(key)!r}")
    return config


def read_weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{HF module path: {"A": (r, d_in), "B": (d_out, r)}}`` from adapter_model.safetensors."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        if (folder / PICKLE_FILE).is_file():
            raise CheckpointError(f"{folder} holds {PICKLE_FILE}, a pickle, which lmlab never loads (it can run "
                                  "code); save the adapter with PEFT's save_pretrained(..., safe_serialization=True)"
                                  f" to get {WEIGHTS_FILE}")
        raise CheckpointError(f"PEFT adapter weights missing: {path}")
    out: dict[str, dict[str, torch.Tensor]] = {}
    names = set()
    for key, value in load_file(str(path)).items():
        m = KEY.fullmatch(key)
        if m is None:
            raise CheckpointError(f"{path}: tensor {key!r} is not a LoRA weight (<module>.lora_A.weight or "
                                  "<module>.lora_B.weight); lmlab reads LoRA on linear layers only")
        names.add(m["name"])
        out.setdefault(m["module"], {})[m["side"]] = value
    if len(names) > 1:
        raise CheckpointError(f"{path} holds several adapters ({sorted(map(str, names))}); save one per folder")
    for module, pair in out.items():
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{path}: module {module} has lora_{''.join(pair)} but not both lora_A and lora_B")
    return out


def _check_shapes(module: str, pair: dict[str, torch.Tensor], layer: nn.Module, r: int) -> None:
    d_out, d_in = layer.weight.shape
    for side, want in (("A", (r, d_in)), ("B", (d_out, r))):
        got = tuple(pair[side].shape)
        if got != want:
            raise CheckpointError(f"PEFT lora_{side} of module {module} has shape {got}, but the model's "
                                  f"{module} ({d_out} x {d_in}, r={r}) needs {want}")


def load_peft(folder: str | Path, model: nn.Module, name: str = "default") -> AdaptedModel:
    """Add the PEFT LoRA adapter in ``folder`` to ``model`` (lmlab Transformer, HFCausalLM, transformers model,
    or an ``AdaptedModel`` of one) as adapter ``name``; the modules are the ones its weights file names."""
    folder = Path(folder)
    config = read_config(folder)
    weights = read_weights(folder)
    r = int(config["r"])
    alpha = float(config["lora_alpha"]) * (math.sqrt(r) if config.get("use_rslora") else 1.0)
    base = _base_of(model)
    by_path = {p: n for n, p in hf_paths(base).items()}
    lacking = sorted(set(weights) - set(by_path))
    if lacking:
        some = ", ".join(list(by_path)[:4])
        raise CheckpointError(f"{folder}/{WEIGHTS_FILE} adapts module {lacking[0]}, which {type(base).__name__} "
                              f"lacks (its linear layers: {some}, ...)")
    modules = {}
    for path, n in by_path.items():  # in the model's order, so the first error is the first layer's
        if path in weights:
            _check_shapes(path, weights[path], base.get_submodule(n), r)
            modules[n] = weights[path]
    if not modules:
        raise CheckpointError(f"{folder}/{WEIGHTS_FILE} holds no LoRA weights")
    targets = describe_targets(list(modules), linear_names(base))
    adapted = apply(model, lora(rank=r, alpha=alpha, dropout=float(config.get("lora_dropout") or 0.0),
                                target_modules=targets), name)
    state = {}
    for n, pair in modules.items():
        state[f"{n}.A"] = pair["A"].unsqueeze(0)  # (1, r, d_in)
        state[f"{n}.B"] = pair["B"].unsqueeze(0)  # (1, d_out, r)
    adapted.load_adapter_state(name, state, str(folder))
    return adapted
