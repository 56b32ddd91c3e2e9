"""Yi-Lightning's KV-cache design (report §2.3) at small scale: the planner's figure, a hybrid + cross-layer-KV LM
against full attention at equal budget, the cache bytes measured during greedy generation, and document packing
(§4) on the trained hybrid model."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import lmlab
from lmlab.core import masks
from lmlab.core.data import PackedDocs
from lmlab.core.kv_cache import kv_bytes
from lmlab.core.train import TrainConfig
from lmlab.core.transformer import TransformerConfig
from lmlab.decoding.reference import Greedy
from lmlab.objectives.causal_lm import CausalLM
from lmlab.recipes.text import DataConfig, TextJob, text_splits, train_lm


def report_figure(seq_len: int = 65536, window: int = 4096) -> dict[str, float]:
    """The planner at the report's 64K context: 3 window : 1 full layers, full layers paired (8 layers)."""
    shape = dict(vocab_size=256, dim=128, n_layers=8, n_heads=4, max_seq_len=seq_len)
    hybrid = TransformerConfig(**shape, layer_pattern="SSSF", window=window, kv_share=2)
    return {"kv_saving_64k": 1 - kv_bytes(hybrid, seq_len) / kv_bytes(TransformerConfig(**shape), seq_len),
            "kv_saving_64k_closed_form": 1 - (1 / 8 + 3 / 4 * window / seq_len)}


def arm_job(cfg: dict, hybrid: bool, run_dir: Path) -> TextJob:
    extra = dict(layer_pattern="SSSF", window=cfg["window"], kv_share=2) if hybrid else {}
    return TextJob(
        objective="causal_lm", seed=cfg["seed"], threads=cfg["threads"],
        model=TransformerConfig(dim=cfg["dim"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                                max_seq_len=cfg["seq_len"], **extra),
        train=TrainConfig(steps=cfg["steps"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"],
                          eval_batches=cfg["eval_batches"], log_every=50, run_dir=str(run_dir), ckpt_minutes=0),
        data=DataConfig(source="corpus_en", tokenizer="bpe", bpe_vocab=cfg["bpe_vocab"], max_bytes=cfg["max_bytes"],
                        seq_len=cfg["seq_len"], batch_size=cfg["batch_size"]))


@torch.no_grad()
def generation_bytes(model: Any, prompt: list[int], new_tokens: int) -> tuple[int, list[int]]:
    """Greedy generation with one cache of len(prompt) + new_tokens positions: (its bytes, the tokens)."""
    cache = model.new_cache(batch=1, max_len=len(prompt) + new_tokens)
    logits, out = model(torch.tensor([prompt]), cache=cache)[0, -1], []
    for _ in range(new_tokens):
        out.append(int(logits.argmax()))
        logits = model(torch.tensor([out[-1:]]), cache=cache)[0, -1]
    return cache.nbytes, out


def hybrid_vs_full(cfg: dict, log) -> dict[str, Any]:
    out: dict[str, Any] = {}
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, hybrid in (("full", False), ("hybrid", True)):
            log(f"training the {name}-attention LM ({cfg['steps']} steps of {cfg['batch_size']} x {cfg['seq_len']})")
            res = train_lm(arm_job(cfg, hybrid, Path(tmp) / name))
            out |= {f"{name}_{k}": res[k] for k in ("val_loss", "val_bpb", "params", "tokens_per_s", "seconds")}
            models[name], tok, _ = lmlab.load(str(Path(tmp) / name / "model"))
    _, val_text = text_splits(arm_job(cfg, False, Path(".")).data)
    prompt = tok.encode(val_text[:4000])[: cfg["seq_len"] - cfg["gen_tokens"]]
    measured = {}
    for name, model in models.items():
        measured[name], tokens = generation_bytes(model.eval(), prompt, cfg["gen_tokens"])
        reference = Greedy().generate(model, prompt, max_new_tokens=cfg["gen_tokens"]).tokens
        out[f"{name}_generation_matches_greedy"] = float(tokens == reference)
    planned = kv_bytes(models["hybrid"].cfg, cfg["seq_len"])
    paragraphs = (tok.encode(p) for p in re.split(r"\n[ \t]*\n", val_text))
    docs = [d for d in paragraphs if 16 <= len(d) <= cfg["seq_len"] // 4][: cfg["packing_docs"]]
    out |= packing_check(models["hybrid"], docs, cfg["seq_len"])
    out |= {"kv_bytes_full": measured["full"], "kv_bytes_hybrid": measured["hybrid"], "kv_bytes_planned": planned,
            "planner_bytes_error": abs(planned - measured["hybrid"]),
            "kv_reduction_measured": 1 - measured["hybrid"] / measured["full"],
            "val_loss_rel_change": out["hybrid_val_loss"] / out["full_val_loss"] - 1}
    return out


@torch.no_grad()
def packing_check(model: Any, docs: list[list[int]], seq_len: int) -> dict[str, float]:
    """Samples packed into rows with the block-causal mask (``PackedDocs`` + ``CausalLM``) against each sample run
    alone: the largest difference of a per-sample mean loss, and of the equalised batch loss."""
    batch = next(PackedDocs(docs, batch_size=len(docs), seq_len=seq_len).sequential(weights=True))
    logits = model(batch["ids"], positions=batch["positions"], mask=masks.document(batch["doc_ids"]))
    tok = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")  # (B*T,)
    doc, w = batch["doc_ids"].flatten(), batch["weights"].flatten()
    packed = [float((tok * w)[doc == i].sum()) for i in range(len(docs))]
    alone = [float(F.cross_entropy(model(torch.tensor([d[:-1]]))[0], torch.tensor(d[1:]))) for d in docs]
    equalised = float(CausalLM()(model, batch).loss)
    return {"packing_samples": len(docs), "packing_rows": int(batch["ids"].shape[0]),
            "packing_max_abs_diff": max(abs(a - b) for a, b in zip(packed, alone)),
            "packing_batch_loss_abs_diff": abs(equalised - sum(alone) / len(alone))}
