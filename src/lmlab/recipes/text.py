"""Text language-model training: ``train_lm(TextJob)`` (``lmlab train lm``, ``repro/causal_lm``).

The job mirrors a TOML file: top-level ``objective``, tables ``[model]`` (TransformerConfig), ``[train]``
(TrainConfig) and ``[data]`` (DataConfig). The text is ``corpus_en`` (train/val split fixed by document hash) or
a UTF-8 file (its tail held out); the tokenizer is bytes or a byte-level BPE trained on the training split. The
report compares validation bits per byte with a unigram model of the training tokens. Launch under
``torchrun --nproc_per_node N`` for DistributedDataParallel.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.core.checkpoint import save_model
from lmlab.core.config import param, to_dict
from lmlab.core.data import PackedDocs, TokenWindows
from lmlab.core.metrics import bits_per_byte
from lmlab.core.runtime import Timer, atomic_write, format_seconds, seed_everything, set_threads
from lmlab.core.tokenizer import BPETokenizer, ByteTokenizer, fingerprint
from lmlab.core.train import TrainConfig, Trainer, init_distributed
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.models.mom import MoM, MoMConfig
from lmlab.objectives import REGISTRY as OBJECTIVES

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    source: str = param("corpus_en", "corpus_en | a path to a UTF-8 text file")
    tokenizer: str = param("bpe", "byte | bpe (byte-level BPE trained on the training split)",
                           choices=("byte", "bpe"))
    bpe_vocab: int = param(4096, "BPE vocabulary size")
    max_bytes: int = param(0, "cap on the corpus bytes used (0 = all)")
    seq_len: int = param(256, "tokens per training window")
    batch_size: int = param(16, "windows per micro-batch")
    val_fraction: float = param(0.05, "for a text file: share of the file (its tail) held out")
    packing: str = param("windows", "windows: random windows of the token stream | documents: whole documents "
                         "packed into rows with a block-causal mask and per-sample loss weights (core.data.PackedDocs)"
                         "; documents are corpus_en's, or a text file's paragraphs split at blank lines",
                         choices=("windows", "documents"))


@dataclass
class TextJob:
    """``lmlab train lm``: a core Transformer trained on text with an objective (default causal_lm)."""

    objective: str = param("causal_lm", "objective registry name (see `lmlab list objectives`)")
    seed: int = param(0, "seed of the model initialisation")
    threads: int = param(1, "torch intra-op threads")
    model: TransformerConfig = param(TransformerConfig(), "model shape (vocab_size follows the tokenizer)")
    arch: str = param("transformer", "transformer: the core Transformer; mom: Mixture-of-Modules on [model]'s "
                      "shapes with the [mom] table", choices=("transformer", "mom"))
    mom: MoMConfig = param(MoMConfig(), "Mixture-of-Modules pools and routers (arch = mom)")
    train: TrainConfig = param(TrainConfig(), "optimisation")
    data: DataConfig = param(DataConfig(), "data")


def build_model(job: TextJob) -> Transformer | MoM:
    """The job's model: the core Transformer, or a MoM (arch = mom) on the same [model] shapes."""
    if job.arch not in ("transformer", "mom"):
        raise ValueError(f"TextJob.arch {job.arch!r}; expected 'transformer' or 'mom'")
    return MoM(job.model, job.mom) if job.arch == "mom" else Transformer(job.model)


def model_meta(job: TextJob) -> dict[str, Any]:
    """What the job's model checkpoint carries besides its [model] config (a MoM's [mom] table)."""
    return {"mom": to_dict(job.mom)} if job.arch == "mom" else {}


def text_splits(data: DataConfig) -> tuple[str, str]:
    """(train text, validation text) for the configured source."""
    if data.source == "corpus_en":
        from lmlab.tasks import corpus_en

        ccfg = corpus_en.Config(max_bytes=data.max_bytes) if data.max_bytes else corpus_en.Config()
        corpus_en.build(ccfg)
        return corpus_en.load("train", ccfg), corpus_en.load("val", ccfg)
    path = Path(data.source)
    if not path.is_file():
        raise FileNotFoundError(f"data.source {data.source!r} is neither 'corpus_en' nor an existing text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data.source {path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset "
                         f"{e.start})") from None
    if data.max_bytes:
        text = text[: data.max_bytes]
    cut = int(len(text) * (1 - data.val_fraction))
    return text[:cut], text[cut:]


def build_tokenizer(data: DataConfig, train_text: str) -> ByteTokenizer | BPETokenizer:
    if data.tokenizer == "byte":
        return ByteTokenizer()
    chunks = [train_text[i:i + 100_000] for i in range(0, len(train_text), 100_000)]
    return BPETokenizer.train(chunks, vocab_size=data.bpe_vocab)


