"""Yi-Lightning building blocks (01.AI, arXiv:2412.01253, report §2.1-2.3; decoding.md §4.5).

(a) the KV planner's 82.8125% saving at S=65536, W=4096, 3:1 window:full, pairwise full-layer sharing, and the
    bytes measured during greedy generation with the trained hybrid model equal the planner's;
(b) a tiny hybrid (SSSF, W=128) + cross-layer-KV LM at S=1024 against full attention, same data, steps and seed:
    validation loss within +3%, KV reduction >= 70%;
(c) partition-level balance loss against expert-level only (``lmlab.recipes.moe_balance``): partition max/mean
    load, validation loss; fine- vs coarse-grained MoE at equal active parameters (recorded, not gated);
(d) document packing with the block-causal mask: packed-batch loss == per-sample losses.
"""

from __future__ import annotations

import sys

from lmlab.recipes.moe_balance import balance_experiment, granularity_experiment

from . import hybrid


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cfg: dict, smoke: bool) -> dict:
    out = hybrid.report_figure()
    out |= hybrid.hybrid_vs_full(cfg, log)
    size = "smoke" if smoke else "full"
    log(f"MoE balance: alpha_ST only vs + alpha_EP + alpha_PEP ({size})")
    bal = balance_experiment(size, seed=cfg["seed"])
    out |= {f"balance_{k}": v for k, v in bal.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out["balance_val_loss_abs_rel_change"] = abs(bal["val_loss_rel_change"])
    out["balance_arms"] = bal["arms"]
    log(f"MoE granularity: coarse m=1 vs fine m=4 at equal active parameters ({size})")
    grain = granularity_experiment(size, seed=cfg["seed"])
    out |= {f"granularity_{k}": v for k, v in grain.items() if isinstance(v, (int, float))}
    out["granularity_arms"] = grain["arms"]
    return out
