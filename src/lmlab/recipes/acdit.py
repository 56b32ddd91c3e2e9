"""ACDiT on images: train, sample and evaluate (``lmlab train acdit``, ``lmlab sample``, ``repro/acdit``).

Paper: Hu et al., "ACDiT: Interpolating Autoregressive Conditional Modeling and Diffusion Transformer",
arXiv:2412.07720; official code github.com/thunlp/ACDiT. The recipe: the core Trainer with the block diffusion
loss (``objectives.block_diffusion``; AdamW, warmup-stable-decay as in the paper, no EMA), then KV-cached
blockwise sampling and the Frechet distance / class consistency of ``lmlab.tasks.digits``. ``train_acdit``
also writes ``samples.png`` (a class-per-column grid) and ``metrics.json`` into the run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.core.checkpoint import save_model
from lmlab.core.config import from_dict, param, to_dict
from lmlab.core.data import ExampleBatches
from lmlab.core.runtime import atomic_write, seed_everything, set_threads
from lmlab.core.train import TrainConfig, Trainer
from lmlab.models.acdit import ACDiT, sample
from lmlab.models.acdit import Config as ModelConfig
from lmlab.objectives.block_diffusion import BlockDiffusion, Config
from lmlab.tasks import digits


@dataclass
class TrainJob:
    seed: int = param(0, "seed of the model initialisation")
    threads: int = param(1, "torch intra-op threads")
    batch_size: int = param(128, "images per optimizer step")
    model: ModelConfig = param(ModelConfig(dim=64), "ACDiT shape (block_size = B)")
    objective: Config = param(Config(), "block diffusion loss")
    train: TrainConfig = param(TrainConfig(steps=1500, lr=2e-3, schedule="wsd", decay_frac=0.15,
                                           warmup_steps=100, weight_decay=0.05, min_lr_ratio=0.01,
                                           run_dir="runs/acdit"),
                               "optimisation: AdamW, warmup-stable-decay with the decay in the last 15%",
                               source="paper (WSD); lr and steps for CPU scale")
    data: digits.Config = param(digits.Config(), "images: sklearn digits or a folder of PNGs")
    eval_samples: int = param(1000, "samples for FD and class consistency (0 = skip)")
    sample_steps: int = param(25, "solver steps per block", source="paper, images")
    guidance: float = param(1.5, "classifier-free guidance scale", source="paper, images")
    solver: str = param("dpm++2m", "ddim or dpm++2m", choices=("ddim", "dpm++2m"), source="paper, images")
    classifier_steps: int = param(400, "steps of the feature classifier (fixed seed 0)")


def load_data(job: TrainJob) -> dict[str, Any]:
    """The job's images; checks that their shape matches the model config."""
    data = digits.load(job.data)
    images = data["train"][0]
    m = job.model
    if tuple(images.shape[1:]) != (m.channels, m.image_size, m.image_size):
        raise ValueError(f"data images are {tuple(images.shape[1:])} (C, H, W) but the model expects "
                         f"({m.channels}, {m.image_size}, {m.image_size}): set model.channels / image_size")
    if data["num_classes"] > m.num_classes:
        raise ValueError(f"data has {data['num_classes']} classes but model.num_classes = {m.num_classes}")
    return data


def train(job: TrainJob, data: dict[str, Any] | None = None) -> tuple[ACDiT, dict[str, Any]]:
    """Train an ACDiT on the job's images with the core Trainer; saves ``<run_dir>/model`` when run_dir is
    set. Returns (model in eval mode, metrics: params, steps, final and mean-of-last-100 losses, seconds)."""
    set_threads(job.threads)
    data = data or load_data(job)
    seed_everything(job.seed)
    model = ACDiT(job.model)
    images, labels = data["train"]
    batches = ExampleBatches({"images": images, "labels": labels}, job.batch_size, seed=job.train.seed)
    trainer = Trainer(model, BlockDiffusion(job.objective), batches, job.train,
                      model_config=to_dict(job.model))
    t0, c0 = time.perf_counter(), time.process_time()
    history = trainer.fit()
    losses = [r["loss"] for r in history]
    out = {"params": model.num_params(), "steps": trainer.step,
           "train_loss_final": losses[-1] if losses else None,
           "train_loss_last100": sum(losses[-100:]) / max(len(losses[-100:]), 1),
           "train_seconds": time.perf_counter() - t0, "train_cpu_seconds": time.process_time() - c0}
    if job.train.run_dir:
        save_model(Path(job.train.run_dir) / "model", model, to_dict(job.model), job=to_dict(job))
    return model.eval(), out


