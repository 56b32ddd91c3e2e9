"""``lmlab eval --checkpoint RUN_DIR --task countdown3 --task countdown4``: task accuracy per difficulty.

Also the task-training plumbing behind ``lmlab train --objective mgdm --task countdown4``: task presets,
data generation (train/test disjoint by prompt), the model's attention mask chosen by the objective's registry
caps ("bidirectional" -> masked decoding, otherwise causal + greedy), and decoding + exact verification.

A task spec is a preset name (``TASKS``) or a registry task with config overrides, e.g.
``sudoku:size=4,blanks=11`` or ``planning3:branches=3``. A checkpoint written by :func:`train_on_task` is a
run folder with ``model/`` (weights + model config) and ``task.json`` (task spec + codec).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

from lmlab.core.config import add_arguments as add_config_arguments
from lmlab.core.config import add_job_arguments, job_from_args, param

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
    from lmlab.core.config import from_dict, merge_overrides, to_dict
    from lmlab.tasks import REGISTRY

    name, _, extra = spec.partition(":")
    base, preset = TASKS.get(name, (name, {}))
    if base not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; presets: {', '.join(TASKS)}; tasks: {', '.join(REGISTRY)}")
    cls = REGISTRY.config(base)
    raw = merge_overrides(cls, {**to_dict(cls()), **preset}, [s for s in extra.split(",") if s])  # typed presets
    return REGISTRY.get(base)(from_dict(cls, raw))


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
    from lmlab.objectives import REGISTRY as OBJECTIVES

    return "bidirectional" in OBJECTIVES.entry(objective).caps


# ---------------------------------------------------------------- decoding


def greedy_targets(model: Any, ids: Any, maskable: Any, eos_id: int,
                   stop_at_eos: bool = True) -> tuple[Any, int]:
    """Greedy AR fill of the ``maskable`` tail of each row (KV cache; rows grouped by prompt size).

    Returns (tokens (B, L), model calls). Positions after a row's <eos> are left as the model wrote them.
    """
    import torch

    out = ids.clone()
    plen = (~maskable).sum(-1)  # (B,) prompt + <sep>
    calls = 0
    with torch.no_grad():
        for p in plen.unique().tolist():
            rows = (plen == p).nonzero().squeeze(-1)  # (b,)
            n = ids.shape[1] - p
            cache = model.new_cache(batch=len(rows), max_len=ids.shape[1])
            logits = model(ids[rows, :p], cache=cache)[:, -1]  # (b, V)
            calls += 1
            done = torch.zeros(len(rows), dtype=torch.bool)
            for i in range(n):
                nxt = logits.argmax(-1)  # (b,)
                out[rows, p + i] = nxt
                done |= nxt == eos_id
                if i + 1 == n or (stop_at_eos and bool(done.all())):
                    break
                logits = model(nxt[:, None], cache=cache)[:, -1]
                calls += 1
    return out, calls


def solve(model: Any, codec: Any, prompts: list[str], decode: Any = None, batch: int = 256,
          generator: Any = None) -> tuple[list[str], dict[str, int]]:
    """Answers for ``prompts``: greedy for causal models, ``masked_decode(decode)`` for bidirectional ones."""
    from lmlab.decoding.masked import Config as DecodeConfig
    from lmlab.decoding.masked import masked_decode

    causal = getattr(getattr(model, "cfg", None), "mask", "causal") == "causal"
    answers, calls = [], 0
    for s in range(0, len(prompts), batch):
        ids, maskable = codec.encode_prompts(prompts[s:s + batch])
        if causal:
            tokens, c = greedy_targets(model, ids, maskable, codec.eos_id)
        else:
            gen = masked_decode(model, ids, maskable, codec.mask_id, decode or DecodeConfig(), generator)
            tokens, c = gen.tokens, gen.stats.model_calls
        calls += c
        starts = codec.answer_starts(ids)
        answers += [codec.answer(row, p) for row, p in zip(tokens.tolist(), starts)]
    return answers, {"model_calls": calls}


def accuracy(model: Any, task: Any, codec: Any, examples: list, decode: Any = None) -> float:
    """Share of examples whose decoded answer the task's exact verifier accepts."""
    was = model.training
    model.eval()
    answers, _ = solve(model, codec, [e.prompt for e in examples], decode)
    model.train(was)
    return sum(task.verify(e.prompt, a) for e, a in zip(examples, answers)) / len(examples)


