"""Reasoning-task training and evaluation (``lmlab train task``, ``lmlab eval``, ``repro/mgdm``).

Task presets, data generation (train/test disjoint by prompt), the model's attention mask chosen by the
objective's registry caps ("bidirectional" -> masked decoding, otherwise causal + greedy), and decoding + exact
verification. A task spec is a preset name (``TASKS``) or a registry task with config overrides, e.g.
``sudoku:size=4,blanks=11`` or ``planning3:branches=3``. A run folder written by :func:`train_on_task` holds
``model/`` (weights + model config, read by ``lmlab.load``) and ``task.json`` (task spec + codec).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.core.checkpoint import save_model
from lmlab.core.config import from_dict, merge_overrides, param, to_dict
from lmlab.core.data import ExampleBatches
from lmlab.core.runtime import Timer, atomic_write, seed_everything, set_threads
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.masked import Config as DecodeConfig
from lmlab.decoding.masked import masked_decode
from lmlab.decoding.reference import greedy_fill
from lmlab.objectives import REGISTRY as OBJECTIVES
from lmlab.tasks import REGISTRY as TASK_REGISTRY
from lmlab.tasks.base import solve_rate
from lmlab.tasks.encoding import TaskCodec

TASKS = {  # preset: (task registry name, config overrides); difficulty grows along each family
    "planning": ("planning", {}),
    "planning2": ("planning", {"distance": 2}),
    "planning3": ("planning", {"distance": 3}),
    "planning4": ("planning", {"distance": 4}),
    "countdown3": ("countdown", {"n_numbers": 3}),
    "countdown4": ("countdown", {"n_numbers": 4}),
    "countdown5": ("countdown", {"n_numbers": 5}),
    "sudoku4": ("sudoku", {"size": 4, "blanks": 10}),
    "sudoku6": ("sudoku", {"size": 6, "blanks": 20}),
    "sudoku9": ("sudoku", {"size": 9, "blanks": 45}),
    "sat5": ("sat", {"num_vars": 5, "unique": True}),
    "sat7": ("sat", {"num_vars": 7, "unique": True}),
    "sat9": ("sat", {"num_vars": 9, "unique": True}),
}


@dataclass
class TaskDataConfig:
    n_train: int = param(50_000, "training examples", source="paper planning setup (50k train)")
    n_test: int = param(1000, "test examples (prompts seen in training are dropped)")
    batch_size: int = param(128, "examples per micro-batch")
    seed: int = param(0, "data seed (the test set uses a different stream)")
    decode_steps: int = param(20, "masked decoding steps T at evaluation", source="official scripts")
    inpaint: bool = param(False, "diffusion models on tasks with a blank symbol (Sudoku): the givens sit fixed in "
                                 "the target, only the blanks are masked, learned and decoded (no effect on AR)")


def build_task(spec: str) -> Any:
    """Task object for a preset name or ``name:key=value,...`` (name = preset or task registry name)."""
    name, _, extra = spec.partition(":")
    base, preset = TASKS.get(name, (name, {}))
    if base not in TASK_REGISTRY:
        raise ValueError(f"unknown task {name!r}; presets: {', '.join(TASKS)}; tasks: {', '.join(TASK_REGISTRY)}")
    cls = TASK_REGISTRY.config(base)
    raw = merge_overrides(cls, {**to_dict(cls()), **preset}, [s for s in extra.split(",") if s])  # typed presets
    return TASK_REGISTRY.get(base)(from_dict(cls, raw))


def make_data(spec: str, data: TaskDataConfig) -> tuple[Any, list, list]:
    """(task, train examples, test examples); test prompts that occur in the training set are removed."""
    task = build_task(spec)
    train = task.generate(data.n_train, seed=data.seed)
    seen = {e.prompt for e in train}
    test = [e for e in task.generate(data.n_test, seed=data.seed + 1_000_003) if e.prompt not in seen]
    if not test:
        raise ValueError(f"task {spec!r}: every test prompt also occurs in the training set")
    return task, train, test


def is_bidirectional(objective: str) -> bool:
    return "bidirectional" in OBJECTIVES.entry(objective).caps


# ---------------------------------------------------------------- decoding


def solve(model: Any, codec: TaskCodec, prompts: list[str], decode: DecodeConfig | None = None, batch: int = 256,
          generator: torch.Generator | None = None) -> tuple[list[str], dict[str, int]]:
    """Answers for ``prompts``: greedy for causal models, ``masked_decode(decode)`` for bidirectional ones."""
    causal = model.cfg.mask == "causal"
    answers, calls = [], 0
    for s in range(0, len(prompts), batch):
        ids, maskable = codec.encode_prompts(prompts[s:s + batch])
        if causal:
            tokens, c = greedy_fill(model, ids, maskable, codec.eos_id)
        else:
            gen = masked_decode(model, ids.to(model.device), maskable.to(model.device), codec.mask_id,
                                decode or DecodeConfig(), generator)
            tokens, c = gen.tokens, gen.stats.model_calls
        calls += c
        starts = codec.answer_starts(ids)
        answers += [codec.answer(row, p) for row, p in zip(tokens.tolist(), starts)]
    return answers, {"model_calls": calls}


def accuracy(model: Any, task: Any, codec: TaskCodec, examples: list, decode: DecodeConfig | None = None) -> float:
    """Share of examples whose decoded answer the task's exact verifier accepts (``tasks.base.solve_rate``)."""
    was = model.training
    model.eval()
    prompts = [e.prompt for e in examples]
    answers, _ = solve(model, codec, prompts, decode)
    model.train(was)
    return solve_rate(task, prompts, answers)


