"""``lmlab train --model acdit ...`` and ``lmlab generate --model acdit ...``: ACDiT image generation.

    lmlab train --model acdit --block-size 4 --train.steps 1500 --run-dir runs/acdit
    lmlab train --model acdit --data.source pngs/ --data.channels 3 --model.image-size 32 --model.channels 3
    lmlab generate --model acdit --checkpoint runs/acdit --class 3 --out grid.png

``train`` writes ``<run-dir>/model`` (safetensors + the full job as JSON), ``samples.png`` and
``metrics.json`` (Frechet distance and class consistency in the features of a classifier trained on the same
images with a fixed seed, when ``--eval-samples`` > 0). Every field of the job is a flag (``--train.lr 3e-4``,
``--model.dim 128``); a TOML file (``--config``) and ``--set key=value`` overrides work as in the other verbs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from lmlab.core.config import add_job_arguments
    from lmlab.objectives.block_diffusion import TrainJob

    p.add_argument("--model", choices=["acdit"], default="acdit", help="the ACDiT model family")
    p.add_argument("--block-size", type=int, default=None, help="tokens per block B (= --model.block-size)")
    p.add_argument("--run-dir", default="runs/acdit", help="output folder (= --train.run-dir)")
    add_job_arguments(p, TrainJob, "TOML file mirroring the job", set_example="model.dim=128")


def build_job(args: argparse.Namespace):
    """The TrainJob from defaults < --config < --flags < --set < the shortcut flags."""
    from lmlab.core.config import apply_overrides, from_args, load_toml
    from lmlab.objectives.block_diffusion import TrainJob

    base = load_toml(args.config) if args.config else {}
    job = apply_overrides(from_args(TrainJob, args, base), args.overrides)
    short = [f"train.run_dir={json.dumps(args.run_dir)}"] if args.run_dir and not job.train.run_dir else []
    if args.block_size is not None:
        short.append(f"model.block_size={args.block_size}")
    return apply_overrides(job, short) if short else job


def run_train(args: argparse.Namespace) -> int:
    from lmlab.objectives.block_diffusion import evaluate, load_data, train
    from lmlab.tasks.digits import save_grid

    job = build_job(args)
    data = load_data(job)
    model, metrics = train(job, data)
    run_dir = Path(job.train.run_dir)
    if job.eval_samples > 0:
        scores, samples = evaluate(model, job, data)
        metrics |= scores
        n_cls = data["num_classes"]
        per = len(samples) // n_cls
        pick = [c * per + i for i in range(min(per, 10)) for c in range(n_cls)]  # columns = classes
        save_grid(run_dir / "samples.png", samples[pick], nrow=n_cls)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for k, v in metrics.items():
        print(f"{k:>22}: {v:.4f}" if isinstance(v, float) else f"{k:>22}: {v}")
    print(f"{'checkpoint':>22}: {run_dir / 'model'}")
    return 0


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=["acdit"], default="acdit", help="the ACDiT model family")
    p.add_argument("--checkpoint", default="runs/acdit", help="run folder of `lmlab train --model acdit`")
    p.add_argument("--class", dest="classes", type=int, action="append", default=None,
                   help="class id to generate (repeatable; default: every class)")
    p.add_argument("--n", type=int, default=8, help="images per class")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG grid to write")
    p.add_argument("--steps", type=int, default=None, help="solver steps per block (default: the job's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--solver", choices=["ddim", "dpm++2m"], default=None, help="few-step solver")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling in the grid")


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from lmlab.core.runtime import set_threads
    from lmlab.objectives.block_diffusion import generate, load_trained
    from lmlab.tasks.digits import save_grid

    set_threads()
    model, job = load_trained(args.checkpoint)
    for name in ("steps", "guidance", "solver"):
        if getattr(args, name) is not None:
            setattr(job, "sample_steps" if name == "steps" else name, getattr(args, name))
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    classes = args.classes if args.classes is not None else list(range(model.cfg.num_classes))
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(args.n)
    model.check_labels(labels, allow_null=False)
    images = generate(model, labels, job, seed=args.seed)
    nrow = args.n if len(classes) > 1 else min(args.n, 8)
    path = save_grid(args.out, images, nrow=nrow, scale=args.scale)
    print(f"wrote {len(images)} samples of class(es) {classes} to {path}")
    return 0
