"""THE loader: ``lmlab.load(spec) -> (model, tokenizer, meta)`` for everything lmlab writes and for pretrained LMs.

``spec`` is one of

- an lmlab folder: a run folder of ``lmlab train`` (holding ``model/``) or a model folder (``meta.json``);
- a Hugging Face folder (``config.json``, ``save_pretrained`` layout);
- a PEFT LoRA adapter folder (``adapter_config.json``, no ``meta.json``): its base model
  (``base_model_name_or_path``: a local folder or a known pretrained name, loaded by ``load``) with the adapter
  applied (``adapters.peft_io.load_peft``); a hub id that is not a local folder is refused (no downloads);
- a ``.gguf`` file or a known pretrained name (``smollm2-135m``, ``gemma3-270m``; ``core.hf.PRETRAINED``).

An lmlab folder says what it holds in ``meta.json["kind"]``; ``KINDS`` maps each kind to its reader (lazy
``"module:attr"`` strings: loading a checkpoint imports its module, nothing is registered by side effect):

    lmlab-transformer   core Transformer weights + its TransformerConfig ("config")
    lmlab-acdit         ACDiT weights + the job that trained it ("job")
    lmlab-mom           Mixture-of-Modules weights + its TransformerConfig ("config") and MoMConfig ("mom")
    lmlab-quantized     a compressed model (``compression.saving``)
    lmlab-adapter       adapter weights (``adapters.tuner``) applied onto the model ``meta["base"]`` names
    lmlab-trainer       a training checkpoint (resume state): refused, pointing at the run's ``model/`` folder

Checkpoints written before ``kind`` existed still load: a "config" table alone is a Transformer, ``"format": 1``
is a quantized model. The tokenizer is the one saved beside the model (``tokenizer.json`` of lmlab's
tokenizers, or Hugging Face tokenizer files), or None. ``meta`` is the folder's meta.json (or, for Hugging Face
models, ``{"kind": "hf", "source": ...}``; for PEFT folders, ``{"kind": "peft", "base": ..., "config": ...}``,
``config`` being adapter_config.json) plus ``"source"``, the resolved path or name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmlab.core.checkpoint import META, CheckpointError, read_meta, recover
from lmlab.core.registry import load_target

KINDS = {
    "lmlab-transformer": "lmlab.core.transformer:from_checkpoint",
    "lmlab-acdit": "lmlab.models.acdit.model:from_checkpoint",
    "lmlab-mom": "lmlab.models.mom.model:from_checkpoint",
    "lmlab-quantized": "lmlab.compression.saving:from_checkpoint",
    "lmlab-adapter": "lmlab.adapters.tuner:from_checkpoint",
}
PEFT_LOADER = "lmlab.adapters.peft_io:load_peft"
PEFT_CONFIG = "adapter_config.json"
ON_BASE = ("lmlab-adapter",)  # kinds applied onto the model meta["base"] names (loaded first, with its tokenizer)
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def kind_of(meta: dict[str, Any], where: Path) -> str:
    """The checkpoint kind, with the rules for checkpoints written before ``kind`` was mandatory."""
    kind = meta.get("kind")
    if kind is None and meta.get("format") == 1 and "modules" in meta:
        return "lmlab-quantized"
    if kind is None and isinstance(meta.get("config"), dict):
        return "lmlab-transformer"
    if kind == "lmlab-trainer":
        raise CheckpointError(f"{where} is a training checkpoint (resume state); load the run's model/ folder "
                              "instead")
    if kind not in KINDS:
        raise CheckpointError(f"{where}/{META} has kind {kind!r}; lmlab reads {', '.join(KINDS)}")
    return kind


def model_folder(path: Path) -> Path | None:
    """The folder holding meta.json: ``path`` itself or its ``model/`` (a run folder); None if neither."""
    for folder in (path, path / "model"):
        if (recover(folder) / META).is_file():
            return folder
    return None


def lmlab_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in ``folder`` or its parent (run folder): lmlab's tokenizer.json or a HF one."""
    from lmlab.core.tokenizer import HFTokenizer, load_tokenizer

    for d in (folder, folder.parent):
        if not (d / "tokenizer.json").is_file():
            continue
        if (d / "tokenizer_config.json").is_file():  # written by transformers' save_pretrained, never by lmlab
            from transformers import AutoTokenizer

            return HFTokenizer(AutoTokenizer.from_pretrained(d, local_files_only=True))
        return load_tokenizer(d)  # a bad file is a TokenizerFileError naming it
    return None


