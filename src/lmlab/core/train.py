"""THE training loop: ``Trainer(model, objective, data, TrainConfig).fit()``.

- AdamW (weight decay on matrices only), warmup + cosine or warmup-stable-decay (WSD) schedules.
- Gradient accumulation and clipping; periodic evaluation; a progress bar; a JSONL metrics log.
- Atomic checkpoints (safetensors + JSON, written to a temporary folder and renamed) and **exact resume**:
  batches are a pure function of the step (``core.data``), and the checkpoint holds model, optimizer and RNG
  state, so a run killed and resumed produces the same loss curve as an uninterrupted one.
- Devices: ``device`` (cpu | cuda | cuda:N | mps | auto; empty = $LMLAB_DEVICE or cpu) moves the model and every
  batch; ``precision = "bf16"`` runs forward and loss under bf16 autocast (weights and optimizer stay fp32).
- DistributedDataParallel when launched by ``torchrun`` (gloo on CPU; nccl on GPU with one GPU per rank,
  ``LOCAL_RANK``); rank 0 logs and saves.
- Auxiliary losses: an objective may return them in ``LossOutput.aux`` and model components add theirs through
  the block context (``Transformer.pop_aux``); the Trainer adds all of them to the loss and logs each as
  ``aux_<name>``. ``loss`` in the log is the objective's own loss.
- Frozen parameters: when some parameters have ``requires_grad=False`` (adapters, distillation), checkpoints hold
  the trainable ones only, plus a checksum of the frozen ones that resume checks; resume stays exact.
- Step hooks: ``hooks=[fn]`` calls ``fn(trainer, record)`` after every optimizer step (diagnostics, probes,
  data switches); a hook may add keys to the record or set ``trainer.stop = True``.
- A non-finite loss stops the run with the step number; the last good checkpoint stays on disk.
- Optional gradient-noise-scale measurement (McCandlish et al. 2018, "An Empirical Model of Large-Batch
  Training", App. A): from the per-micro-batch gradients g_i (batch b) and their mean G (batch n*b),
  |G_true|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small),
  S ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big), and B_simple = S / |G_true|^2, each of the two terms
  averaged with an EMA before dividing, as the paper recommends.

An objective is any callable ``objective(model, batch) -> LossOutput(loss, metrics)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import checkpoint as ckpt
from .config import param, to_dict
from .runtime import JsonlLog, Timer, progress, resolve_device


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to minimise
    metrics: dict[str, float] = field(default_factory=dict)  # extra numbers to log (already detached)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # auxiliary losses, added to ``loss`` by the Trainer


@dataclass
class TrainConfig:
    steps: int = param(1000, "optimizer steps")
    lr: float = param(3e-4, "peak learning rate")
    min_lr_ratio: float = param(0.1, "final lr as a fraction of the peak")
    schedule: str = param("cosine", "lr schedule", choices=("cosine", "wsd", "constant"))
    warmup_steps: int = param(100, "linear warmup steps")
    decay_frac: float = param(0.2, "WSD: fraction of steps in the final decay phase")
    weight_decay: float = param(0.1, "AdamW weight decay (matrices only)")
    beta1: float = param(0.9, "AdamW beta1")
    beta2: float = param(0.95, "AdamW beta2")
    grad_accum: int = param(1, "micro-batches per optimizer step")
    grad_clip: float = param(1.0, "max global grad norm (0 = off)")
    eval_every: int = param(0, "evaluate every N steps (0 = only at the end)")
    eval_batches: int = param(8, "batches per evaluation")
    log_every: int = param(10, "write a metrics line every N steps")
    ckpt_every: int = param(0, "also checkpoint every N steps (0 = by time only, see ckpt_minutes)")
    ckpt_minutes: float = param(10.0, "checkpoint when this many minutes passed since the last save (0 = off); "
                                "with run_dir only")
    noise_scale_every: int = param(0, "measure the gradient noise scale every N steps (needs grad_accum >= 2)")
    seed: int = param(0, "seed for model-independent randomness (objective noise, dropout)")
    device: str = param("", "cpu | cuda | cuda:N | mps | auto ('' = $LMLAB_DEVICE or cpu)")
    precision: str = param("fp32", "fp32, or bf16 autocast for forward and loss (fp32 weights and optimizer)",
                           choices=("fp32", "bf16"))
    run_dir: str = param("", "folder for metrics.jsonl and checkpoints ('' = none)")
    progress: bool = param(True, "progress on stderr: a bar on a terminal, a line every 30 s in a log")

    def __post_init__(self) -> None:
        positive = ("steps", "grad_accum", "log_every", "eval_batches")
        non_negative = ("warmup_steps", "eval_every", "ckpt_every", "noise_scale_every", "weight_decay",
                        "grad_clip", "ckpt_minutes", "min_lr_ratio")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.decay_frac <= 1:
            raise ValueError(f"TrainConfig.decay_frac must be in [0, 1], got {self.decay_frac}")


def config_diff(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a!r} -> {b!r})")
    return out


class TrainingDiverged(RuntimeError):
    pass


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(t, 1.0)))
    decay_start = int(cfg.steps * (1 - cfg.decay_frac))
    if step < decay_start:
        return cfg.lr
    t = (step - decay_start) / max(1, cfg.steps - decay_start)
    return cfg.lr + (lo - cfg.lr) * min(t, 1.0)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


Hook = Callable[["Trainer", dict[str, Any]], None]
logger = logging.getLogger(__name__)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor on ``device`` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def frozen_checksum(model: nn.Module) -> dict[str, Any]:
    """Count and float64 sum of the frozen parameters: resume refuses another base model."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return {"count": sum(p.numel() for p in frozen),
            "sum": float(sum(p.detach().double().sum() for p in frozen)) if frozen else 0.0}


