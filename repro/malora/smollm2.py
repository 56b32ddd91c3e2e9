"""LoRA vs MALoRA on SmolLM2-135M-Instruct: a short run on a text rendering of the five tagged tasks (not gated).

    python repro/malora/smollm2.py        # settings: the [smollm2] table of config.toml

Needs the SmolLM2 package (``make models``), so it is never part of the smoke run or the tests. The model is the
Q4_1 GGUF dequantized to float32 (``lmlab.load("smollm2-135m")``), frozen; each arm adapts every attention and MLP
projection. Tasks are rendered as text with space-separated characters, e.g. ``"sort: 4 0 3 9 1 8 ->"`` ->
``" 0 1 3 4 8 9"``; prompt and answer are tokenized separately and concatenated, the loss is on the answer tokens.
Exact match is greedy decoding of the answer, computed exactly by one teacher-forced forward: greedy reproduces
the answer iff the argmax at every answer position is the answer token. Writes ``results/smollm2-<date>.json``.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

import tomllib
import torch
import torch.nn.functional as F

from lmlab import adapters
from lmlab.core.results import now, repro_record, write_json
from lmlab.core.train import TrainConfig, Trainer
from lmlab.harness import repro_module
from lmlab.objectives.causal_lm import CausalLM

HERE = Path(__file__).resolve().parent


def render(prompt: str, target: str, name: str) -> tuple[str, str]:
    return f"{name}: {' '.join(prompt[1:])} ->", " " + " ".join(target)


def encode(tok: Any, examples: list, pad_id: int) -> dict[str, torch.Tensor]:
    """ids (N, L) right-padded, targets (N, L) = next answer token on the answer, -100 elsewhere, and
    answer_mask (N, L) marking the positions that predict an answer token."""
    rows = []
    for e in examples:
        p, a = render(e.prompt, e.target, e.meta["task"])
        rows.append((tok.encode(p), tok.encode(a)))
    L = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), L), -100, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        targets[i, len(p) - 1 : len(p) + len(a) - 1] = torch.tensor(a)
    return {"ids": ids, "targets": targets}


@torch.no_grad()
def score(model: Any, data: dict[str, torch.Tensor], batch: int = 16) -> tuple[float, float]:
    """(answer-token loss, exact match in percent) of teacher-forced greedy answers."""
    model.eval()
    losses, exact = [], []
    for s in range(0, data["ids"].shape[0], batch):
        ids, tgt = data["ids"][s:s + batch], data["targets"][s:s + batch]
        logits = model(ids).float()  # (b, L, V)
        keep = tgt != -100
        losses.append(F.cross_entropy(logits[keep], tgt[keep]).item())
        hit = (logits.argmax(-1) == tgt) | ~keep  # (b, L)
        exact += hit.all(-1).tolist()
    model.train()
    return sum(losses) / len(losses), 100.0 * sum(exact) / len(exact)


class Rows:
    def __init__(self, data: dict[str, torch.Tensor], batch: int, seed: int):
        self.data, self.batch, self.seed = data, batch, seed

    def get_batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(0, self.data["ids"].shape[0], (self.batch,), generator=g)
        return {k: v[idx] for k, v in self.data.items()}


def main() -> dict:
    from lmlab.loader import load

    cfg = tomllib.loads((HERE / "config.toml").read_text())["smollm2"]
    torch.set_num_threads(cfg["threads"])
    tasks = repro_module("malora", "tasks")
    t0 = time.perf_counter()
    base, tok, _ = load("smollm2-135m")
    base.eval()
    pad = tok.eos_id if getattr(tok, "eos_id", None) is not None else 0
    mix = tasks.Mixture(list(tasks.FINETUNE))
    train, test = tasks.split(mix, cfg["n_train"], cfg["n_test"], cfg["seed"])
    train_t, test_t = encode(tok, train, pad), encode(tok, test, pad)
    metrics: dict[str, Any] = {"load_seconds": time.perf_counter() - t0}
    metrics["base_val_loss"], metrics["base_exact"] = score(base, test_t)
    arms = {"lora": adapters.lora(rank=cfg["lora_rank"], alpha=cfg["alpha"]),
            "malora": adapters.malora(rank=cfg["malora_rank"], subspace_rank=cfg["malora_subspace_rank"],
                                      alpha=cfg["alpha"])}
    for name, acfg in arms.items():
        model = adapters.apply(copy.deepcopy(base), acfg)
        tcfg = TrainConfig(steps=cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup"], weight_decay=0.0,
                           progress=False)
        t1 = time.perf_counter()
        Trainer(model, CausalLM(), Rows(train_t, cfg["batch_size"], cfg["seed"]), tcfg).fit()
        metrics[f"{name}_train_seconds"] = time.perf_counter() - t1
        metrics[f"{name}_params"] = model.counts()["trainable"]
        metrics[f"{name}_val_loss"], metrics[f"{name}_exact"] = score(model, test_t)
        for task in tasks.FINETUNE:
            sub = [i for i, e in enumerate(test) if e.meta["task"] == task]
            metrics[f"{name}_{task}_exact"] = score(model, {k: v[sub] for k, v in test_t.items()})[1]
        print(name, {k: round(v, 3) for k, v in metrics.items() if k.startswith(name)}, file=sys.stderr, flush=True)
    metrics["config"] = cfg
    rec = repro_record("malora", "SmolLM2-135M: LoRA vs MALoRA after a short run (recorded, not gated)", {}, metrics,
                       [], time.perf_counter() - t0, smoke=False, command="python repro/malora/smollm2.py")
    write_json(HERE / "results" / f"smollm2-{now()[:10]}.json", rec)
    return rec


if __name__ == "__main__":
    main()
