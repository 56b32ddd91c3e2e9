"""Densing law: (1) the law from the paper's Fig. 1 table shipped with lmlab; (2) the density method in
miniature: tiny byte-level reference decoders on corpus_en with a multiple-choice next-word benchmark,
a reference curve (loss law + score sigmoid), and the densities of three targets (more data, cleaner data,
pruned)."""

from __future__ import annotations

import copy
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from lmlab.core.data import TokenWindows
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.laws.capacity_density import Config, ReferenceCurve, densing_fit, densing_points, load_models
from lmlab.objectives.causal_lm import CausalLM
from lmlab.recipes.text import DataConfig, text_splits

RESULTS = Path(__file__).parent / "results"
TOK = ByteTokenizer()


def last_word_items(text: str, n: int, context: int, seed: int, options: int = 4) -> tuple[torch.Tensor, ...]:
    """A LAMBADA-like multiple-choice benchmark from held-out text: ``context`` bytes -> the next word (4-12
    letters, then a space) against ``options - 1`` distractor words of the same length from the same text.
    Returns ids (n, options, W), the correct option first, right-padded with 0, and the answer mask (n, W - 1)
    over the target positions."""
    found = [(m.start(), m.group(0)) for m in re.finditer(r"(?<= )[A-Za-z]{4,12} ", text) if m.start() >= context]
    by_len: dict[int, list[str]] = {}
    for _, w in found:
        by_len.setdefault(len(w), []).append(w)
    rng = random.Random(seed)
    rows, masks = [], []
    for p, word in rng.sample(found, min(n, len(found))):
        others = [w for w in dict.fromkeys(by_len[len(word)]) if w != word]
        if len(others) < options - 1:
            continue
        ctx = TOK.encode(text[p - context:p])[-context:]
        rows.append([ctx + TOK.encode(w) for w in [word, *rng.sample(others, options - 1)]])
        masks.append([0] * (len(ctx) - 1) + [1] * len(word))
    width = max(len(r[0]) for r in rows)
    ids = torch.tensor([[o + [0] * (width - len(o)) for o in r] for r in rows])  # (n, options, W)
    mask = torch.tensor([m + [0] * (width - 1 - len(m)) for m in masks], dtype=torch.bool)  # (n, W - 1)
    return ids, mask


def junk(text: str, share: float, seed: int) -> str:
    """Low-quality data: a share of the lines has its characters shuffled (spelling and syntax destroyed)."""
    rng = random.Random(seed)
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if rng.random() < share:
            lines[i] = "".join(rng.sample(line, len(line)))
    return "\n".join(lines)


