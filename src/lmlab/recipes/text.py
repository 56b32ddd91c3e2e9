"""Text language-model training: ``train_lm(TextJob)`` (``lmlab train lm``, ``repro/causal_lm``).

The job mirrors a TOML file: top-level ``objective``, tables ``[model]`` (TransformerConfig), ``[train]``
(TrainConfig) and ``[data]`` (DataConfig). The text is ``corpus_en`` (train/val split fixed by document hash) or
a UTF-8 file (its tail held out); the tokenizer is bytes or a byte-level BPE trained on the training split. The
report compares validation bits per byte with a unigram model of the training tokens. Launch under
``torchrun --nproc_per_node N`` for DistributedDataParallel.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.core.checkpoint import save_model
from lmlab.core.config import param, to_dict
from lmlab.core.data import TokenWindows
from lmlab.core.metrics import bits_per_byte
from lmlab.core.runtime import Timer, atomic_write, seed_everything, set_threads
from lmlab.core.tokenizer import BPETokenizer, ByteTokenizer
from lmlab.core.train import TrainConfig, Trainer, init_distributed
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.objectives import REGISTRY as OBJECTIVES


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


@dataclass
class TextJob:
    """``lmlab train lm``: a core Transformer trained on text with an objective (default causal_lm)."""

    objective: str = param("causal_lm", "objective registry name (see `lmlab list objectives`)")
    seed: int = param(0, "seed of the model initialisation")
    threads: int = param(1, "torch intra-op threads")
    model: TransformerConfig = param(TransformerConfig(), "model shape (vocab_size follows the tokenizer)")
    train: TrainConfig = param(TrainConfig(), "optimisation")
    data: DataConfig = param(DataConfig(), "data")


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
    text = path.read_text(encoding="utf-8")
    if data.max_bytes:
        text = text[: data.max_bytes]
    cut = int(len(text) * (1 - data.val_fraction))
    return text[:cut], text[cut:]


def build_tokenizer(data: DataConfig, train_text: str) -> ByteTokenizer | BPETokenizer:
    if data.tokenizer == "byte":
        return ByteTokenizer()
    chunks = [train_text[i:i + 100_000] for i in range(0, len(train_text), 100_000)]
    return BPETokenizer.train(chunks, vocab_size=data.bpe_vocab)


def train_lm(job: TextJob) -> dict[str, Any]:
    """Train and evaluate; returns metrics (val loss in nats/token, val bits per byte, throughput).

    With ``job.train.run_dir`` the run folder gets ``model/`` (weights, config, tokenizer.json: what
    ``lmlab.load`` reads) and ``job.json``.
    """
    set_threads(job.threads)
    rank, _ = init_distributed(job.train.device)
    train_text, val_text = text_splits(job.data)
    tok = build_tokenizer(job.data, train_text)
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    val_ids = np.asarray(tok.encode(val_text), dtype=np.int64)
    job.model.vocab_size = tok.vocab_size
    seed_everything(job.seed)
    model = Transformer(job.model)
    objective = OBJECTIVES.get(job.objective)()
    d = job.data
    train_data = TokenWindows(train_ids, d.batch_size, d.seq_len, seed=job.train.seed)
    val_data = TokenWindows(val_ids, d.batch_size, d.seq_len)
    trainer = Trainer(model, objective, train_data, job.train, eval_data=lambda: val_data.sequential(),
                      model_config=to_dict(job.model))
    with Timer() as t:
        history = trainer.fit()
    final = history[-1] if history else trainer.evaluate()
    val_loss = final.get("eval_loss", float("nan"))
    bytes_per_token = len(val_text.encode()) / max(len(val_ids), 1)
    # baseline: a unigram model of the training tokens (add-one smoothing) scored on the validation tokens
    counts = np.bincount(train_ids, minlength=tok.vocab_size) + 1.0
    unigram_nll = float(-np.log(counts / counts.sum())[val_ids].mean())
    steps_run = len(history)
    tokens = steps_run * job.train.grad_accum * d.batch_size * d.seq_len
    out = {"params": model.num_params(), "params_non_embedding": model.num_params(non_embedding=True),
           "vocab_size": tok.vocab_size, "train_tokens": len(train_ids), "val_tokens": len(val_ids),
           "steps": trainer.step, "train_loss": final.get("loss"), "val_loss": val_loss,
           # bits per byte = nats per token / (ln 2 * bytes per token), bytes per token measured on the val text
           "val_bpb": bits_per_byte(val_loss, bytes_per_token) if math.isfinite(val_loss) else None,
           "unigram_bpb": bits_per_byte(unigram_nll, bytes_per_token), "first_loss": history[0]["loss"],
           "loss_drop": history[0]["loss"] - final.get("loss", float("nan")), "bytes_per_token": bytes_per_token,
           "tokens_per_s": tokens / t.seconds if t.seconds else None,
           "seconds": t.seconds}
    if job.train.run_dir and rank == 0:
        run_dir = Path(job.train.run_dir)
        save_model(run_dir / "model", model, to_dict(job.model), job=to_dict(job))
        tok.save(run_dir / "model" / "tokenizer.json")
        atomic_write(run_dir / "job.json", json.dumps(to_dict(job), indent=2))
    return out