# ---------------------------------------------------------------- training


def fit_codec(task: Any, spec: str, examples: list, mask: str, inpaint: bool) -> Any:
    """The task codec sized for ``examples``; ``inpaint`` gives bidirectional models the inpainting layout."""
    from lmlab.tasks.encoding import TaskCodec

    blank = getattr(task, "blank", None)
    if inpaint and blank is None:
        raise ValueError(f"task {spec!r} has no inpainting layout (inpaint=true needs a task with a blank symbol)")
    return TaskCodec.fit(task.alphabet, examples, blank=blank if inpaint and mask != "causal" else None)


def train_on_task(objective: str, spec: str, model_cfg: Any, train_cfg: Any, data: TaskDataConfig,
                  seed: int = 0, objective_cfg: Any = None) -> dict[str, Any]:
    """Train a core Transformer on a task; returns {model, codec, task, test, history, seconds, ...}.

    The attention mask follows the objective (bidirectional for masked diffusion); vocabulary and context
    length follow the task codec. With ``train_cfg.run_dir`` the weights and ``task.json`` are written there.
    """
    import dataclasses

    from lmlab.core.checkpoint import save_model
    from lmlab.core.config import to_dict
    from lmlab.core.data import ExampleBatches
    from lmlab.core.runtime import Timer, seed_everything
    from lmlab.core.train import Trainer
    from lmlab.core.transformer import Transformer
    from lmlab.objectives import REGISTRY as OBJECTIVES
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
    trainer = Trainer(model, obj, ExampleBatches(tensors, data.batch_size, seed=data.seed), train_cfg,
                      eval_data=eval_batches, model_config=to_dict(model_cfg))
    with Timer() as t:
        history = trainer.fit()
    if train_cfg.run_dir:
        run_dir = Path(train_cfg.run_dir)
        save_model(run_dir / "model", model, to_dict(model_cfg), objective=objective)
        (run_dir / "task.json").write_text(json.dumps({"task": spec, "codec": codec.to_dict()}, indent=1))
    return {"model": model, "codec": codec, "task": task, "test": test, "history": history,
            "seconds": t.seconds, "steps": trainer.step, "params": model.num_params()}


def task_job_class() -> type:
    """TaskJob (built on first use so that importing this module does not import torch): what
    ``lmlab train --task SPEC --objective mgdm`` parses; every field is also a flag (``--train.steps 2000``)."""
    from lmlab.core.train import TrainConfig
    from lmlab.core.transformer import TransformerConfig

    # make_dataclass keeps real (not string) annotations: this module uses postponed evaluation
    return make_dataclass("TaskJob", [
        ("task", str, param("planning3", f"task spec: a preset ({', '.join(TASKS)}) or name:key=value,...")),
        ("objective", str, param("mgdm", "objective registry name: causal_lm (the AR baseline) | mdm | mgdm")),
        ("seed", int, param(0, "seed of the model initialisation")),
        ("threads", int, param(1, "torch intra-op threads")),
        ("model", TransformerConfig, param(TransformerConfig(dim=64, n_layers=2, n_heads=8, max_seq_len=64),
                                           "model shape (vocabulary, context and mask follow the task)")),
        ("train", TrainConfig, param(TrainConfig(steps=2000, lr=3e-3, warmup_steps=100), "optimisation")),
        ("task_data", TaskDataConfig, param(TaskDataConfig(), "task data and evaluation decoding")),
    ])


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """``lmlab train --task ...`` (routed here by cli/main.py ROUTES)."""
    add_job_arguments(p, task_job_class(), "TOML file with task / objective / [model] / [train]")