@torch.no_grad()
def benchmark(model: nn.Module, items: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """loss: conditional NLL of the correct answer (nats/byte); score: share of its bytes that are the top-1
    prediction (teacher-forced); mc: multiple-choice accuracy (the correct word has the highest likelihood)."""
    ids, mask = items
    n, k, w = ids.shape
    flat = ids.reshape(n * k, w)
    model.eval()
    logits = torch.cat([model(flat[i:i + 512, :-1]) for i in range(0, n * k, 512)])  # (n k, W - 1, V)
    model.train()
    nll = F.cross_entropy(logits.transpose(1, 2), flat[:, 1:], reduction="none").reshape(n, k, w - 1)
    per_option = (nll * mask[:, None]).sum(-1)  # (n, k) answer NLL of every option
    hit = (logits.argmax(-1) == flat[:, 1:]).reshape(n, k, w - 1)[:, 0]  # (n, W - 1) correct option only
    return {"loss": float(per_option[:, 0].sum() / mask.sum()), "score": float(hit[mask].float().mean()),
            "mc": float((per_option.argmin(-1) == 0).float().mean())}


class Run:
    """One model trained in segments with a constant lr, evaluated on the benchmark at token checkpoints."""

    def __init__(self, model: nn.Module, stream: np.ndarray, cfg: dict, seed: int):
        self.per_step, self.model = cfg["batch"] * cfg["seq_len"], model
        tc = TrainConfig(steps=1, lr=cfg["lr"], schedule="constant", warmup_steps=cfg["warmup_steps"],
                         progress=False, log_every=10**9, seed=seed)
        data = TokenWindows(stream, cfg["batch"], cfg["seq_len"], seed=seed)
        self.trainer = Trainer(model, CausalLM(), data, tc)
        self.evals: list[dict] = []

    def to(self, tokens: float, items: tuple) -> dict:
        self.trainer.cfg = replace(self.trainer.cfg, steps=max(1, int(tokens // self.per_step)))
        self.trainer.fit(resume=False)
        self.evals.append({"tokens": self.trainer.step * self.per_step, **benchmark(self.model, items),
                           "params": nonzero_params(self.model)})
        return self.evals[-1]


def build(dim: int, cfg: dict, seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=TOK.vocab_size, dim=dim, n_layers=cfg["n_layers"],
                                         n_heads=cfg["n_heads"], max_seq_len=cfg["seq_len"]))


def nonzero_params(model: nn.Module) -> int:
    return int(sum((p != 0).sum() for p in model.parameters()))


def prune_width(model: nn.Module, amount: float) -> list[tuple[nn.Module, str]]:
    """Structured magnitude pruning, as in width pruning (Minitron): in every linear layer of the blocks the
    output rows with the smallest L2 norm are zeroed (embeddings and norms kept); the masks stay on."""
    targets = [(m, "weight") for m in model.layers.modules() if isinstance(m, nn.Linear)]
    for m, name in targets:
        prune.ln_structured(m, name, amount=amount, n=2, dim=0)
    return targets


def miniature(cfg: dict) -> dict:
    data = DataConfig(source="corpus_en", tokenizer="byte", max_bytes=cfg["max_bytes"])
    train_text, val_text = text_splits(data)
    items = last_word_items(val_text, cfg["items"], cfg["context"], seed=0)
    dirty_ids = np.asarray(TOK.encode(junk(train_text, cfg["junk_share"], seed=1)), dtype=np.int64)
    clean_ids = np.asarray(TOK.encode(train_text), dtype=np.int64)
    d0 = cfg["d0_tokens"]
    refs = []
    for dim in cfg["reference_dims"]:
        run = Run(build(dim, cfg, seed=0), dirty_ids, cfg, seed=0)
        refs += [run.to(f * d0, items) for f in cfg["checkpoints"]]  # checkpoints in units of D0
    curve = ReferenceCurve.fit(refs, refs, d0=d0, chance=0.0, n_boot=cfg["n_boot"])
    # targets: a new width and seed; the parent is D0 tokens of the reference (dirty) data
    parent = Run(build(cfg["target_dim"], cfg, seed=1), dirty_ids, cfg, seed=1)
    ev = {"parent": parent.to(d0, items)}
    pruned_model = copy.deepcopy(parent.model)
    masks = prune_width(pruned_model, cfg["prune_amount"])
    ev["pruned"] = Run(pruned_model, dirty_ids, cfg, seed=2).to(cfg["prune_retrain"] * d0, items)
    for m, name in masks:
        prune.remove(m, name)
    ev["pruned"]["params"] = nonzero_params(pruned_model)
    ev["more_data"] = parent.to(cfg["more_data"] * d0, items)
    ev["clean"] = Run(build(cfg["target_dim"], cfg, seed=1), clean_ids, cfg, seed=1).to(d0, items)
    out = {"benchmark_items": len(items[0]), "reference_points": refs, "curve": curve.to_dict(),
           "targets": ev}
    for name, e in ev.items():
        est = curve.density(e["score"], e["params"])
        out[f"rho_{name}"], out[f"flag_{name}"], out[f"effective_params_{name}"] = (
            est.density, est.flag, est.effective_params)
    out["rho_pruned_minus_parent"] = (out["rho_pruned"] - out["rho_parent"]
                                      if None not in (out["rho_pruned"], out["rho_parent"]) else None)
    out["loss_law_r2"], out["score_law_r2"] = curve.meta["loss_r2"], curve.meta["score_r2"]
    return out


def run(cfg: dict, smoke: bool) -> dict:
    torch.set_num_threads(1)
    table = load_models()
    fits = {v: densing_fit(table, Config(variant=v, n_boot=cfg["n_boot"]))
            for v in ("envelope", "all", "quarterly")}
    env = fits["envelope"]
    metrics = {"densing_A": env.params["A"], "densing_A_ci": list(env.ci["A"]), "densing_B": env.params["B"],
               "densing_r2": env.r2, "doubling_days": env.derived["doubling_days"],
               "doubling_days_ci": list(env.derived_ci["doubling_days"]),
               "doubling_months": env.derived["doubling_months"], "envelope_points": len(env.residuals),
               "table_models": len(table["model"])}
    for v in ("all", "quarterly"):
        metrics |= {f"{v}_A": fits[v].params["A"], f"{v}_r2": fits[v].r2,
                    f"{v}_doubling_days": fits[v].derived["doubling_days"]}
    if not smoke:
        RESULTS.mkdir(exist_ok=True)
        env.plot(RESULTS / "densing_envelope.png", others=densing_points(table, "all"),
                 title="Densing law: record-setting envelope of the 51-model table (grey: all models)")
    metrics |= miniature(cfg)
    return metrics
