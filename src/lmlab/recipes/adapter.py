"""Adapter fine-tuning on any model ``lmlab.load`` reads (``lmlab train adapter``), and the adapter folder tools
behind ``lmlab adapter info`` / ``lmlab adapter merge``.

    lmlab train adapter --model runs/lm --adapter.method malora --adapter.rank 8 --data.source notes.txt \\
        --train.steps 200 --out runs/lm-malora
    lmlab adapter info runs/lm-malora
    lmlab adapter merge runs/lm-lora --out runs/lm-merged        # unrouted adapters (lora) only

The base model (an lmlab run or model folder, a Hugging Face folder, a .gguf or a known pretrained name) is
frozen; the adapter (``lmlab.adapters``, one ``Config`` for LoRA, MoLoRA, HydraLoRA and MALoRA) is trained by the
shared ``Trainer`` with the causal_lm objective on text: ``corpus_en`` or a UTF-8 file (its tail held out, as in
``lmlab train lm``), tokenized with the base model's own tokenizer (bytes only for a model without one whose
vocabulary covers the 256 byte ids). The recipe is named on the command line (``lmlab train adapter
--adapter.method malora``), like every other recipe.

``out`` is a run folder laid out as ``lmlab train lm`` lays one out: ``job.json``, ``metrics.jsonl``,
``checkpoint/`` (trainable-only resume state: running the same job again resumes exactly, another job is refused)
and ``model/``, the adapter (kind lmlab-adapter) whose ``base`` is the model spec, a path made absolute, so
``lmlab.load(out)`` and ``lmlab generate --model out`` rebuild base + adapter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab import adapters
from lmlab.adapters.layers import Config
from lmlab.adapters.tuner import KIND as ADAPTER_KIND
from lmlab.adapters.tuner import AdaptedModel
from lmlab.core import checkpoint as ckpt
from lmlab.core.config import param, to_dict
from lmlab.core.data import TokenWindows
from lmlab.core.runtime import Timer, atomic_write, seed_everything, set_threads
from lmlab.core.tokenizer import ByteTokenizer, HFTokenizer, fingerprint
from lmlab.core.train import TrainConfig, Trainer
from lmlab.loader import load, model_folder
from lmlab.objectives.causal_lm import CausalLM

from .text import DataConfig, EtaHint, text_splits

logger = logging.getLogger(__name__)

RUN_ENTRIES = {"job.json", "metrics.jsonl", "checkpoint", "model"}  # what a run folder of this recipe holds


@dataclass
class AdapterData:
    """The text (``text_splits`` of ``lmlab train lm``), in the base model's tokens."""

    source: str = param("corpus_en", "corpus_en | a path to a UTF-8 text file")
    max_bytes: int = param(0, "cap on the corpus bytes used (0 = all)")
    seq_len: int = param(128, "tokens per training window (at most the model's context)")
    batch_size: int = param(8, "windows per micro-batch")
    val_fraction: float = param(0.05, "for a text file: share of the file (its tail) held out")


@dataclass
class AdapterJob:
    """``lmlab train adapter``: an adapter trained on a frozen model with the causal_lm objective."""

    model: str = param("", "base model: run or model folder, Hugging Face folder, .gguf or a known name")
    adapter: Config = param(Config(), "the adapter (method, rank, target_modules, experts)")
    train: TrainConfig = param(TrainConfig(steps=200, lr=1e-3, warmup_steps=20), "optimisation")
    data: AdapterData = param(AdapterData(), "text")
    seed: int = param(0, "seed of everything outside the adapter's own init (adapter.seed)")
    threads: int = param(1, "torch intra-op threads")
    out: str = param("", "run folder: job.json, metrics.jsonl, checkpoint/ and model/ (the adapter); '' = none")