def text_documents(data: DataConfig, split: str, text: str) -> list[str]:
    """The documents of one split for ``packing = "documents"``: corpus_en's own documents, else the text's
    paragraphs (split at blank lines)."""
    if data.source == "corpus_en":
        from lmlab.tasks import corpus_en

        ccfg = corpus_en.Config(max_bytes=data.max_bytes) if data.max_bytes else corpus_en.Config()
        return [t for _, _, t in corpus_en.documents(split, ccfg)]
    return [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def batch_sources(data: DataConfig, tok: ByteTokenizer | BPETokenizer, ids: tuple[np.ndarray, np.ndarray],
                  texts: tuple[str, str], seed: int) -> tuple[Any, Any]:
    """(training source, validation source): token windows, or packed documents (those under 2 tokens dropped)."""
    if data.packing == "windows":
        return (TokenWindows(ids[0], data.batch_size, data.seq_len, seed=seed),
                TokenWindows(ids[1], data.batch_size, data.seq_len))
    out = []
    for split, text in zip(("train", "val"), texts):
        docs = [d for d in (tok.encode(t) for t in text_documents(data, split, text)) if len(d) >= 2]
        out.append(PackedDocs(docs, data.batch_size, data.seq_len, seed=seed if split == "train" else 0))
    return out[0], out[1]


class EtaHint:
    """Step hook: once ``after_s`` seconds have run, warn when the rest will take longer than ``limit_s`` on a
    CPU, naming the flags of a smaller run (defaults sized for a GPU would otherwise run silently for hours)."""

    def __init__(self, after_s: float = 20.0, limit_s: float = 300.0):
        self.after_s, self.limit_s = after_s, limit_s
        self.t0: float | None = None
        self.step0 = 0
        self.checked = False

    def __call__(self, trainer: Trainer, rec: dict[str, Any]) -> None:
        if self.t0 is None:  # timed from the end of the first step (warm-up excluded)
            self.t0, self.step0 = time.monotonic(), trainer.step
            return
        elapsed = time.monotonic() - self.t0
        if self.checked or elapsed < self.after_s:
            return
        self.checked = True
        rest = elapsed / (trainer.step - self.step0) * (trainer.cfg.steps - trainer.step)
        if rest > self.limit_s and trainer.device.type == "cpu":
            logger.warning("this run needs about %s more on this CPU (%d steps to go); for a quick run use e.g. "
                           "--train.steps 200 --model.dim 128 --model.n-layers 2 --data.max-bytes 2000000",
                           format_seconds(rest), trainer.cfg.steps - trainer.step)


def train_lm(job: TextJob) -> dict[str, Any]:
    """Train and evaluate; returns metrics (val loss in nats/token, val bits per byte, throughput).

    With ``job.train.run_dir`` the run folder gets ``job.json`` first and, at the end, ``model/`` (weights,
    config, tokenizer.json: what ``lmlab.load`` reads). Running the same job again resumes from the run's
    checkpoint (a finished run is evaluated and saved again); a job whose data, tokenizer, objective or model
    differ from the checkpoint's is refused with the differing keys named. ``first_loss`` / ``loss_drop`` cover
    the whole run, across resumes.
    """
    set_threads(job.threads)
    rank, _ = init_distributed(job.train.device)
    logger.info("preparing text: %s", job.data.source)
    train_text, val_text = text_splits(job.data)
    logger.info("tokenizer: %s on %.1f MB of training text", job.data.tokenizer, len(train_text) / 1e6)
    tok = build_tokenizer(job.data, train_text)
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    val_ids = np.asarray(tok.encode(val_text), dtype=np.int64)
    job.model.vocab_size = tok.vocab_size
    seed_everything(job.seed)
    model = build_model(job)
    objective = OBJECTIVES.get(job.objective)()
    d = job.data
    train_data, val_data = batch_sources(d, tok, (train_ids, val_ids), (train_text, val_text), job.train.seed)
    run = {"objective": job.objective, "seed": job.seed, "data": to_dict(d), "tokenizer": fingerprint(tok),
           **model_meta(job)}
    trainer = Trainer(model, objective, train_data, job.train, eval_data=lambda: val_data.sequential(),
                      model_config=to_dict(job.model), run_config=run, hooks=[EtaHint()])
    if job.train.run_dir and rank == 0:
        atomic_write(Path(job.train.run_dir) / "job.json", json.dumps(to_dict(job), indent=2))
    with Timer() as t:
        history = trainer.fit()
    final = history[-1] if history else trainer.evaluate()  # a finished run resumed: evaluate only
    val_loss = final.get("eval_loss", float("nan"))
    bytes_per_token = len(val_text.encode()) / max(len(val_ids), 1)
    # baseline: a unigram model of the training tokens (add-one smoothing) scored on the validation tokens
    counts = np.bincount(train_ids, minlength=tok.vocab_size) + 1.0
    unigram_nll = float(-np.log(counts / counts.sum())[val_ids].mean())
    tokens = len(history) * job.train.grad_accum * d.batch_size * d.seq_len
    first, last = trainer.first_loss, trainer.last_loss
    out = {"params": model.num_params(), "params_non_embedding": model.num_params(non_embedding=True),
           "vocab_size": tok.vocab_size, "train_tokens": len(train_ids), "val_tokens": len(val_ids),
           "steps": trainer.step, "resumed_from": trainer.resumed_from, "train_loss": last, "val_loss": val_loss,
           # bits per byte = nats per token / (ln 2 * bytes per token), bytes per token measured on the val text
           "val_bpb": bits_per_byte(val_loss, bytes_per_token) if math.isfinite(val_loss) else None,
           "unigram_bpb": bits_per_byte(unigram_nll, bytes_per_token), "first_loss": first,
           "loss_drop": first - last if first is not None and last is not None else None,
           "bytes_per_token": bytes_per_token, "tokens_per_s": tokens / t.seconds if t.seconds and tokens else None,
           "seconds": t.seconds}
    if job.train.run_dir and rank == 0:
        run_dir = Path(job.train.run_dir)
        save_model(run_dir / "model", model, to_dict(job.model), job=to_dict(job), **model_meta(job))
        tok.save(run_dir / "model" / "tokenizer.json")
    return out
