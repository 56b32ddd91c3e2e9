"""Checkpoints as safetensors weights + a JSON sidecar (kind, config, step, metadata); never pickle.

A checkpoint is a folder ``<dir>/`` holding ``model.safetensors``, optionally ``optim.safetensors`` (flattened
optimizer state), and ``meta.json`` with a mandatory ``kind`` saying what the folder holds ("lmlab-transformer",
"lmlab-acdit", "lmlab-quantized", "lmlab-trainer"); ``lmlab.load`` reads every kind (``lmlab.loader``).
``save`` replaces lmlab's own output (meta.json with a kind in ``KINDS``) as a whole: ``<dir>.tmp`` is written
(meta.json last: its presence means complete), then ``<dir>`` -> ``<dir>.old``, ``<dir>.tmp`` -> ``<dir>``; after a
kill between the renames ``recover`` (called by every reader) puts ``<dir>.tmp`` back. A folder holding anything
else is refused unless ``overwrite``: then the files are written beside the others, each atomically, removing none.
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

from .runtime import atomic_write

META = "meta.json"
WEIGHTS = "model.safetensors"
# loader.KINDS + resume state
KINDS = ("lmlab-transformer", "lmlab-acdit", "lmlab-mom", "lmlab-quantized", "lmlab-adapter", "lmlab-trainer")
BESIDE = "beside_other_files"  # meta.json key: lmlab's files share this folder with files lmlab did not write


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign, or of another config."""


class OutputFolderError(ValueError):
    """An output path lmlab must not write: a folder holding files lmlab did not write, or a file in the way."""


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


def _own_meta(folder: Path) -> dict[str, Any] | None:
    """meta.json of ``folder`` if it names a kind lmlab writes, else None (absent, unreadable, foreign)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, not UTF-8
        return None
    return meta if isinstance(meta, dict) and meta.get("kind") in KINDS else None


def output_mode(path: str | Path, overwrite: bool = False) -> str:
    """How ``save`` writes folder ``path``: "new" (absent or empty), "replace" (lmlab's own output, as a whole) or
    "beside" (next to files lmlab did not write: only with ``overwrite``, else ``OutputFolderError``)."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputFolderError(f"cannot write folder {path}: {blocker} is a file, not a folder")
    if not path.exists() or not any(path.iterdir()):
        return "new"
    meta = _own_meta(path)
    if meta is not None:
        return "beside" if meta.get(BESIDE) else "replace"
    if overwrite:
        return "beside"
    names = sorted(p.name for p in path.iterdir())
    raise OutputFolderError(f"{path} already holds files lmlab did not write ({', '.join(names[:5])}"
                            f"{', ...' if len(names) > 5 else ''}); write to another folder (--out), or pass "
                            "overwrite=True (--overwrite) to add lmlab's files next to them, removing nothing")


def recover(path: str | Path) -> Path:
    """The folder to read for ``path``: after a save killed between its renames (no ``<dir>``, a complete
    ``<dir>.tmp``), ``<dir>.tmp`` is put back first (or, where it cannot be renamed, returned)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if path.exists() or _own_meta(tmp) is None:
        return path
    try:
        os.replace(tmp, path)
    except OSError:  # another reader put it back first, or a read-only folder
        return path if path.is_dir() else tmp
    return path


def _discard(folder: Path) -> None:
    """Remove a ``<dir>.tmp`` / ``<dir>.old`` left by a save; refuse one holding what a save does not write."""
    if not folder.exists():
        return
    ours = folder.is_dir() and not folder.is_symlink() and (_own_meta(folder) is not None or all(
        e.is_file() and (e.name == META or e.suffix in (".safetensors", ".tmp")) for e in folder.iterdir()))
    if not ours:
        held = ", ".join(sorted(e.name for e in folder.iterdir())[:5]) if folder.is_dir() else "a file"
        raise OutputFolderError(f"{folder} is in the way (lmlab saves through it) and holds what lmlab did not "
                                f"write ({held}): move it away or choose another output folder")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name == META):  # meta.json last: still recognisable
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    folder.rmdir()


def _write_files(folder: Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> None:
    """Each safetensors file through a temporary file renamed into place, then meta.json (atomically, last)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, state in tensors.items():
        part = folder / f".{stem}.safetensors.{os.getpid()}.tmp"
        try:
            save_file(_unshared(state), str(part))
            with open(part, "rb") as f:  # on disk before meta.json says the folder is complete
                os.fsync(f.fileno())
            os.replace(part, folder / f"{stem}.safetensors")
        finally:
            part.unlink(missing_ok=True)
    atomic_write(folder / META, json.dumps(meta, indent=2, sort_keys=True))


def save(path: str | Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any], *,
         overwrite: bool = False) -> Path:
    """Write ``{file_stem: state_dict}`` as safetensors files plus meta.json into folder ``path`` (module doc)."""
    if not meta.get("kind"):
        raise ValueError("checkpoint meta needs a 'kind' (e.g. 'lmlab-transformer'): lmlab.load dispatches on it")
    path = Path(path)
    recover(path)
    if output_mode(path, overwrite) == "beside":
        _write_files(path, tensors, {**meta, BESIDE: True})
        return path
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    _discard(tmp)
    _discard(old)
    _write_files(tmp, tensors, meta)
    if path.exists():
        os.replace(path, old)
    try:  # killed here: a complete <dir>.tmp and no <dir>, which recover() puts back
        os.replace(tmp, path)
    except FileNotFoundError:  # a reader's recover() did
        if not path.is_dir():
            raise
    _discard(old)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of checkpoint folder ``path`` (after ``recover``)."""
    path = recover(path)
    if not (path / META).is_file():
        raise CheckpointError(f"{path} is not an lmlab checkpoint (no {META})")
    try:
        return json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / META} is not valid JSON ({e})") from None


def load_tensors(path: str | Path, stem: str = "model") -> dict[str, torch.Tensor]:
    f = recover(path) / f"{stem}.safetensors"
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