def run_train(args: argparse.Namespace) -> int:
    job = job_from_args(task_job_class(), args)
    out = run_task_job(job)
    for k, v in out.items():
        print(f"{k:>14}: {v:.4f}" if isinstance(v, float) else f"{k:>14}: {v}")
    if job.train.run_dir:
        print(f"saved to {job.train.run_dir}; evaluate with: lmlab eval --checkpoint {job.train.run_dir}")
    return 0


def run_task_job(job: Any) -> dict[str, Any]:
    """``lmlab train`` with a task: ``job.task`` (spec) and optionally ``job.task_data`` (TaskDataConfig)."""
    from lmlab.core.runtime import set_threads
    from lmlab.decoding.masked import Config as DecodeConfig

    set_threads(job.threads)
    data = getattr(job, "task_data", None) or TaskDataConfig()
    run = train_on_task(job.objective, job.task, job.model, job.train, data, seed=job.seed)
    decode = DecodeConfig(steps=data.decode_steps)
    acc = accuracy(run["model"], run["task"], run["codec"], run["test"], decode)
    final = run["history"][-1] if run["history"] else {}
    return {"params": run["params"], "steps": run["steps"], "train_loss": final.get("loss"),
            "eval_loss": final.get("eval_loss"), "test_examples": len(run["test"]), "accuracy": acc,
            "seconds": run["seconds"]}


def load_run(run_dir: str | Path) -> tuple[Any, Any, str]:
    """(model, codec, task spec) from a folder written by :func:`train_on_task`."""
    from lmlab.core.checkpoint import load_model, read_meta
    from lmlab.core.transformer import Transformer, TransformerConfig
    from lmlab.tasks.encoding import TaskCodec

    run_dir = Path(run_dir)
    if not (run_dir / "task.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no task.json: not a run trained with --task")
    info = json.loads((run_dir / "task.json").read_text())
    model = Transformer(TransformerConfig(**read_meta(run_dir / "model")["config"]))
    load_model(run_dir / "model", model)
    c = info["codec"]
    return model.eval(), TaskCodec.from_dict(c), info["task"]


# ---------------------------------------------------------------- the verb


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lmlab.decoding.masked import Config as DecodeConfig

    p.add_argument("--checkpoint", type=Path, required=True, help="run folder written by lmlab train --task")
    p.add_argument("--task", action="append", default=[],
                   help=f"task spec, repeatable (default: the training task); presets: {', '.join(TASKS)}")
    p.add_argument("--n", type=int, default=500, help="test examples per task")
    p.add_argument("--seed", type=int, default=1_000_003, help="test data seed")
    add_config_arguments(p, DecodeConfig, prefix="decode.")  # --decode.steps, --decode.order, --decode.remask ...


def run(args: argparse.Namespace) -> int:
    from lmlab.core.config import apply_overrides
    from lmlab.core.runtime import set_threads
    from lmlab.decoding.masked import Config as DecodeConfig

    set_threads()
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    model, codec, trained_on = load_run(args.checkpoint)
    flags = [f"{k[len('cfg::decode.'):]}={v}" for k, v in vars(args).items()
             if k.startswith("cfg::decode.") and v is not None]
    decode = apply_overrides(DecodeConfig(), flags)
    mode = "greedy (causal)" if model.cfg.mask == "causal" else (
        f"masked decoding T={decode.steps} {decode.order} {decode.schedule} remask={decode.remask}")
    print(f"{args.checkpoint}: {mode}")
    print(f"{'task':<28} {'n':>6} {'accuracy':>9}")
    for spec in args.task or [trained_on]:
        task = build_task(spec)
        examples = task.generate(args.n, seed=args.seed)
        acc = accuracy(model, task, codec, examples, decode)
        print(f"{spec:<28} {len(examples):>6} {acc:>9.3f}")
    return 0
