"""Checkpoints as safetensors weights + a JSON sidecar (kind, config, step, metadata); never pickle.

A checkpoint is a folder ``<dir>/`` holding ``model.safetensors``, optionally ``optim.safetensors`` (flattened
optimizer state), and ``meta.json`` with a mandatory ``kind`` saying what the folder holds ("lmlab-transformer",
"lmlab-acdit", "lmlab-quantized", "lmlab-trainer"); ``lmlab.load`` reads every kind (``lmlab.loader``).
Folders are written to ``<dir>.tmp`` and renamed into place, so a killed save never leaves a half-written
checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

META = "meta.json"
WEIGHTS = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign, or of another config."""


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied embeddings): keep the first name of each storage."""
    seen: dict[tuple, str] = {}
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            continue
        seen[key] = k
        out[k] = v.detach().contiguous().cpu()
    return out


def save(path: str | Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> Path:
    """Atomically write ``{file_stem: state_dict}`` as safetensors files plus meta.json into folder ``path``."""
    if not meta.get("kind"):
        raise ValueError("checkpoint meta needs a 'kind' (e.g. 'lmlab-transformer'): lmlab.load dispatches on it")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for stem, state in tensors.items():
        save_file(_unshared(state), str(tmp / f"{stem}.safetensors"))
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / META).is_file():
        raise CheckpointError(f"{path} is not an lmlab checkpoint (no {META})")
    try:
        return json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / META} is not valid JSON ({e})") from None


def load_tensors(path: str | Path, stem: str = "model") -> dict[str, torch.Tensor]:
    f = Path(path) / f"{stem}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"checkpoint file missing: {f}")
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f} is truncated or not a safetensors file ({e})") from None


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint",
              only: set[str] | None = None) -> None:
    """Strict load that names missing / unexpected / mis-shaped keys (tied weights may be absent).

    ``only``: the keys the checkpoint is expected to hold (e.g. the trainable parameters); the rest of the
    model is left as it is.
    """
    own = model.state_dict()
    if only is not None:
        own = {k: v for k, v in own.items() if k in only}
    tied = {k for k, v in own.items() for k2, v2 in own.items()
            if k != k2 and v.data_ptr() == v2.data_ptr() and k2 in state}
    missing = sorted(set(own) - set(state) - tied)
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if bad:
            parts.append("shape mismatch " + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                         for k in bad[:5]))
        raise CheckpointError(f"{where} does not match the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)


def save_model(path: str | Path, model: torch.nn.Module, config: dict[str, Any], kind: str | None = None,
               **meta: Any) -> Path:
    """Save ``model`` with its config; ``kind`` defaults to the model class's ``checkpoint_kind``."""
    kind = kind or getattr(model, "checkpoint_kind", None)
    if not kind:
        raise ValueError(f"{type(model).__name__} has no checkpoint_kind; pass kind=... so lmlab.load can read it")
    return save(path, {"model": model.state_dict()}, {"config": config, **meta, "kind": kind})


def load_model(path: str | Path, model: torch.nn.Module, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load weights into ``model``; if ``config`` is given it must equal the saved one. Returns meta."""
    meta = read_meta(path)
    if config is not None and meta.get("config") != config:
        saved = meta.get("config") or {}
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise CheckpointError(f"checkpoint {path} was saved with another config (differs in: {diff})")
    load_into(model, load_tensors(path), str(path))
    return meta


# ---------------------------------------------------------------- optimizer state as flat tensors

def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> (tensors, json-able scalars) so it can be stored without pickle."""
    sd = opt.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars["state"].setdefault(str(pid), {})[k] = v
    return tensors, scalars


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for pid, st in scalars["state"].items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
