"""GSD reproduction: AR vs chain SD vs token-tree SD vs GSD, on a tiny trained pair and on SmolLM2-135M.

Three parts (see README.md): (1) greedy decoding of held-out corpus_en prompts with a ~5M target and a
~0.4M draft trained here; (2) the sampling test on a 16-token toy model (exact distribution vs speculative
samples); (3) SmolLM2-135M (dequantized Q4_1) with a small sub-vocabulary draft, and with a layer-skip draft.
"""

from __future__ import annotations

import time

import torch

from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.base import Sampling
from lmlab.decoding.gsd import Config, GraphSpeculative

from . import smollm
from .checks import compare, decoders, sampling_test
from .pair import agreement, held_out_prompts, load_or_train_pair


def toy_pair(cfg: dict) -> tuple[Transformer, Transformer]:
    """A random small-vocabulary target with peaked next-token distributions; a perturbed copy as draft."""
    shape = TransformerConfig(vocab_size=cfg["dist_vocab"], dim=32, n_layers=2, n_heads=4, max_seq_len=64,
                              tie_embeddings=False)
    torch.manual_seed(cfg["seed"])
    target = Transformer(shape).eval()
    draft = Transformer(shape).eval()
    with torch.no_grad():
        target.lm_head.weight.normal_(0.0, 1.0)
        for p, q in zip(draft.parameters(), target.parameters()):
            p.copy_(q + 0.3 * q.std() * torch.randn_like(q))
    return target, draft


def run(cfg: dict, smoke: bool) -> dict:
    torch.set_num_threads(cfg["threads"])
    cpu0 = time.process_time()
    out: dict = {}
    pair = load_or_train_pair(cfg)
    target, draft = pair["target"], pair["draft"]
    out |= {"target_params": target.num_params(), "draft_params": draft.num_params(),
            "pair_cached": pair["info"]["cached"], "target_final_loss": pair["info"]["target"]["final_loss"],
            "draft_final_loss": pair["info"]["draft"]["final_loss"]}
    prompts = held_out_prompts(pair["val_ids"], cfg["n_prompts"], cfg["prompt_len"])
    out["tiny_draft_agreement"] = agreement(target, draft, prompts)
    out |= compare(target, decoders(draft, cfg), prompts, cfg["max_new_tokens"], "tiny")
    cfg = cfg | {"extra_merge_contexts": []}  # the extra GSD variants only in the tiny-pair comparison

    toy, toy_draft = toy_pair(cfg)
    s = Sampling(sample=True, temperature=cfg["dist_temperature"], top_k=cfg["dist_top_k"])
    dist_cfg = cfg | {"depth": cfg["dist_depth"], "budget": cfg["dist_budget"],
                      "merge_context": cfg["dist_merge_context"]}
    for name in cfg["dist_decoders"]:
        res = sampling_test(toy, decoders(toy_draft, dist_cfg, s)[name], [1, 2, 3], cfg["dist_new_tokens"], s,
                            cfg["dist_samples"])
        out |= {f"dist_{k}_{name}": v for k, v in res.items()}

    if cfg["smol"] and smollm.available():
        sm = smollm.setup(cfg)
        out |= {f"smol_draft_{k}": v for k, v in sm["draft_info"].items() if isinstance(v, (int, float))}
        prompts = held_out_prompts(sm["val_ids"], cfg["smol_prompts"], cfg["prompt_len"])
        out["smol_draft_agreement"] = agreement(sm["target"], sm["sub_draft"], prompts)
        out["smol_skip_agreement"] = agreement(sm["target"], sm["skip_draft"], prompts)
        smol_cfg = cfg | {"depth": cfg["smol_depth"], "budget": cfg["smol_budget"], "width": cfg["smol_width"]}
        new = cfg["smol_new_tokens"]
        out |= compare(sm["target"], decoders(sm["sub_draft"], smol_cfg), prompts, new, "smol")
        skip = GraphSpeculative(Config(depth=cfg["smol_depth"], budget=cfg["smol_budget"], top_k=cfg["top_k"],
                                       leaf_threshold=cfg["leaf_threshold"], merge_context=cfg["merge_context"]),
                                sm["skip_draft"])
        out |= compare(sm["target"], {"gsd": skip}, prompts[: cfg["smol_skip_prompts"]], new, "smolskip")
    out["process_cpu_seconds"] = time.process_time() - cpu0  # wall-clock is in the record's "seconds"
    return out