def load_peft_folder(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, meta) of a PEFT LoRA folder: ``load(base_model_name_or_path)`` + ``load_peft``."""
    from lmlab.core.hf import PRETRAINED

    try:
        config = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{folder / PEFT_CONFIG} is not valid JSON ({e})") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise CheckpointError(f"{folder / PEFT_CONFIG} names no base_model_name_or_path; load the base and apply it "
                              "with lmlab.adapters.peft_io.load_peft(folder, base)")
    if base not in PRETRAINED and not Path(base).expanduser().exists():
        raise CheckpointError(f"{folder / PEFT_CONFIG} names base model {base!r}, which is neither a local folder "
                              f"nor a known pretrained name ({', '.join(PRETRAINED)}); lmlab downloads nothing: "
                              "save the base model to a local folder and set base_model_name_or_path to it, or "
                              "load it yourself and call lmlab.adapters.peft_io.load_peft(folder, base)")
    model, tok, _ = load(base)
    model = load_target(PEFT_LOADER)(folder, model)
    return model, lmlab_tokenizer(folder) or tok, {"kind": "peft", "base": base, "config": config}


def load(spec: str | Path, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer or None, meta) for any model lmlab writes or can read (module docstring).

    ``device``: where the model goes (default: where it was built, the CPU); ``dtype``: cast floating weights.
    """
    key = str(spec)
    path = Path(key).expanduser()
    folder = model_folder(path)
    if folder is not None:
        meta = read_meta(folder)
        kind = kind_of(meta, folder)
        if kind in ON_BASE:
            if not meta.get("base"):
                raise CheckpointError(f"{folder} holds an adapter saved without its base model; load the base and "
                                      "apply it with lmlab.adapters.load(folder, base)")
            base, tok, _ = load(meta["base"])
            model = load_target(KINDS[kind])(folder, meta, base)
            tok = lmlab_tokenizer(folder) or tok
        else:
            model = load_target(KINDS[kind])(folder, meta)
            tok = lmlab_tokenizer(folder)
        meta = {**meta, "kind": kind, "source": str(folder)}
        if (folder.parent / "task.json").is_file() and folder.name == "model":
            meta["task"] = json.loads((folder.parent / "task.json").read_text(encoding="utf-8"))
    elif (path / PEFT_CONFIG).is_file():
        model, tok, meta = load_peft_folder(path)
        meta["source"] = str(path)
    else:
        from lmlab.core.hf import PRETRAINED, load_pretrained
        from lmlab.core.tokenizer import HFTokenizer

        known = key in PRETRAINED or (path.suffix == ".gguf" and path.is_file()) or (path / "config.json").is_file()
        if not known:
            raise ValueError(f"{key!r} is neither an lmlab folder (meta.json, or a run folder with model/), a "
                             f"Hugging Face folder (config.json), a PEFT adapter folder ({PEFT_CONFIG}), a .gguf "
                             f"file, nor a known pretrained model ({', '.join(PRETRAINED)})")
        model, hf_tok = load_pretrained(key)
        tok = HFTokenizer(hf_tok) if hf_tok is not None else None
        meta = {"kind": "hf", "source": key}
    if dtype is not None:
        model = model.to(dtype=dtype)
    if device is not None:
        from lmlab.core.runtime import resolve_device

        model = model.to(resolve_device(device))
    return model.eval(), tok, meta
