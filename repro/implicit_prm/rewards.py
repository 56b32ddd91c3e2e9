"""Reward models of the reproduction: implicit PRMs (CE, DPO, CE on one rollout per prompt) and the ORM baseline.

Implicit PRM: a copy of the SFT policy trained with ``objectives.dpo.CEReward`` or ``DPO`` (summed response
log-ratios against the frozen SFT policy, whose log-probs are computed once), scored with
``objectives.implicit_prm.ImplicitPRM``; each keeps the training snapshot with the best validation best-of-N
(``early_stopped``). ORM baseline: a copy of the SFT policy whose value is the logit of the
``<mask>`` token at the last response position (the ``<eos>``, which has seen the whole response), fine-tuned end
to end with BCE on the same strict labels. ``<mask>`` never occurs in a causal model's input, so its row of the
(tied) embedding is used only by the output head; it is zeroed before training, so every value starts at 0 (a
fresh linear value head inside the LM head). The lr and epochs are chosen by best-of-N accuracy on held-out
validation rollouts (ties: lower validation BCE).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.core.data import ExampleBatches
from lmlab.core.train import LossOutput, TrainConfig, Trainer
from lmlab.decoding.rerank import best_index
from lmlab.objectives.dpo import DPO, CEConfig, CEReward
from lmlab.objectives.dpo import Config as DPOConfig
from lmlab.objectives.implicit_prm import Config as PRMConfig
from lmlab.objectives.implicit_prm import ImplicitPRM
from lmlab.objectives.preference import dpo_pairs, sequence_logprobs

from .experiment import Rollouts


def steps_for(n: int, batch: int, epochs: float) -> int:
    """Optimizer steps for ``epochs`` passes over ``n`` rows (an epoch = ceil(n / batch) batches)."""
    return max(1, round(epochs * math.ceil(n / batch)))


def fit(model: torch.nn.Module, objective: Any, tensors: dict, cfg: dict, lr: float, epochs: float, seed: int,
        schedule: str = "cosine", hooks: list | None = None) -> list[dict]:
    n = next(iter(tensors.values())).shape[0]
    steps = steps_for(n, cfg["rm_batch"], epochs)
    tcfg = TrainConfig(steps=steps, lr=lr, warmup_steps=max(1, steps // 30), weight_decay=0.0, schedule=schedule,
                       progress=False, seed=seed)
    return Trainer(model, objective, ExampleBatches(tensors, cfg["rm_batch"], seed=seed), tcfg, hooks=hooks).fit()


@torch.no_grad()
def ref_sums(reference: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.cat([sequence_logprobs(reference, ids[i:i + 512], mask[i:i + 512]) for i in range(0, len(ids), 512)])


def early_stopped(model: torch.nn.Module, objective: Any, tensors: dict, cfg: dict, lr: float, epochs: float,
                  seed: int, val_score: Any) -> tuple[torch.nn.Module, dict]:
    """Train for ``epochs``, scoring ``val_score(model)`` (validation BoN) at ``cfg["val_snapshots"]`` evenly
    spaced steps; keep the best snapshot (ties: the later one, closer to the full schedule)."""
    n = next(iter(tensors.values())).shape[0]
    steps = steps_for(n, cfg["rm_batch"], epochs)
    at = {max(1, round(steps * (i + 1) / cfg["val_snapshots"])) for i in range(cfg["val_snapshots"])}
    grid: list[dict] = []
    best: list = []

    def snap(tr, rec):
        if rec["step"] in at:
            score = val_score(model)
            model.train()
            grid.append({"step": rec["step"], "val_bon": score})
            if not best or score >= best[0]:
                best[:] = [score, rec["step"], copy.deepcopy(model.state_dict())]

    hist = fit(model, objective, tensors, cfg, lr, epochs, seed, hooks=[snap])
    model.load_state_dict(best[2])
    return model.eval(), {"loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"], "steps": steps,
                          "stop_step": best[1], "val_bon": best[0], "val_grid": grid}


def prm_val_score(reference: torch.nn.Module, val: Rollouts, ends: list[list[int]], beta: float):
    """Validation BoN accuracy of an implicit PRM with the min of its single step rewards."""
    def score(model: torch.nn.Module) -> float:
        model.eval()
        mins = [float(r.min()) for r in prm_step_rewards(model, reference, val, ends, beta)]
        return bon_accuracy(mins, val.final_ok, val.n)
    return score


def train_ce(policy: torch.nn.Module, ro: Rollouts, cfg: dict, seed: int, val_score: Any,
             per_prompt: int | None = None):
    """Implicit PRM with the CE loss on every rollout (or the first ``per_prompt`` of each prompt)."""
    rows = torch.arange(len(ro.strict)) if per_prompt is None else \
        torch.tensor([r for r in range(len(ro.strict)) if r % ro.n < per_prompt])
    ids, mask = ro.ids[rows], ro.response_mask[rows]
    label = torch.tensor([float(ro.strict[r]) for r in rows.tolist()])
    tensors = {"ids": ids, "response_mask": mask, "label": label, "ref_logp": ref_sums(policy, ids, mask)}
    model, info = early_stopped(copy.deepcopy(policy).train(), CEReward(CEConfig(beta=cfg["beta"])), tensors, cfg,
                                cfg["prm_lr"], cfg["prm_epochs"], seed, val_score)
    return model, {"rows": len(rows)} | info


def train_dpo(policy: torch.nn.Module, ro: Rollouts, cfg: dict, seed: int, val_score: Any):
    """Implicit PRM with the DPO loss on every correct x wrong pair of a prompt's rollouts."""
    pairs, counts = dpo_pairs([r // ro.n for r in range(len(ro.strict))], ro.strict)
    if not pairs:
        raise ValueError("no prompt has both a correct and a wrong rollout: DPO has no pairs")
    w, lo = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    sums = ref_sums(policy, ro.ids, ro.response_mask)
    tensors = {"chosen_ids": ro.ids[w], "chosen_mask": ro.response_mask[w], "rejected_ids": ro.ids[lo],
               "rejected_mask": ro.response_mask[lo], "ref_chosen": sums[w], "ref_rejected": sums[lo]}
    model, info = early_stopped(copy.deepcopy(policy).train(), DPO(DPOConfig(beta=cfg["beta"])), tensors, cfg,
                                cfg["prm_lr"], cfg["dpo_epochs"], seed, val_score)
    return model, {"pairs": counts.pairs, "kept_prompts": counts.kept} | info


@torch.no_grad()
def prm_step_rewards(model: torch.nn.Module, reference: torch.nn.Module, ro: Rollouts, ends: list[list[int]],
                     beta: float) -> list[torch.Tensor]:
    """Per-step implicit rewards r^t (single) of every rollout."""
    prm = ImplicitPRM(model, reference, PRMConfig(beta=beta))
    out: list[torch.Tensor] = []
    for i in range(0, len(ends), 512):
        out += prm.step_rewards(ro.ids[i:i + 512], ro.response_mask[i:i + 512], ends[i:i + 512])
    return out


# ---------------------------------------------------------------------------------------------- ORM baseline
class ValueBCE:
    """BCE on the ORM value: logit of token ``value_id`` at each row's last response position."""

    def __init__(self, value_id: int):
        self.value_id = value_id

    def __call__(self, model: torch.nn.Module, batch: dict) -> LossOutput:
        v = orm_values(model, batch["ids"], batch["last"], self.value_id)  # (B,)
        return LossOutput(F.binary_cross_entropy_with_logits(v, batch["label"]))


def orm_values(model: torch.nn.Module, ids: torch.Tensor, last: torch.Tensor, value_id: int) -> torch.Tensor:
    T = int(last.max()) + 1
    logits = model(ids[:, :T])  # (B, T, V)
    return logits[torch.arange(len(ids)), last, value_id].float()


@torch.no_grad()
def orm_scores(model: torch.nn.Module, ro: Rollouts, value_id: int) -> torch.Tensor:
    model.eval()
    return torch.cat([orm_values(model, ro.ids[i:i + 512], ro.last[i:i + 512], value_id)
                      for i in range(0, len(ro.last), 512)])


def value_model(policy: torch.nn.Module, value_id: int) -> torch.nn.Module:
    """A copy of the policy whose output row ``value_id`` is zero: the value logit starts at 0 for every input."""
    model = copy.deepcopy(policy).train()
    with torch.no_grad():
        model.lm_head.weight[value_id] = 0.0
    return model


def bon_accuracy(scores: list[float] | torch.Tensor, ok: list[bool], n: int) -> float:
    """Share of prompts whose highest-scored sample (ties: the earliest) is ``ok``."""
    s = torch.as_tensor(scores, dtype=torch.float64).view(-1, n).tolist()
    return sum(ok[i * n + best_index(row)] for i, row in enumerate(s)) / len(s)


def train_orm(policy: torch.nn.Module, ro: Rollouts, val: Rollouts, cfg: dict, seed: int, value_id: int):
    """Sweep lr x epochs (snapshots after every epoch of one run per lr); best by validation BoN, then BCE."""
    tensors = {"ids": ro.ids, "last": ro.last, "label": torch.tensor([float(x) for x in ro.strict])}
    vlabel = torch.tensor([float(x) for x in val.strict])
    per_epoch = steps_for(len(ro.strict), cfg["rm_batch"], 1)
    grid: list[dict] = []
    best: list = [None, None]
    for lr in cfg["orm_lrs"]:
        model = value_model(policy, value_id)

        def snap(tr, rec, lr=lr, model=model):
            if rec["step"] % per_epoch == 0:
                row = sweep_row(orm_scores(model, val, value_id), val, vlabel, lr=lr, epochs=rec["step"] // per_epoch)
                model.train()
                grid.append(row)
                if better(row, best[0]):
                    best[:] = [row, copy.deepcopy(model.state_dict())]

        fit(model, ValueBCE(value_id), tensors, cfg, lr, cfg["orm_max_epochs"], seed, schedule="constant",
            hooks=[snap])
    row, state = best
    model = value_model(policy, value_id)
    model.load_state_dict(state)
    return model.eval(), {"orm_lr": row["lr"], "orm_epochs": row["epochs"], "orm_val_bon": row["val_bon"],
                          "orm_val_bce": row["val_bce"], "orm_grid": grid}


# ----------------------------------------------------------------------- ORM baseline 2: frozen trunk + head
class FrozenValueHead(torch.nn.Module):
    """The value of a frozen-trunk ORM: one linear layer on the trunk's final normed hidden state (B, C) -> (B,).

    Linear rather than an MLP: it is the usual reward-model value head (a linear map of the last hidden state),
    and with 2000 labels a 65-parameter probe cannot over-fit, so a failure reads as "the frozen SFT features do
    not carry correctness linearly" rather than as a tuning problem -- the question the full fine-tune could not
    answer (a 1-hidden-layer MLP did no better on a non-recorded seed and over-fitted with the epochs; README).
    Weights and bias start at 0, so every value starts at 0 like the first ORM's.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(dim, 1)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(feats)[:, 0]  # (B, C) -> (B,)


class HeadBCE:
    """BCE of a value head on precomputed features."""

    def __call__(self, head: torch.nn.Module, batch: dict) -> LossOutput:
        return LossOutput(F.binary_cross_entropy_with_logits(head(batch["feats"]), batch["label"]))


@torch.no_grad()
def last_features(trunk: torch.nn.Module, ro: Rollouts) -> torch.Tensor:
    """Final normed hidden state (after the last norm) at each row's last response position: (R, C)."""
    trunk.eval()
    out = []
    for i in range(0, len(ro.last), 512):
        ids, last = ro.ids[i:i + 512], ro.last[i:i + 512]
        h = trunk.hidden(ids[:, :int(last.max()) + 1])  # (B, T, C)
        out.append(h[torch.arange(len(ids)), last].float())  # (B, C)
    return torch.cat(out)


def sweep_row(scores: torch.Tensor, val: Rollouts, vlabel: torch.Tensor, **keys) -> dict:
    """One cell of an ORM sweep: validation BoN and BCE of ``scores`` (R,)."""
    return keys | {"val_bon": bon_accuracy(scores, val.final_ok, val.n),
                   "val_bce": float(F.binary_cross_entropy_with_logits(scores, vlabel))}


def better(row: dict, best: dict | None) -> bool:
    """The ORM selection rule: higher validation BoN, ties broken by lower validation BCE."""
    return best is None or (row["val_bon"], -row["val_bce"]) > (best["val_bon"], -best["val_bce"])


def train_frozen_orm(policy: torch.nn.Module, ro: Rollouts, val: Rollouts, cfg: dict, seed: int):
    """ORM with the SFT policy frozen as trunk and a trainable ``FrozenValueHead`` on its last-position features.

    The trunk never changes, so its features are computed once; sweep ``orm_frozen_lrs`` x up to
    ``orm_frozen_max_epochs`` (constant lr, a snapshot after every epoch), chosen like ``train_orm``.
    Returns (head, info); score test rollouts with ``head(last_features(policy, test))``.
    """
    tensors = {"feats": last_features(policy, ro), "label": torch.tensor([float(x) for x in ro.strict])}
    vfeats, vlabel = last_features(policy, val), torch.tensor([float(x) for x in val.strict])
    per_epoch = steps_for(len(ro.strict), cfg["rm_batch"], 1)
    grid: list[dict] = []
    best: list = [None, None]
    for lr in cfg["orm_frozen_lrs"]:
        head = FrozenValueHead(tensors["feats"].shape[1])

        def snap(tr, rec, lr=lr, head=head):
            if rec["step"] % per_epoch == 0:
                with torch.no_grad():
                    row = sweep_row(head(vfeats), val, vlabel, lr=lr, epochs=rec["step"] // per_epoch)
                grid.append(row)
                if better(row, best[0]):
                    best[:] = [row, copy.deepcopy(head.state_dict())]

        fit(head, HeadBCE(), tensors, cfg, lr, cfg["orm_frozen_max_epochs"], seed, schedule="constant",
            hooks=[snap])
    row, state = best
    head = FrozenValueHead(tensors["feats"].shape[1])
    head.load_state_dict(state)
    return head.eval(), {"orm_frozen_lr": row["lr"], "orm_frozen_epochs": row["epochs"],
                         "orm_frozen_val_bon": row["val_bon"], "orm_frozen_val_bce": row["val_bce"],
                         "orm_frozen_grid": grid}


def orm_choice(info: dict) -> int:
    """Which ORM the gate compares against: 1 (frozen trunk) when its validation BoN is higher, ties broken by
    lower validation BCE; else 0 (full fine-tune). Test numbers never enter."""
    full = {"val_bon": info["orm_val_bon"], "val_bce": info["orm_val_bce"]}
    frozen = {"val_bon": info["orm_frozen_val_bon"], "val_bce": info["orm_frozen_val_bce"]}
    return int(better(frozen, full))