def load_trained(path: str | Path) -> tuple[ACDiT, TrainJob]:
    """(model, job) from a run folder (or its ``model/``) written by :func:`train`, through ``lmlab.load``."""
    from lmlab.loader import load

    model, _, meta = load(path)
    if meta["kind"] != "lmlab-acdit" or "job" not in meta:
        raise ValueError(f"{path} is not an ACDiT run (written by `lmlab train acdit`), it holds {meta['kind']}")
    return model, from_dict(TrainJob, meta["job"])


@torch.no_grad()
def generate(model: ACDiT, labels: torch.Tensor, job: TrainJob, seed: int = 0,
             chunk: int = 250) -> torch.Tensor:
    """Images (N, C, H, W) for ``labels`` with the job's solver settings, in chunks; seeded noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(labels), chunk):
        tokens = sample(model, labels[i:i + chunk], steps=job.sample_steps, guidance=job.guidance,
                        solver=job.solver, schedule=job.objective.schedule, generator=g)
        out.append(model.unpatchify(tokens).clamp(-1, 1))
    return torch.cat(out)


def evaluate(model: ACDiT, job: TrainJob, data: dict[str, Any], classifier: digits.Classifier | None = None,
             seed: int = 0) -> tuple[dict[str, float], torch.Tensor]:
    """FD to the training images and class consistency over ``eval_samples`` class-balanced samples, with the
    real-vs-real floor (held-out vs training images) for context. Returns (metrics, samples)."""
    images, labels = data["train"]
    if classifier is None:
        classifier = digits.train_classifier(images, labels, data["num_classes"], seed=0,
                                             steps=job.classifier_steps)
    n_cls = data["num_classes"]
    want = torch.arange(n_cls).repeat_interleave(-(-job.eval_samples // n_cls))[:job.eval_samples]
    t0, c0 = time.perf_counter(), time.process_time()
    samples = generate(model, want, job, seed=seed)
    test_x, test_y = data["test"]
    out = {"fd": digits.fd_to_reference(classifier, samples, images),
           "class_consistency": digits.class_consistency(classifier, samples, want),
           "fd_real_heldout": digits.fd_to_reference(classifier, test_x, images),
           "classifier_accuracy": digits.accuracy(classifier, test_x, test_y),
           "sample_seconds": time.perf_counter() - t0, "sample_cpu_seconds": time.process_time() - c0}
    return out, samples


def train_acdit(job: TrainJob) -> dict[str, Any]:
    """``lmlab train acdit``: train, then (``eval_samples`` > 0) sample and score; writes ``samples.png`` and
    ``metrics.json`` next to ``model/`` when ``train.run_dir`` is set. Returns the metrics."""
    data = load_data(job)
    model, metrics = train(job, data)
    run_dir = Path(job.train.run_dir) if job.train.run_dir else None
    if job.eval_samples > 0:
        scores, samples = evaluate(model, job, data)
        metrics |= scores
        if run_dir is not None:
            n_cls = data["num_classes"]
            per = len(samples) // n_cls
            pick = [c * per + i for i in range(min(per, 10)) for c in range(n_cls)]  # columns = classes
            digits.save_grid(run_dir / "samples.png", samples[pick], nrow=n_cls)
    if run_dir is not None:
        atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        metrics["checkpoint"] = str(run_dir / "model")
    return metrics


def sample_grid(checkpoint: str | Path, out: str | Path, classes: list[int] | None = None, n: int = 8,
                steps: int | None = None, guidance: float | None = None, solver: str | None = None,
                seed: int = 0, scale: int = 4) -> tuple[Path, int, list[int]]:
    """``lmlab sample``: ``n`` images per class (default: every class) from an ACDiT run, as a PNG grid.

    ``steps`` / ``guidance`` / ``solver`` override the job's sampling settings. Returns (path, images, classes).
    """
    model, job = load_trained(checkpoint)
    if steps is not None:
        job.sample_steps = steps
    if guidance is not None:
        job.guidance = guidance
    if solver is not None:
        job.solver = solver
    if n < 1:
        raise ValueError(f"n (images per class) must be >= 1, got {n}")
    classes = classes if classes is not None else list(range(model.cfg.num_classes))
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(n)
    model.check_labels(labels, allow_null=False)
    images = generate(model, labels, job, seed=seed)
    nrow = n if len(classes) > 1 else min(n, 8)
    return digits.save_grid(out, images, nrow=nrow, scale=scale), len(images), classes
