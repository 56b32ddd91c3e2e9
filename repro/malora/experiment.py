"""The pieces of the MALoRA benchmark: the frozen base (pre-trained once, cached), adapter arms, training, scoring.

An arm is ``(method, rank, subspace_rank)`` applied with ``lmlab.adapters.apply`` to every attention and MLP
projection of a copy of the frozen base, trained with the shared ``Trainer`` (causal LM loss on the answer, the
router balance loss added through ``pop_aux``) and scored by exact match of the greedy answer
(``lmlab.recipes.tasks.accuracy``: batched greedy decoding with the KV cache, the task's verifier).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from statistics import median
from typing import Any

import torch

from lmlab import adapters
from lmlab.core.checkpoint import load_model, save_model
from lmlab.core.config import to_dict
from lmlab.core.data import ExampleBatches
from lmlab.core.runtime import cache_dir, seed_everything
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.objectives.causal_lm import CausalLM
from lmlab.recipes.tasks import accuracy
from lmlab.tasks.encoding import TaskCodec

from .tasks import ALPHABET, FINETUNE, PRETRAIN, PROMPT_LEN, TARGET_LEN, Mixture, split

CODEC = TaskCodec(ALPHABET, PROMPT_LEN, TARGET_LEN)
# arm name -> (adapter method, rank key, subspace-rank key) in the config
ARMS = {"lora": ("lora", "lora_rank", None), "molora": ("molora", "molora_rank", None),
        "hydralora": ("hydralora", "hydralora_rank", None),
        "malora": ("malora", "malora_rank", "malora_subspace_rank")}


def base_config(cfg: dict) -> TransformerConfig:
    return TransformerConfig(vocab_size=CODEC.vocab_size, dim=cfg["dim"], n_layers=cfg["layers"],
                             n_heads=cfg["heads"], max_seq_len=CODEC.seq_len)


def adapter_config(method: str, rank: int, subspace_rank: int | None, cfg: dict, seed: int) -> adapters.Config:
    """The arm's adapter config: the method's routing defaults (MoLoRA / MALoRA N=4 top-2, HydraLoRA dense)."""
    extra = {"subspace_rank": subspace_rank} if subspace_rank else {}
    return adapters.Config(method=method, rank=rank, alpha=cfg["alpha"], seed=seed, **extra)


def main_arm(name: str, cfg: dict, seed: int) -> adapters.Config:
    method, rank_key, ds_key = ARMS[name]
    return adapter_config(method, cfg[rank_key], cfg[ds_key] if ds_key else None, cfg, seed)


def pretrained_base(cfg: dict, log=print) -> tuple[Transformer, dict[str, Any]]:
    """The frozen base: trained once on the generic mixture (copy, rotate), then read from the cache."""
    mcfg = base_config(cfg)
    keys = ("base_steps", "base_lr", "base_batch", "base_examples", "seed")
    spec = {"model": to_dict(mcfg), "train": {k: cfg[k] for k in keys}, "tasks": sorted(PRETRAIN), "v": 1}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("repro-malora", f"base-{key}")
    model = Transformer(mcfg)
    if (folder / "meta.json").is_file():
        meta = load_model(folder, model, to_dict(mcfg))
        return model.eval(), {"base_cached": 1.0, "base_pretrain_seconds": meta["seconds"],
                              "base_copy_acc": meta["copy_acc"]}
    seed_everything(cfg["seed"])
    model = Transformer(mcfg)
    mix = Mixture(sorted(PRETRAIN))
    train, test = split(mix, cfg["base_examples"], 100, cfg["seed"])
    tcfg = TrainConfig(steps=cfg["base_steps"], lr=cfg["base_lr"], warmup_steps=min(100, cfg["base_steps"] // 10),
                       progress=False, seed=cfg["seed"])
    t0 = time.perf_counter()
    Trainer(model, CausalLM(), ExampleBatches(CODEC.encode(train), cfg["base_batch"], seed=cfg["seed"]), tcfg).fit()
    seconds = time.perf_counter() - t0
    acc = 100 * accuracy(model, mix, CODEC, test)
    save_model(folder, model, to_dict(mcfg), seconds=seconds, copy_acc=acc, overwrite=True)
    log(f"base pre-trained in {seconds:.0f} s: copy/rotate exact match {acc:.1f}%")
    return model.eval(), {"base_cached": 0.0, "base_pretrain_seconds": seconds, "base_copy_acc": acc}


def task_accuracies(model: Any, examples: list) -> dict[str, float]:
    """Exact match (percent) per fine-tuning task of the held-out ``examples``, and their mean."""
    out = {}
    for name, make in FINETUNE.items():
        task = make()
        rows = [e for e in examples if e.prompt[0] == task.tag]
        if rows:
            out[name] = 100 * accuracy(model, task, CODEC, rows)
    out["mean"] = sum(out.values()) / len(out)
    return out


def train_arm(base: Transformer, acfg: adapters.Config, cfg: dict, seed: int, n_train: int, steps: int,
              threads: int = 1) -> dict[str, Any]:
    """Train one adapter arm on a copy of ``base``; params, losses, training step times and accuracies."""
    torch.set_num_threads(threads)
    mix = Mixture(list(FINETUNE))
    train, test = split(mix, n_train, cfg["n_test"], seed)
    model = adapters.apply(copy.deepcopy(base), acfg)
    probe = CODEC.encode(test[:16])["ids"]  # (16, L)
    with torch.no_grad():
        identity = float(torch.equal(model(probe), base(probe)))  # B = 0: the adapter starts as the base model
    data = ExampleBatches(CODEC.encode(train), cfg["batch_size"], seed=seed)
    tcfg = TrainConfig(steps=steps, lr=cfg["lr"], warmup_steps=cfg["warmup"], weight_decay=0.0, progress=False,
                       seed=seed)
    stamps: list[float] = []
    trainer = Trainer(model, CausalLM(), data, tcfg, hooks=[lambda tr, rec: stamps.append(time.perf_counter())])
    t0 = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    losses = [h["loss"] for h in history]
    k = max(1, min(50, len(losses) // 5))
    acc = task_accuracies(model, test)
    train_acc = task_accuracies(model, train[: len(test)])["mean"]
    frozen = dict(base.named_parameters())
    base_kept = float(all(torch.equal(p, frozen[n.replace(".base.weight", ".weight")])
                          for n, p in model.base.named_parameters() if ".adapters." not in n))
    counted = sum(adapters.param_count(acfg, layer.base.in_features, layer.base.out_features)
                  for _, layer in model.adapter_layers())
    return {"params": model.counts()["trainable"], "params_formula": counted, "identity_at_init": identity,
            "base_kept": base_kept, "train_seconds": seconds,
            "train_step_ms": 1000 * median(gaps) if gaps else float("nan"),
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
            "balance_aux": history[-1].get("aux_adapter_balance", 0.0), "acc": acc, "train_acc": train_acc,
            "test_examples": len(test)}
