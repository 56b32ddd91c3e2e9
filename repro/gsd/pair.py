"""The tiny target/draft pair of the GSD reproduction: two causal LMs trained on corpus_en, one BPE tokenizer.

Both are trained by the core ``Trainer`` with the ``causal_lm`` objective on the same token stream; the pair,
its tokenizer and the held-out token ids are cached under ``cache_dir("gsd", "pair-<hash of the config>")`` so
a second run (and ``bench/gsd_vs_hf_assisted.py``) loads them in a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.core.checkpoint import load_model, save_model
from lmlab.core.config import to_dict
from lmlab.core.data import TokenWindows
from lmlab.core.runtime import cache_dir, seed_everything
from lmlab.core.tokenizer import load_tokenizer
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.objectives.causal_lm import CausalLM
from lmlab.recipes.text import DataConfig, build_tokenizer, text_splits

PAIR_KEYS = ("max_bytes", "bpe_vocab", "seq_len", "batch_size", "target_dim", "target_layers", "target_heads",
             "target_steps", "draft_dim", "draft_layers", "draft_heads", "draft_steps", "lr", "seed")


def pair_dir(cfg: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps({k: cfg[k] for k in PAIR_KEYS}, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir("gsd", f"pair-{key}")


def train_lm(model_cfg: TransformerConfig, ids: np.ndarray, steps: int,
             cfg: dict[str, Any]) -> tuple[Transformer, dict]:
    seed_everything(cfg["seed"])
    model = Transformer(model_cfg)
    data = TokenWindows(ids, cfg["batch_size"], cfg["seq_len"], seed=cfg["seed"])
    tcfg = TrainConfig(steps=steps, lr=cfg["lr"], warmup_steps=max(1, steps // 20),
                       log_every=max(1, steps // 10), eval_batches=0, progress=False, seed=cfg["seed"])
    history = Trainer(model, CausalLM(), data, tcfg).fit()
    return model.eval(), {"first_loss": history[0]["loss"], "final_loss": history[-1]["loss"]}


def load_or_train_pair(cfg: dict[str, Any]) -> dict[str, Any]:
    """{"target", "draft", "tokenizer", "val_ids", "info"}, trained once per config and then cached."""
    folder = pair_dir(cfg)
    shape = dict(vocab_size=0, max_seq_len=cfg["max_seq_len"])
    if (folder / "info.json").is_file():
        info = json.loads((folder / "info.json").read_text())
        models = {}
        for name in ("target", "draft"):
            meta_cfg = json.loads((folder / name / "meta.json").read_text())["config"]
            models[name] = Transformer(TransformerConfig(**meta_cfg))
            load_model(folder / name, models[name])
        tok = load_tokenizer(folder / "tokenizer.json")
        return {**{k: m.eval() for k, m in models.items()}, "tokenizer": tok,
                "val_ids": np.load(folder / "val_ids.npy"), "info": info | {"cached": True}}
    data = DataConfig(source="corpus_en", tokenizer="bpe", bpe_vocab=cfg["bpe_vocab"],
                      max_bytes=cfg["max_bytes"])
    train_text, val_text = text_splits(data)
    tok = build_tokenizer(data, train_text)
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    val_ids = np.asarray(tok.encode(val_text), dtype=np.int64)
    shape["vocab_size"] = tok.vocab_size
    info: dict[str, Any] = {"train_tokens": len(train_ids), "val_tokens": len(val_ids),
                            "vocab": tok.vocab_size}
    models = {}
    for name in ("target", "draft"):
        mcfg = TransformerConfig(dim=cfg[f"{name}_dim"], n_layers=cfg[f"{name}_layers"],
                                 n_heads=cfg[f"{name}_heads"], **shape)
        models[name], losses = train_lm(mcfg, train_ids, cfg[f"{name}_steps"], cfg)
        info[name] = {"params": models[name].num_params(), **losses}
        save_model(folder / name, models[name], to_dict(mcfg))
    tok.save(folder / "tokenizer.json")
    np.save(folder / "val_ids.npy", val_ids)
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return {**models, "tokenizer": tok, "val_ids": val_ids, "info": info | {"cached": False}}


def held_out_prompts(val_ids: np.ndarray, n: int, length: int) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens at evenly spaced offsets of the held-out split."""
    if len(val_ids) < length + 1:
        raise ValueError(f"held-out split of {len(val_ids)} tokens is shorter than a prompt of {length}")
    starts = np.linspace(0, len(val_ids) - length - 1, n).astype(int)
    return [val_ids[s:s + length].tolist() for s in starts]


@torch.no_grad()
def agreement(target: Transformer, draft: Any, prompts: list[list[int]]) -> float:
    """Share of held-out positions where the draft's argmax equals the target's (teacher forcing)."""
    hits = total = 0
    for p in prompts:
        ids = torch.tensor([p])
        hits += int((target(ids).argmax(-1) == draft(ids).argmax(-1)).sum())
        total += len(p)
    return hits / total
