"""The pieces of the implicit-PRM reproduction: the SFT policy, rollouts and their tensors.

Policy: a core Transformer trained with the causal LM loss on chain solutions whose steps are wrong with
probability ``sft_error_rate`` (``tasks.chains``), so that temperature-1 samples make step errors the reward
models must find. Rollouts: ``sampler.sample_fill`` over the answer region; each rollout is labelled by the
strict verifier (every step right, ``ChainTask.verify``). Prompt sets (SFT, PRM training, validation, test) are
disjoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lmlab.core.data import ExampleBatches
from lmlab.core.runtime import seed_everything
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.objectives.causal_lm import CausalLM
from lmlab.recipes.tasks import accuracy
from lmlab.tasks.base import Example
from lmlab.tasks.chains import ChainTask, Config, final_answer, solve
from lmlab.tasks.encoding import TaskCodec

from .sampler import sample_fill


def make_task(cfg: dict, error_rate: float = 0.0) -> ChainTask:
    return ChainTask(Config(steps=cfg["chain_steps"], ops=cfg["ops"], modulus=cfg["modulus"], error_rate=error_rate))


def make_codec(task: ChainTask) -> TaskCodec:
    """Sized for the longest prompt and the longest correctly formatted solution (all operands < modulus)."""
    m, k = task.cfg.modulus - 1, task.cfg.steps
    prompt = str(m) + f"+{m}" * k
    target = ",".join([f"{m}+{m}={m}"] * k)
    return TaskCodec(task.alphabet, len(prompt), len(target))


def prompt_sets(cfg: dict, seed: int) -> dict[str, list[str]]:
    """Disjoint fresh prompts: ``rollout`` (PRM training), ``val`` (ORM selection), ``test``."""
    task, rng = make_task(cfg), random.Random(10_000 + seed)
    sizes = {"rollout": cfg["n_rollout_prompts"], "val": cfg["n_val_prompts"], "test": cfg["n_test_prompts"]}
    seen, out = set(), {}
    for name, n in sizes.items():
        out[name] = []
        while len(out[name]) < n:
            p = task.sample(rng).prompt
            if p not in seen:
                seen.add(p)
                out[name].append(p)
    return out


def train_policy(cfg: dict, seed: int, codec: TaskCodec, exclude: set[str]) -> tuple[Transformer, dict]:
    """SFT on noisy solutions; returns the policy and its greedy strict accuracy on clean held-out prompts."""
    task = make_task(cfg, cfg["sft_error_rate"])
    data = [e for e in task.generate(cfg["sft_examples"], seed=seed) if e.prompt not in exclude]
    seed_everything(seed)
    model = Transformer(TransformerConfig(vocab_size=codec.vocab_size, dim=cfg["dim"], n_layers=cfg["layers"],
                                          n_heads=cfg["heads"], max_seq_len=codec.seq_len))
    tcfg = TrainConfig(steps=cfg["sft_steps"], lr=cfg["sft_lr"], warmup_steps=max(1, cfg["sft_steps"] // 20),
                       weight_decay=0.0, progress=False, seed=seed)
    hist = Trainer(model, CausalLM(), ExampleBatches(codec.encode(data), cfg["sft_batch"], seed=seed), tcfg).fit()
    clean = make_task(cfg)
    probe = [Example(p, "", {}) for p in sorted(exclude)[:200]]
    greedy = accuracy(model, clean, codec, probe)
    return model.eval(), {"sft_greedy_acc": greedy, "sft_loss_last": hist[-1]["loss"]}


@dataclass
class Rollouts:
    """``n`` samples per prompt, row-major (prompt i's samples at i*n .. i*n+n-1)."""

    prompts: list[str]  # one per row
    answers: list[str]
    ids: torch.Tensor  # (R, L) prompt, <sep>, answer, <eos>, <pad>...
    response_mask: torch.Tensor  # (R, L) True on answer tokens and the <eos> (the policy's whole response)
    last: torch.Tensor  # (R,) index of each row's last response token
    strict: list[bool]  # every step right (ChainTask.verify)
    final_ok: list[bool]  # final answer right (an outcome grader)
    finals: list[int | None]  # final answers (None = malformed last step)
    first_error: list[int | None]
    n_steps: list[int]  # written steps (commas + 1)
    n: int


def clean_rows(ids: torch.Tensor, starts: list[int], eos_id: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    """Pad everything after each row's first <eos>; (ids, response_mask, last index)."""
    ids = ids.clone()
    L = ids.shape[1]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    last = torch.zeros(ids.shape[0], dtype=torch.long)
    for r, s in enumerate(starts):
        hits = (ids[r, s:] == eos_id).nonzero()
        end = s + int(hits[0]) if len(hits) else L - 1  # last response token (the <eos> when there is one)
        ids[r, end + 1:] = pad_id
        mask[r, s: end + 1] = True
        last[r] = end
    return ids, mask, last


def rollouts(model: Transformer, codec: TaskCodec, cfg: dict, prompts: list[str], n: int, seed: int) -> Rollouts:
    """``n`` temperature samples per prompt, labelled by the strict verifier and by final answer."""
    task = make_task(cfg)
    rows = [p for p in prompts for _ in range(n)]
    ids, maskable = codec.encode_prompts(rows)
    g = torch.Generator().manual_seed(seed)
    chunks = [sample_fill(model, ids[i:i + 1024], maskable[i:i + 1024], codec.eos_id, cfg["temperature"], g)
              for i in range(0, len(rows), 1024)]
    out = torch.cat(chunks)
    starts = codec.answer_starts(out)
    answers = [codec.answer(r, s) for r, s in zip(out.tolist(), starts)]
    ids, mask, last = clean_rows(out, starts, codec.eos_id, codec.pad_id)
    truth = {p: solve(p, task.cfg)[-1][3] for p in prompts}
    finals = [final_answer(a) if a else None for a in answers]
    return Rollouts(rows, answers, ids, mask, last, [task.verify(p, a) for p, a in zip(rows, answers)],
                    [f == truth[p] for p, f in zip(rows, finals)], finals,
                    [task.first_error(p, a) for p, a in zip(rows, answers)],
                    [a.count(",") + 1 for a in answers], n)


def step_ends(ro: Rollouts, sep_id: int) -> list[list[int]]:
    """Each step ends at its ',' (the separator belongs to its step); the last step at the <eos>."""
    out = []
    for r in range(ro.ids.shape[0]):
        pos = ro.response_mask[r].nonzero().flatten().tolist()
        out.append([p for p in pos[:-1] if int(ro.ids[r, p]) == sep_id] + [pos[-1]])
    return out