def base_spec(spec: str) -> str:
    """``spec`` as ``lmlab.load`` reads it later from anywhere: an existing path made absolute, a name kept."""
    if not spec:
        raise ValueError("--model is required: a run or model folder, a Hugging Face folder, a .gguf or a known "
                         "model name")
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def run_folder(job: AdapterJob) -> Path | None:
    """The run folder (``out``, or ``train.run_dir``); refuses two different ones and a folder holding other
    files (an lmlab model folder there would shadow the adapter for ``lmlab.load``)."""
    out, run_dir = job.out, job.train.run_dir
    if out and run_dir and Path(out).resolve() != Path(run_dir).resolve():
        raise ValueError(f"out {out!r} and train.run_dir {run_dir!r} name two folders; the run folder is --out")
    if not (out or run_dir):
        return None
    folder = Path(out or run_dir)
    if folder.exists() and not folder.is_dir():
        raise ckpt.OutputFolderError(f"out {folder} is a file, not a folder")
    other = sorted(e.name for e in folder.iterdir() if e.name.removesuffix(".tmp").removesuffix(".old")
                   not in RUN_ENTRIES) if folder.is_dir() else []  # <name>.tmp / .old: a save in progress
    if other:
        raise ckpt.OutputFolderError(f"out {folder} holds files a run folder does not ({', '.join(other[:5])}); "
                                     f"a run folder holds only {', '.join(sorted(RUN_ENTRIES))}: choose another "
                                     "--out")
    job_file, model_dir = folder / "job.json", folder / "model"
    other_job = job_file.is_file() and "adapter" not in json.loads(job_file.read_text(encoding="utf-8"))
    other_model = (model_dir / ckpt.META).is_file() and ckpt.read_meta(model_dir).get("kind") != ADAPTER_KIND
    if other_job or other_model:
        raise ckpt.OutputFolderError(f"out {folder} is the run folder of another recipe (its model/ is no adapter); "
                                     "choose another --out")
    return folder


def text_tokenizer(tok: Any, model: Any, spec: str) -> Any:
    """The base model's tokenizer; bytes for a model without one whose vocabulary covers ids 0..255."""
    if tok is not None:
        return tok
    if model.vocab_size < 256:
        raise ValueError(f"model {spec!r} has no tokenizer and a vocabulary of {model.vocab_size} < 256 ids, so its "
                         "text cannot be tokenized (not even as bytes); save its tokenizer.json beside it")
    logger.warning("model %r has no tokenizer: training on UTF-8 bytes (ids 0..255)", spec)
    return ByteTokenizer()


def token_windows(job: AdapterJob, tok: Any, context: int) -> tuple[TokenWindows, TokenWindows, int]:
    """(training windows, held-out windows, held-out tokens) of the job's text in the base tokenizer's ids."""
    d = job.data
    if not 1 <= d.seq_len <= context:
        raise ValueError(f"data.seq_len must be in 1..{context} (the model's context), got {d.seq_len}")
    train_text, val_text = text_splits(DataConfig(source=d.source, max_bytes=d.max_bytes,
                                                  val_fraction=d.val_fraction))
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    val_ids = np.asarray(tok.encode(val_text), dtype=np.int64)
    for what, ids in (("training", train_ids), ("held-out", val_ids)):
        if len(ids) < d.seq_len + 2:
            raise ValueError(f"data.source {d.source!r}: the {what} text is {len(ids)} tokens, fewer than "
                             f"data.seq_len + 2 = {d.seq_len + 2}; give more text, a larger data.val_fraction or a "
                             "smaller data.seq_len")
    return (TokenWindows(train_ids, d.batch_size, d.seq_len, seed=job.train.seed),
            TokenWindows(val_ids, d.batch_size, d.seq_len), len(val_ids))


def train_adapter(job: AdapterJob) -> dict[str, Any]:
    """Train ``job.adapter`` on the frozen ``job.model``; returns val loss before / after, parameter counts,
    seconds. With a run folder, the adapter is saved to ``<out>/model`` (module docstring)."""
    return fit_adapter(job)[1]


def fit_adapter(job: AdapterJob) -> tuple[AdaptedModel, dict[str, Any]]:
    """``train_adapter`` that also returns the trained model (base + adapter, in eval mode)."""
    set_threads(job.threads)
    spec = base_spec(job.model)
    folder = run_folder(job)
    base, base_tok, _ = load(spec)
    tok = text_tokenizer(base_tok, base, job.model)
    train_data, val_data, val_tokens = token_windows(job, tok, int(base.max_seq_len))
    seed_everything(job.seed)
    model = adapters.apply(base, job.adapter)
    train_cfg = dataclasses.replace(job.train, run_dir=str(folder) if folder else "")
    run = {"seed": job.seed, "data": to_dict(job.data), "tokenizer": fingerprint(tok)}
    trainer = Trainer(model, CausalLM(), train_data, train_cfg, eval_data=lambda: val_data.sequential(),
                      model_config={"base": spec, "adapter": to_dict(job.adapter)}, run_config=run,
                      hooks=[EtaHint()])
    if folder is not None:
        atomic_write(folder / "job.json", json.dumps(to_dict(job), indent=2))
    before = trainer.evaluate().get("eval_loss", float("nan"))  # B = 0 at init: the base model's loss
    with Timer() as t:
        history = trainer.fit()
    after = (history[-1] if history else trainer.evaluate()).get("eval_loss", float("nan"))
    counts = model.counts()
    if folder is not None:
        adapters.save(model, folder / "model", base=spec, job=to_dict(job))
        if base_tok is None:  # the base has none: lmlab.load(out) gets the bytes the adapter was trained on
            tok.save(folder / "model" / "tokenizer.json")
    metrics = {"method": job.adapter.method, "trainable_params": counts["trainable"], "total_params": counts["total"],
               "trainable_share": counts["trainable"] / counts["total"], "val_tokens": val_tokens,
               "steps": trainer.step, "resumed_from": trainer.resumed_from, "train_loss": trainer.last_loss,
               "val_loss_before": before, "val_loss_after": after, "seconds": t.seconds}
    return model.eval(), metrics


