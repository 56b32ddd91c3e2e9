"""Causal language modelling: next-token cross-entropy (the autoregressive baseline of every other objective).

batch: ``ids`` (B, T) and ``targets`` (B, T) with ``ignore_index`` where no loss is taken (e.g. the prompt part
of ``prompt [SEP] target`` task examples, or padding).

Packed batches (``core.data.PackedDocs``; Yi-Lightning, arXiv 2412.01253 §4: block-causal attention and
per-sample loss reweighting): with ``doc_ids`` (B, T) the model gets the block-causal ``masks.document`` mask and
the batch's ``positions`` (B, T), so a packed row computes what each of its samples computes alone. With
``weights`` (B, T) and ``equalize`` on, the loss is sum(weights * token loss) / number of samples, the number of
samples being ``weights.sum()`` (each sample's weights sum to 1): the mean over samples of each sample's mean
token loss, so a long sample counts as much as a short one. With ``equalize`` off, or without weights, the loss
is the mean over target tokens. A batch without ``doc_ids`` and ``weights`` is computed exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.core import masks
from lmlab.core.config import param
from lmlab.core.train import LossOutput


@dataclass
class Config:
    ignore_index: int = param(-100, "target id that contributes no loss (prompt tokens, padding)")
    equalize: bool = param(True, "when the batch has per-token `weights` (packed samples): weigh every sample "
                                 "equally (Yi-Lightning §4); off = mean over target tokens")


class CausalLM:
    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg or Config()

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        if "doc_ids" in batch:  # packed samples: none sees another
            logits = model(batch["ids"], positions=batch["positions"], mask=masks.document(batch["doc_ids"]))
        else:
            logits = model(batch["ids"])  # (B, T, V)
        targets = batch["targets"].flatten()
        if "weights" not in batch or not self.cfg.equalize:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=self.cfg.ignore_index)
            return LossOutput(loss, {})
        tok = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=self.cfg.ignore_index,
                              reduction="none")  # (B*T,), 0 at ignored targets
        w = batch["weights"].flatten().to(tok.dtype)
        samples = w.sum()
        if not samples > 0:
            raise ValueError(f"causal_lm: batch weights sum to {float(samples)}; a packed batch needs at least one "
                             "sample with a target")
        return LossOutput((w * tok).sum() / samples, {"samples": float(samples)})