class Trainer:
    def __init__(self, model: nn.Module, objective: Callable[[nn.Module, dict], LossOutput], data: Any,
                 cfg: TrainConfig, eval_data: Any = None, model_config: dict | None = None,
                 hooks: list[Hook] | None = None, run_config: dict | None = None):
        if cfg.grad_accum < 1 or cfg.steps < 1:
            raise ValueError(f"steps and grad_accum must be >= 1, got {cfg.steps}, {cfg.grad_accum}")
        if cfg.noise_scale_every and cfg.grad_accum < 2:
            raise ValueError("noise_scale_every needs grad_accum >= 2 (two batch sizes are compared)")
        self.cfg, self.objective, self.data, self.eval_data = cfg, objective, data, eval_data
        self.model_config = model_config or {}
        # data / tokenizer / recipe settings a resume must match, as JSON data (tuples become lists, as saved)
        self.run_config = json.loads(json.dumps(run_config or {}))
        self.hooks = list(hooks or [])
        self.ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        self.wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids) if self.ddp else model
        self.opt = make_optimizer(model, cfg)
        self.step = 0
        self.stop = False
        self.resumed_from: int | None = None
        self.first_loss: float | None = None  # loss at step 1 and at the last step, kept across resumes
        self.last_loss: float | None = None
        self.noise: dict[str, float] = {}
        self.trainable_only = any(not p.requires_grad for p in model.parameters())
        self.frozen = frozen_checksum(model) if self.trainable_only else None
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else None
        self.log = JsonlLog(self.run_dir / "metrics.jsonl") if self.run_dir and self.rank == 0 else None
        self.history: list[dict[str, Any]] = []

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def run_objective(self, model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        """The objective on ``batch`` (moved to the device, under autocast), with the model's aux losses."""
        with self.autocast():
            out = self.objective(model, to_device(batch, self.device))
        pop = getattr(self.model, "pop_aux", None)
        model_aux = pop() if pop is not None else {}
        if model_aux:
            out = LossOutput(out.loss, out.metrics, {**out.aux, **model_aux})
        return out

    # ------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self) -> Path | None:
        return self.run_dir / "checkpoint" if self.run_dir else None

    def _meta(self) -> dict[str, Any]:
        return {"step": self.step, "config": self.model_config, "train": to_dict(self.cfg), "noise": self.noise,
                "kind": "lmlab-trainer", "trainable_only": self.trainable_only, "frozen": self.frozen,
                "run": self.run_config, "first_loss": self.first_loss, "last_loss": self.last_loss}

    def model_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the model: everything, or the trainable parameters when some are frozen."""
        if not self.trainable_only:
            return self.model.state_dict()
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def save(self) -> None:
        if self.ckpt_path is None or self.rank != 0:
            return
        otensors, oscalars = ckpt.flatten_optimizer(self.opt)
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        meta = self._meta() | {"optim": oscalars}
        ckpt.save(self.ckpt_path, {"model": self.model_state(), "optim": otensors, "rng": rng}, meta)

    def resume(self) -> bool:
        """Load the run's checkpoint if there is one; the model config must match. Returns True if resumed."""
        if self.ckpt_path is None or not ckpt.recover(self.ckpt_path).exists():
            return False
        meta = ckpt.read_meta(self.ckpt_path)
        if meta.get("kind") != "lmlab-trainer":
            raise ckpt.CheckpointError(f"{self.ckpt_path} is not an lmlab training checkpoint")
        for what, saved, now in (("model config", meta.get("config") or {}, self.model_config),
                                 ("data / tokenizer / run settings", meta.get("run") or {}, self.run_config)):
            diff = config_diff(saved, now)
            if diff:
                raise ckpt.CheckpointError(f"cannot resume {self.ckpt_path}: saved with another {what} (differs in "
                                           f"{', '.join(diff)}); use another run_dir to start a new run")
        if bool(meta.get("trainable_only")) != self.trainable_only:
            raise ckpt.CheckpointError(f"cannot resume {self.ckpt_path}: it was saved with "
                                       f"{'some' if meta.get('trainable_only') else 'no'} frozen parameters, "
                                       f"this model has {'some' if self.trainable_only else 'none'}")
        if self.trainable_only and meta.get("frozen") != self.frozen:
            raise ckpt.CheckpointError(f"cannot resume {self.ckpt_path}: the frozen parameters differ from those "
                                       f"the run started with ({meta.get('frozen')} vs {self.frozen})")
        state = ckpt.load_tensors(self.ckpt_path, "model")
        if self.trainable_only:
            ckpt.load_into(self.model, state, str(self.ckpt_path), only=set(self.model_state()))
        else:
            ckpt.load_into(self.model, state, str(self.ckpt_path))
        ckpt.unflatten_optimizer(self.opt, ckpt.load_tensors(self.ckpt_path, "optim"), meta["optim"])
        rng = ckpt.load_tensors(self.ckpt_path, "rng")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step, self.noise = meta["step"], meta.get("noise", {})
        self.first_loss, self.last_loss = meta.get("first_loss"), meta.get("last_loss")
        self.resumed_from = self.step
        if self.log is not None:
            self.log.truncate_after(self.step)
        if self.rank == 0:
            logger.info("resumed from step %d of %d (%s)", self.step, self.cfg.steps, self.ckpt_path)
        return True

    # ------------------------------------------------------------ one step
    def _micro_batches(self, step: int):
        for m in range(self.cfg.grad_accum):
            yield self.data.get_batch(step, m, self.rank, self.world)  # moved to the device by run_objective

    def train_step(self) -> dict[str, float]:
        cfg, step = self.cfg, self.step
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        measure = bool(cfg.noise_scale_every) and step % cfg.noise_scale_every == 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt.zero_grad(set_to_none=True)
        total, main, metrics, micro_sq, bsz = 0.0, 0.0, {}, [], 0
        prev = None
        for m, batch in enumerate(self._micro_batches(step)):
            bsz = next(iter(batch.values())).shape[0]
            sync = (m == cfg.grad_accum - 1) or not self.ddp
            ctx = self.wrapped.no_sync() if not sync else _null()
            with ctx:
                out = self.run_objective(self.wrapped, batch)
                full = out.loss + sum(out.aux.values()) if out.aux else out.loss
                (full / cfg.grad_accum).backward()
            total += float(full.detach())
            main += float(out.loss.detach())
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / cfg.grad_accum
            for k, v in out.aux.items():
                metrics[f"aux_{k}"] = metrics.get(f"aux_{k}", 0.0) + float(v.detach()) / cfg.grad_accum
            if measure:  # per-micro-batch gradient g_m = accum * (grad after m - grad before m)
                cur = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
                diff = cur if prev is None else [c - q for c, q in zip(cur, prev)]
                micro_sq.append(sum(float((d * cfg.grad_accum).pow(2).sum()) for d in diff))
                prev = cur
        loss = main / cfg.grad_accum
        if not math.isfinite(total):
            raise TrainingDiverged(f"non-finite loss {total / cfg.grad_accum} at step {step}; last good checkpoint kept"
                                   + (f" in {self.ckpt_path}" if self.ckpt_path else ""))
        if measure:
            self._update_noise(micro_sq, params, bsz)
        gnorm = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
        self.opt.step()
        self.step += 1
        return {"step": self.step, "loss": loss, "lr": lr_at(step, cfg), "grad_norm": gnorm, **metrics}

    def _update_noise(self, micro_sq: list[float], params: list[torch.Tensor], b: int, ema: float = 0.9) -> None:
        n = len(micro_sq)
        b_small, b_big = b, b * n
        g_small = sum(micro_sq) / n  # E|g_i|^2 at batch b
        g_big = sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None)  # |mean g|^2 at batch n*b
        g2 = (b_big * g_big - b_small * g_small) / (b_big - b_small)
        s = (g_small - g_big) / (1 / b_small - 1 / b_big)
        for k, v in (("g2", g2), ("s", s)):
            self.noise[k] = v if k not in self.noise else ema * self.noise[k] + (1 - ema) * v
        self.noise["b_simple"] = self.noise["s"] / self.noise["g2"] if self.noise["g2"] > 0 else float("nan")

    # ------------------------------------------------------------ eval and the loop
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        was = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        n = 0
        batches = self.eval_data() if callable(self.eval_data) else self.eval_data
        for i, batch in enumerate(batches):
            if i >= self.cfg.eval_batches:
                break
            out = self.run_objective(self.model, batch)
            sums["loss"] = sums.get("loss", 0.0) + float(out.loss)
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        self.model.train(was)
        return {f"eval_{k}": v / max(n, 1) for k, v in sums.items()}

    def fit(self, resume: bool = True) -> list[dict[str, Any]]:
        cfg = self.cfg
        if not (resume and self.resume()) and self.step == 0 and self.log is not None:
            self.log.truncate_after(0)  # a fresh start: lines of an earlier run killed before its checkpoint go
        self.model.train()
        saved_at = time.monotonic()
        bar = progress(total=cfg.steps, initial=self.step, desc="train",
                       disable=None if (cfg.progress and self.rank == 0) else True)
        with Timer() as t:
            while self.step < cfg.steps:
                rec = self.train_step()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    rec |= self.evaluate()
                if self.step == cfg.steps:
                    rec |= self.evaluate()
                if self.noise:
                    rec["b_simple"] = self.noise["b_simple"]
                if self.first_loss is None:
                    self.first_loss = rec["loss"]
                self.last_loss = rec["loss"]
                for hook in self.hooks:
                    hook(self, rec)
                self.history.append(rec)
                if self.log is not None and (self.step % cfg.log_every == 0 or self.step == cfg.steps
                                             or any(k.startswith("eval_") for k in rec)):
                    self.log.write(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
                due = cfg.ckpt_minutes and time.monotonic() - saved_at >= 60 * cfg.ckpt_minutes
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or due:
                    self.save()
                    saved_at = time.monotonic()
                if self.stop:
                    break
        bar.close()
        self.save()
        self.seconds = t.seconds
        return self.history


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def init_distributed(device: str = "") -> tuple[int, int]:
    """Initialise torch.distributed from torchrun's environment; (rank, world).

    nccl when the run's device (``device`` or $LMLAB_DEVICE) is a GPU, with this rank's GPU (LOCAL_RANK) made
    current first; gloo otherwise, also on a machine that has GPUs but trains on the CPU.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return 0, 1
    dev = resolve_device(device)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()