# ---------------------------------------------------------------- adapter folders: info and merge


def adapter_folder(path: str | Path) -> Path:
    """The folder holding the adapter's meta.json: ``path`` or its ``model/`` (a run folder of this recipe)."""
    folder = model_folder(Path(path).expanduser())
    if folder is None:
        raise FileNotFoundError(f"{path} holds no adapter: neither it nor {Path(path) / 'model'} has a meta.json")
    meta = ckpt.read_meta(folder)
    if meta.get("kind") != ADAPTER_KIND:
        raise ValueError(f"{folder} holds kind {meta.get('kind')!r}, not an adapter ({ADAPTER_KIND})")
    return folder


def adapter_info(path: str | Path) -> dict[str, Any]:
    """What an adapter folder holds, from its meta.json alone (the base model is not loaded)."""
    folder = adapter_folder(path)
    meta = ckpt.read_meta(folder)
    cfg = meta.get("config") or {}
    counts = meta.get("counts") or {}
    return {"folder": str(folder), "method": cfg.get("method"), "base": meta.get("base"), "config": cfg,
            "targets": meta.get("targets") or [], "trainable": counts.get("trainable"), "total": counts.get("total")}


def out_mode(out: Path) -> str:
    """``checkpoint.output_mode`` of ``out`` ("new" or "replace"); a folder of other files is refused."""
    try:
        return ckpt.output_mode(out)
    except ckpt.OutputFolderError:
        raise ckpt.OutputFolderError(f"out {out} is not empty and holds files lmlab did not write; merge into a new "
                                     "folder") from None


def _save_hf(model: Any, tok: Any, out: Path) -> None:
    """``save_pretrained`` of a Hugging Face model (+ tokenizer) into a new folder ``out``, renamed into place."""
    if out_mode(out) != "new":  # lmlab's meta.json there would shadow the Hugging Face files
        raise ckpt.OutputFolderError(f"out {out} is not empty; a merged Hugging Face model goes into a new folder")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    hf_tok = getattr(tok, "tok", None)
    if hasattr(hf_tok, "save_pretrained"):
        hf_tok.save_pretrained(tmp)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


def merge_adapter(path: str | Path, out: str | Path) -> dict[str, Any]:
    """Fold the adapter in ``path`` into its base and save the plain base model to ``out`` (``lmlab.load`` reads
    it): an lmlab Transformer with ``save_model`` (+ its tokenizer.json), a Hugging Face model with
    ``save_pretrained`` (+ its tokenizer). Routed adapters (molora, hydralora, malora) are refused."""
    folder, out = adapter_folder(path), Path(out)
    out_mode(out)  # before the model is loaded
    model, tok, meta = load(folder)
    method = model.configs[model.active].method
    merged = model.merge_and_unload()  # a routed adapter: ValueError naming why no single weight equals it
    if getattr(merged, "checkpoint_kind", None) == "lmlab-transformer":
        ckpt.save_model(out, merged, to_dict(merged.cfg), merged_adapter=str(folder))
        if tok is not None and not isinstance(tok, HFTokenizer):  # lmlab's own tokenizers
            tok.save(out / "tokenizer.json")
    elif hasattr(getattr(merged, "model", None), "save_pretrained"):
        _save_hf(merged.model, tok, out)
    else:
        raise ValueError(f"merge saves lmlab Transformer and Hugging Face bases; the base of {folder} is a "
                         f"{type(merged).__name__}")
    return {"out": str(out), "method": method, "base": meta.get("base"), "layers": len(meta.get("targets") or []),
            "params": sum(p.numel() for p in merged.parameters())}