# ---------------------------------------------------------------- training


def fit_codec(task: Any, spec: str, examples: list, mask: str, inpaint: bool) -> Any:
    """The task codec sized for ``examples``; ``inpaint`` gives bidirectional models the inpainting layout."""
    blank = getattr(task, "blank", None)
    if inpaint and blank is None:
        raise ValueError(f"task {spec!r} has no inpainting layout (inpaint=true needs a task with a blank symbol)")
    return TaskCodec.fit(task.alphabet, examples, blank=blank if inpaint and mask != "causal" else None)


def train_on_task(objective: str, spec: str, model_cfg: TransformerConfig, train_cfg: TrainConfig,
                  data: TaskDataConfig, seed: int = 0, objective_cfg: Any = None,
                  hooks: list | None = None) -> dict[str, Any]:
    """Train a core Transformer on a task; returns {model, codec, task, test, history, seconds, ...}.

    The attention mask follows the objective (bidirectional for masked diffusion); vocabulary and context
    length follow the task codec. With ``train_cfg.run_dir`` the weights and ``task.json`` are written there.
    """
    task, train, test = make_data(spec, data)
    mask = "bidirectional" if is_bidirectional(objective) else "causal"
    codec = fit_codec(task, spec, train + test, mask, data.inpaint)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=codec.vocab_size, mask=mask,
                                    max_seq_len=max(model_cfg.max_seq_len, codec.seq_len))
    seed_everything(seed)
    model = Transformer(model_cfg)
    make = OBJECTIVES.get(objective)
    obj = make(objective_cfg) if objective_cfg is not None else make()
    tensors = codec.encode(train)
    test_t = codec.encode(test)
    eval_batches = [{k: v[i:i + data.batch_size] for k, v in test_t.items()}
                    for i in range(0, len(test), data.batch_size)]
    run = {"objective": objective, "task": spec, "seed": seed, "task_data": to_dict(data), "codec": codec.to_dict()}
    trainer = Trainer(model, obj, ExampleBatches(tensors, data.batch_size, seed=data.seed), train_cfg,
                      eval_data=eval_batches, model_config=to_dict(model_cfg), hooks=hooks, run_config=run)
    with Timer() as t:
        history = trainer.fit()
    if train_cfg.run_dir:
        run_dir = Path(train_cfg.run_dir)
        save_model(run_dir / "model", model, to_dict(model_cfg), objective=objective)
        atomic_write(run_dir / "task.json", json.dumps({"task": spec, "codec": codec.to_dict()}, indent=1))
    return {"model": model, "codec": codec, "task": task, "test": test, "history": history,
            "seconds": t.seconds, "steps": trainer.step, "params": model.num_params()}


@dataclass
class TaskJob:
    """``lmlab train task``: a core Transformer trained on a reasoning task; every field is also a flag."""

    task: str = param("planning3", f"task spec: a preset ({', '.join(TASKS)}) or name:key=value,...")
    objective: str = param("mgdm", "objective registry name: causal_lm (the AR baseline) | mdm | mgdm")
    seed: int = param(0, "seed of the model initialisation")
    threads: int = param(1, "torch intra-op threads")
    model: TransformerConfig = param(TransformerConfig(dim=64, n_layers=2, n_heads=8, max_seq_len=64),
                                     "model shape (vocabulary, context and mask follow the task)")
    train: TrainConfig = param(TrainConfig(steps=2000, lr=3e-3, warmup_steps=100), "optimisation")
    task_data: TaskDataConfig = param(TaskDataConfig(), "task data and evaluation decoding")


def train_task(job: TaskJob) -> dict[str, Any]:
    """Train on ``job.task`` and report exact-verifier accuracy on held-out prompts."""
    set_threads(job.threads)
    data = job.task_data
    run = train_on_task(job.objective, job.task, job.model, job.train, data, seed=job.seed)
    acc = accuracy(run["model"], run["task"], run["codec"], run["test"], DecodeConfig(steps=data.decode_steps))
    final = run["history"][-1] if run["history"] else {}
    return {"params": run["params"], "steps": run["steps"], "train_loss": final.get("loss"),
            "eval_loss": final.get("eval_loss"), "test_examples": len(run["test"]), "accuracy": acc,
            "seconds": run["seconds"]}


def load_run(run_dir: str | Path) -> tuple[Any, TaskCodec, str]:
    """(model, codec, task spec) from a folder written by :func:`train_on_task` (through ``lmlab.load``)."""
    from lmlab.loader import load

    run_dir = Path(run_dir)
    if not (run_dir / "task.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no task.json: not a run trained with `lmlab train task`")
    model, _, meta = load(run_dir)
    return model, TaskCodec.from_dict(meta["task"]["codec"]), meta["task"]["task"]


def evaluate_run(run_dir: str | Path, specs: list[str] | None = None, n: int = 500, seed: int = 1_000_003,
                 decode: DecodeConfig | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(decoding mode, one row {task, n, accuracy} per spec) for a task run; specs default to its own task."""
    if n < 1:
        raise ValueError(f"n (test examples per task) must be >= 1, got {n}")
    decode = decode or DecodeConfig()
    model, codec, trained_on = load_run(run_dir)
    mode = "greedy (causal)" if model.cfg.mask == "causal" else (
        f"masked decoding T={decode.steps} {decode.order} {decode.schedule} remask={decode.remask}")
    rows = []
    for spec in specs or [trained_on]:
        task = build_task(spec)
        examples = task.generate(n, seed=seed)
        rows.append({"task": spec, "n": len(examples), "accuracy": accuracy(model, task, codec, examples, decode)})
    return mode, rows
