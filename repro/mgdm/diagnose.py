"""Learning curves and position probes for one arm of the MGDM reproduction (not part of ``lmlab repro``).

    python repro/mgdm/diagnose.py --task planning3 --objective mgdm --steps 6000 --every 2000

Every ``--every`` steps: exact accuracy on held-out prompts (greedy for AR, easy-first masked decoding with
T = 20 for diffusion) and the share of test rows whose decoded token at each target position equals the
reference. At the end, for a diffusion model, *probes*: one forward pass with only some target positions
revealed (the rest <mask>), reporting argmax accuracy and mean top probability at each hidden position.
``--mix SPEC`` replaces half the training set with examples of another task (e.g. planning2), test stays on
``--task``; ``--pretrain SPEC --pretrain-steps N`` trains N steps on another task first (a curriculum; one lr
schedule over both phases). ``--weight-decay``, ``--rope-base`` and ``--inpaint`` vary one setting each.
The README's diagnosis of planning-3 was measured with this script.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from lmlab.core.data import ExampleBatches
from lmlab.core.runtime import seed_everything
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.masked import Config as DecodeConfig
from lmlab.objectives import REGISTRY as OBJECTIVES
from lmlab.recipes.tasks import TaskDataConfig, fit_codec, is_bidirectional, make_data, solve


def position_report(model, task, codec, test) -> tuple[float, list[float]]:
    """(exact accuracy, per-target-position agreement with the reference)."""
    model.eval()
    answers, _ = solve(model, codec, [e.prompt for e in test], DecodeConfig(steps=20))
    model.train()
    acc = sum(task.verify(e.prompt, a) for e, a in zip(test, answers)) / len(test)
    n = max(len(e.target) for e in test)
    pos = [sum(len(a) > i and len(e.target) > i and a[i] == e.target[i] for e, a in zip(test, answers)) / len(test)
           for i in range(n)]
    return acc, pos


@torch.no_grad()
def probe(model, codec, test, reveal: list[int]) -> dict[int, tuple[float, float]]:
    """Reveal the reference tokens at target positions ``reveal``; {hidden position: (accuracy, mean top p)}."""
    model.eval()
    ids, maskable = codec.encode_prompts([e.prompt for e in test])  # (B, L)
    ref = codec.encode(test)["ids"]  # (B, L)
    start = codec.answer_starts(ids)[0]  # first target position (prompts of one task have one length)
    x = ids.clone()  # target region <mask> (inpainting: givens kept)
    for i in reveal:
        x[:, start + i] = ref[:, start + i]
    probs = model(x).softmax(-1)  # (B, L, V)
    top_p, pred = probs.max(-1)
    n = len(test[0].target)
    return {i: (float((pred[:, start + i] == ref[:, start + i]).float().mean()), float(top_p[:, start + i].mean()))
            for i in range(n) if i not in reveal}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="planning3")
    p.add_argument("--objective", default="mgdm", help="causal_lm | mdm | mgdm")
    p.add_argument("--mix", default="", help="task spec for half of the training examples (default: none)")
    p.add_argument("--pretrain", default="", help="task spec trained on first, for --pretrain-steps (curriculum)")
    p.add_argument("--pretrain-steps", type=int, default=0)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--rope-base", type=float, default=10000.0)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--every", type=int, default=1000, help="evaluate every N steps")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inpaint", action="store_true", help="diffusion: givens fixed in the target (Sudoku)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    task, train, test = make_data(a.task, TaskDataConfig(n_train=a.n_train, n_test=a.n_test, seed=a.seed))
    if a.mix:
        _, other, _ = make_data(a.mix, TaskDataConfig(n_train=a.n_train // 2, n_test=10, seed=a.seed + 7))
        train = train[: a.n_train - len(other)] + other
    first = []  # curriculum: examples of --pretrain, trained on before the task
    if a.pretrain:
        first = make_data(a.pretrain, TaskDataConfig(n_train=a.n_train, n_test=10, seed=a.seed + 11))[1]
    mask = "bidirectional" if is_bidirectional(a.objective) else "causal"
    codec = fit_codec(task, a.task, train + test + first, mask, a.inpaint)
    cfg = TransformerConfig(dim=a.dim, n_layers=a.layers, n_heads=a.heads, vocab_size=codec.vocab_size, mask=mask,
                            max_seq_len=max(64, codec.seq_len), rope_base=a.rope_base)
    seed_everything(a.seed)
    model = Transformer(cfg)
    print(f"{a.task} {a.objective}: {model.num_params()} parameters, {codec.seq_len} tokens", flush=True)
    total = a.steps + a.pretrain_steps  # one lr schedule over both phases
    train_cfg = TrainConfig(steps=total, lr=a.lr, warmup_steps=100, weight_decay=a.weight_decay, progress=False,
                            seed=a.seed)
    batches = ExampleBatches(codec.encode(train), a.batch_size, a.seed)
    trainer = Trainer(model, OBJECTIVES.get(a.objective)(),
                      ExampleBatches(codec.encode(first), a.batch_size, a.seed) if first else batches, train_cfg)
    t0, losses = time.process_time(), []
    while trainer.step < total:
        if trainer.step == a.pretrain_steps:
            trainer.data = batches
        losses.append(trainer.train_step()["loss"])
        if trainer.step % a.every == 0 or trainer.step == total:
            acc, pos = position_report(model, task, codec, test)
            recent = losses[-200:]
            print(f"step {trainer.step:>6}  loss {sum(recent) / len(recent):.4f}  exact {acc:.3f}  positions "
                  f"{' '.join(f'{q:.2f}' for q in pos)}  ({time.process_time() - t0:.0f} CPU s)", flush=True)
    if mask == "bidirectional":
        n = len(test[0].target)
        for reveal in ([], [0, n - 1], [0, 1, n - 1]) + tuple([j for j in range(n) if j != i] for i in range(2, n - 1)):
            res = probe(model, codec, test, reveal)
            shown = ",".join(map(str, reveal)) or "none"
            print(f"probe revealed [{shown}]: " + "  ".join(f"x{i} {acc:.2f} (p {c:.2f})" for i, (acc, c) in
                                                           res.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
