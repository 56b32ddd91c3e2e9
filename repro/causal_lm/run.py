"""Causal LM on corpus_en: train with the one Trainer, report validation bits per byte against a unigram model."""

from __future__ import annotations

from lmlab.core.train import TrainConfig
from lmlab.core.transformer import TransformerConfig
from lmlab.recipes.text import DataConfig, TextJob, train_lm


def run(cfg: dict, smoke: bool) -> dict:
    job = TextJob(
        objective="causal_lm", threads=cfg["threads"],
        model=TransformerConfig(dim=cfg["dim"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                                max_seq_len=cfg["seq_len"]),
        train=TrainConfig(steps=cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"],
                          eval_batches=cfg["eval_batches"], log_every=50),
        data=DataConfig(source="corpus_en", tokenizer="bpe", bpe_vocab=cfg["bpe_vocab"], max_bytes=cfg["max_bytes"],
                        seq_len=cfg["seq_len"], batch_size=cfg["batch_size"]),
    )
    out = train_lm(job)
    out["params_millions"] = out["params"] / 1e6
    out["bpb_over_unigram"] = out["val_bpb"] / out["unigram_bpb"]
    return out
