"""RevisEval, the controlled mechanism test (methods spec 6.6(a)): responses of known quality (k = 0..4
corruptions of a clean answer), a scripted reviser run through the real pipeline runner, and classic metrics
against the response-adapted reference versus a fixed paraphrase ("human") reference."""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

from lmlab.core.runtime import atomic_write
from lmlab.pipelines.reviseval import (
    Config,
    RevisEval,
    correlations,
    cost_ledger,
    pairwise_accuracy,
    shuffle_pairs,
)
from lmlab.pipelines.runner import read_records

from .mechanism import ScriptedReviser, apply_edits, make_edits, paraphrase, sentences

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "text"


def build_items(cfg: dict) -> tuple[list[dict], dict]:
    """Pointwise records (one per source x k) and what the scripted reviser knows about each response."""
    rng = random.Random(cfg["seed"])
    srcs = sentences(FIXTURES)[: cfg["sources"]]
    if len(srcs) < cfg["sources"]:
        raise ValueError(f"sources = {cfg['sources']}, but the fixtures have only {len(srcs)} usable sentences")
    vocab = sorted({w for s in srcs for w in s.split() if w.isalpha() and len(w) >= 4})
    items, known = [], {}
    for i, clean in enumerate(srcs):
        words = clean.split()
        edits = make_edits(words, cfg["max_k"], vocab, rng)
        rng.shuffle(edits)  # y_k carries the first k edits: responses of one source are nested
        instruction = f"Recite the sentence that begins: '{' '.join(words[:4])} ...'"
        for k in range(cfg["max_k"] + 1):
            response = apply_edits(words, edits[:k])
            known[response] = (words, edits[:k])
            items.append({"id": f"s{i}k{k}", "src": i, "k": k, "instruction": instruction, "response": response,
                          "human_reference": paraphrase(clean), "clean": clean})
    return items, known


def build_pairs(items: list[dict], seed: int) -> list[dict]:
    """Every pair of responses to one source with different k; the label names the less corrupted one."""
    by_src: dict[int, list[dict]] = {}
    for it in items:
        by_src.setdefault(it["src"], []).append(it)
    pairs = [{"id": f"{a['id']}-{b['id']}", "instruction": a["instruction"], "response_a": a["response"],
              "response_b": b["response"], "label": "A" if a["k"] < b["k"] else "B",
              "human_reference": a["human_reference"]}
             for group in by_src.values() for a, b in combinations(group, 2)]
    return shuffle_pairs(pairs, seed)


def run_pipeline(rev: RevisEval, records: list[dict], llm: ScriptedReviser, tmp: Path, name: str):
    """The records through the real runner (JSONL in and out); (output records in input order, summary)."""
    atomic_write(tmp / f"{name}.in.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    summary = rev.run(tmp / f"{name}.in.jsonl", tmp / f"{name}.out.jsonl", llm)
    out = {r["id"]: r for r in read_records(tmp / f"{name}.out.jsonl", "id")}
    return [out[r["id"]] for r in records if r["id"] in out], summary


@contextlib.contextmanager
def reviser(cfg: dict, known: Any) -> Iterator[Any]:
    """The reviser: the scripted oracle, or a model (``reviser`` = any ``lmlab.load`` spec, e.g. smollm2-135m)
    served by ``lmlab serve`` on loopback and reached through ``core.chat.OpenAIClient``."""
    if cfg["reviser"] == "scripted":
        yield ScriptedReviser(known, p_fix=cfg["p_fix"], seed=cfg["seed"])
        return
    from lmlab.core.chat import OpenAIClient
    from lmlab.serve import LocalClient, background

    with background(LocalClient(cfg["reviser"])) as port:
        yield OpenAIClient(f"http://127.0.0.1:{port}/v1", cfg["reviser"], timeout=600)


def pointwise(items: list[dict], llm: Any, tmp: Path, metrics: list[str], max_tokens: int) -> tuple[dict, Any]:
    rev = RevisEval(Config(form="pointwise", judge=False, metrics=metrics, reviser_max_tokens=max_tokens))
    out, summary = run_pipeline(rev, items, llm, tmp, "pointwise")
    adapted = rev.score(out)
    human = rev.score([r | {"reference": r["human_reference"]} for r in out])
    quality = [-r["k"] for r in out]
    res: dict[str, Any] = {"pointwise_records": len(out)}
    for m in metrics:
        for name, scored in (("adapted", adapted), ("human", human)):
            c = correlations([r["metrics"][m] for r in scored], quality)
            res[f"tau_{m}_{name}"], res[f"rho_{m}_{name}"] = c["kendall_tau"], c["spearman_rho"]
        res[f"tau_gain_{m}"] = res[f"tau_{m}_adapted"] - res[f"tau_{m}_human"]
    k0 = [r["metrics"]["bleu"] for r in adapted if r["k"] == 0]
    res["k0_adapted_bleu_min"] = min(k0) if k0 else float("nan")
    return res, summary


def pairwise(pairs: list[dict], llm: ScriptedReviser, tmp: Path, metrics: list[str], both: bool) -> tuple[dict, Any]:
    tag = "both" if both else "one"
    rev = RevisEval(Config(judge=False, both_orders=both, metrics=metrics))
    out, summary = run_pipeline(rev, pairs, llm, tmp, f"pairwise_{tag}")
    labels = [r["label"] for r in out]
    res: dict[str, Any] = {f"pairs_{tag}": len(out)}
    scored = rev.score(out)
    for m in metrics:
        res[f"acc_{m}_{tag}"] = pairwise_accuracy([r["metric_votes"][m] for r in scored], labels)
    res[f"acc_majority_{tag}"] = pairwise_accuracy([r["majority"] for r in scored], labels)
    res[f"majority_tie_share_{tag}"] = sum(r["majority"] == "tie" for r in scored) / max(len(scored), 1)
    res[f"majority_minus_best_single_{tag}"] = res[f"acc_majority_{tag}"] - max(res[f"acc_{m}_{tag}"]
                                                                               for m in metrics)
    if not both:  # the same pairs against the fixed paraphrase reference, for contrast
        human = rev.score([r | {"references": {"H": r["human_reference"]}} for r in out])
        for m in metrics:
            res[f"acc_{m}_human"] = pairwise_accuracy([r["metric_votes"][m] for r in human], labels)
        res["acc_majority_human"] = pairwise_accuracy([r["majority"] for r in human], labels)
    return res, summary


def run(cfg: dict, smoke: bool) -> dict:
    metrics = list(cfg["metrics"])
    items, known = build_items(cfg)
    pairs = build_pairs(items, cfg["seed"])
    res: dict[str, Any] = {"sources": cfg["sources"], "p_fix": cfg["p_fix"], "reviser": cfg["reviser"]}
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, reviser(cfg, known) as llm:
        part, summary = pointwise(items, llm, Path(tmp), metrics, cfg["reviser_max_tokens"])
        res |= part
        res["ledger_pointwise"] = cost_ledger(summary)
        failed += summary.failed
        for both in (False, True) if cfg["pairwise"] else ():
            part, summary = pairwise(pairs, llm, Path(tmp), metrics, both)
            res |= part
            res[f"ledger_pairwise_{'both' if both else 'one'}"] = cost_ledger(summary)
            failed += summary.failed
    res["records_failed"] = failed
    return res
