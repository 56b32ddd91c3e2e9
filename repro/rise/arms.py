"""The preference arms of the RISE reproduction: self-sampled attempts -> pairs -> DPO + NLL from the SFT policy.

``attempts``: the policy's temperature-1 rollouts as ``objectives.rise.Attempt`` (steps = the answer split on ',',
correct = the strict verifier). ``pairs``: ``objectives.rise.build_pairs`` with the rule-based ``chain_editor``
(value / symbol / operand / delete; the tiny policy cannot follow editing instructions, so "self"-editing is not
reproduced). The RISE arm trains on full pairs and edited step pairs; the DPO + NLL arm on the full pairs only.
Both start from a copy of the SFT policy, use the frozen SFT policy as reference (its log-probs computed once) and
run the same number of optimizer steps.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from lmlab.core.data import ExampleBatches
from lmlab.core.train import TrainConfig, Trainer
from lmlab.harness import repro_module
from lmlab.objectives import rise
from lmlab.objectives.dpo import DPO
from lmlab.objectives.dpo import Config as DPOConfig
from lmlab.tasks import chains
from lmlab.tasks.encoding import TaskCodec

PROMPT_END = "\x00"  # stands for <sep> in the strings given to ``rise.encode_pairs``


def attempts(ro: Any, alphabet: str) -> tuple[list[rise.Attempt], int]:
    """Rollouts as attempts; an answer with a stray special token (not text of the alphabet) is left out."""
    out, dropped = [], 0
    for prompt, answer, ok in zip(ro.prompts, ro.answers, ro.strict):
        if not answer or any(ch not in alphabet for ch in answer):
            dropped += 1
            continue
        out.append(rise.Attempt(prompt, answer.split(","), ok))
    return out, dropped


def encoder(codec: TaskCodec):
    """``text`` with ``PROMPT_END`` -> prompt ids, <sep>, response ids (the codec's layout, no <eos>)."""
    def encode(text: str) -> list[int]:
        head, sep, tail = text.partition(PROMPT_END)
        return codec.tok.encode(head) + ([codec.sep_id] if sep else []) + (codec.tok.encode(tail) if tail else [])
    return encode


def edits_are_wrong(pairs: list[rise.Pair], task_cfg: chains.Config) -> float:
    """Share of step pairs whose rejected step is wrong given its inputs while the chosen step is right."""
    steps = [p for p in pairs if p.kind == "step"]
    ok = 0
    for p in steps:
        good = chains.step_errors(p.problem, ",".join(p.prefix + p.chosen), task_cfg)
        bad = chains.step_errors(p.problem, ",".join(p.prefix + p.rejected), task_cfg)
        ok += (not good[p.step]) and bad[p.step]
    return ok / max(1, len(steps))


@torch.no_grad()
def with_reference(tensors: dict[str, torch.Tensor], reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    rw = repro_module("implicit_prm", "rewards")
    return tensors | {"ref_chosen": rw.ref_sums(reference, tensors["chosen_ids"], tensors["chosen_mask"]),
                      "ref_rejected": rw.ref_sums(reference, tensors["rejected_ids"], tensors["rejected_mask"])}


def train_arm(policy: torch.nn.Module, pairs: list[rise.Pair], codec: TaskCodec, cfg: dict, seed: int
              ) -> tuple[torch.nn.Module, dict]:
    """A copy of ``policy`` trained ``pref_steps`` steps of DPO + NLL on ``pairs`` (reference: ``policy``)."""
    tensors = with_reference(rise.encode_pairs(pairs, encoder(codec), sep=",", prompt_end=PROMPT_END), policy)
    model = copy.deepcopy(policy).train()
    tcfg = TrainConfig(steps=cfg["pref_steps"], lr=cfg["pref_lr"], warmup_steps=max(1, cfg["pref_steps"] // 10),
                       weight_decay=0.0, schedule="cosine", progress=False, seed=seed)
    objective = DPO(DPOConfig(beta=cfg["beta"], nll_coef=cfg["nll_coef"]))
    hist = Trainer(model, objective, ExampleBatches(tensors, cfg["pref_batch"], seed=seed), tcfg).fit()
    return model.eval(), {"steps": len(hist), "loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"],
                          "rows": len(pairs)}


def arms(policy: torch.nn.Module, ro: Any, codec: TaskCodec, task_cfg: chains.Config, cfg: dict, seed: int
         ) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """The RISE and DPO + NLL arms from the rollouts ``ro``, with pair statistics."""
    tries, dropped = attempts(ro, chains.ChainTask.alphabet)
    pairs, counts = rise.build_pairs(tries, rise.chain_editor(task_cfg),
                                     rise.Config(edited_per_problem=cfg["edited_per_problem"], seed=seed))
    full = [p for p in pairs if p.kind == "full"]
    if not full:
        raise ValueError(f"no train prompt has both a correct and a wrong attempt ({len(tries)} attempts, "
                         f"{sum(t.correct for t in tries)} correct): the SFT policy is too weak or too strong")
    info: dict[str, Any] = {"attempts_dropped": dropped, "problems_with_both": counts.with_both,
                            "full_pairs": counts.full, "step_pairs": counts.step,
                            "edits_dropped": sum(counts.dropped.values()),
                            "edits_wrong": edits_are_wrong(pairs, task_cfg)}
    for kind in chains.ERROR_KINDS:
        info[f"step_pairs_{kind}"] = sum(p.error == kind for p in pairs)
    models = {}
    for name, data in (("rise", pairs), ("dpo", full)):
        models[name], stats = train_arm(policy, data, codec, cfg, seed)
        info |= {f"{name}_{k}": v for k, v in stats.items()}
    info["equal_steps"] = float(info["rise_steps"] == info["dpo_steps"] == cfg["pref_steps"])
    return models, info
