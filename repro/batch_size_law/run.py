"""Batch-size laws on corpus_en: a sweep of batch sizes x learning rates with a tiny decoder, then the
McCandlish trade-off (steps vs batch per target loss -> critical batch), B_opt against compute, and the
measured gradient noise scale. Thin: training and fitting are lmlab.laws.batch_size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from lmlab.core.runtime import cache_dir
from lmlab.core.transformer import TransformerConfig
from lmlab.laws.batch_size import LAWS, REFERENCE, Config, critical_batch, optimal_batch, train_run
from lmlab.recipes.text import DataConfig, build_tokenizer, text_splits

TRAINING_KEYS = ("max_bytes", "dim", "n_layers", "n_heads", "seq_len", "batches", "lr0", "batch0", "lr_mults",
                 "tokens", "eval_every_tokens", "warmup_steps", "noise_every", "eval_batches")

RESULTS = Path(__file__).parent / "results"


def sweep(cfg: dict) -> list[dict]:
    spec = json.dumps({k: cfg[k] for k in TRAINING_KEYS}, sort_keys=True)
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    cache = cache_dir("repro_batch_size_law") / f"{key}.json"
    if cfg["reuse_runs"] and cache.is_file():
        return [{k: np.asarray(v) if isinstance(v, list) else v for k, v in r.items()}
                for r in json.loads(cache.read_text())]
    data = DataConfig(source="corpus_en", tokenizer="byte", max_bytes=cfg["max_bytes"])
    train_text, val_text = text_splits(data)
    tok = build_tokenizer(data, train_text)
    train_ids, val_ids = np.asarray(tok.encode(train_text)), np.asarray(tok.encode(val_text))
    model = TransformerConfig(vocab_size=tok.vocab_size, dim=cfg["dim"], n_layers=cfg["n_layers"],
                              n_heads=cfg["n_heads"], max_seq_len=cfg["seq_len"])
    runs = []
    for b in cfg["batches"]:
        for m in cfg["lr_mults"]:
            r = train_run(train_ids, val_ids, model, batch=b, lr=cfg["lr0"] * m * (b / cfg["batch0"]) ** 0.5,
                          tokens=cfg["tokens"], seq_len=cfg["seq_len"], warmup_steps=cfg["warmup_steps"],
                          eval_every_tokens=cfg["eval_every_tokens"], noise_every=cfg["noise_every"],
                          eval_batches=cfg["eval_batches"])
            runs.append({**{k: v for k, v in r.items() if k != "noise"}, "lr_mult": m,
                         **{f"noise_{k}": v for k, v in r["noise"].items()}})
    cache.write_text(json.dumps([{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items()}
                                 for r in runs]))
    return runs


def run(cfg: dict, smoke: bool) -> dict:
    runs = sweep(cfg)
    n_params = runs[0]["params"]
    law_cfg = Config(smooth_sequences=cfg["smooth_sequences"], n_boot=cfg["n_boot"],
                     n_targets=cfg["n_targets"], target_start=cfg["target_start"])
    crit = critical_batch(runs, law_cfg)
    t = {k: v.tolist() for k, v in crit.table.items()}
    if len(t.get("target", [])) < 2:
        raise ValueError(f"the trade-off fit needs >= 2 targets reached by >= 3 batch sizes; got {t}")
    # B_opt at fixed data D (= fixed compute C = 6 N D for one model size): best lr, parabola in ln B
    rows = [{"tokens": d, "batch": r["batch"], "lr": r["lr"], "loss": v} for r in runs
            for d, v in zip(r["eval_tokens"], r["eval_loss"])]
    opt = optimal_batch(rows, "tokens")
    bopt = LAWS["batch_compute"].fit({"compute": 6 * n_params * opt["tokens"], "batch": opt["batch"]},
                                     n_boot=cfg["n_boot"])
    # the critical batch against the compute that reaching each target takes at best: C_min = 6 N E_min T
    bcrit_c = LAWS["batch_compute"].fit({"compute": 6 * n_params * crit.table["E_min"] * cfg["seq_len"],
                                         "batch": crit.table["B_crit"]}, n_boot=cfg["n_boot"])
    # noise scale: the largest batch (its B_simple estimate compares the least noisy gradients), best lr
    best = {b: min((r for r in runs if r["batch"] == b), key=lambda r: r["eval_loss"][-1])
            for b in cfg["batches"]}  # best lr per batch size
    big = max(cfg["batches"])
    ref = best[big]
    late = ref["noise_step"] > ref["noise_step"].max() / 10  # skip the EMA's start-up
    rho_noise = spearmanr(ref["noise_loss"][late], ref["noise_b_simple"][late]).statistic
    metrics = {
        "params": n_params, "runs": len(runs), "train_seconds": float(sum(r["seconds"] for r in runs)),
        "targets": t["target"], "b_crit": t["B_crit"], "b_crit_ci_lo": t["B_crit_lo"],
        "b_crit_ci_hi": t["B_crit_hi"], "s_min": t["S_min"], "e_min": t["E_min"], "tradeoff_r2": t["r2"],
        "tradeoff_r2_median": float(np.median(t["r2"])),
        "bcrit_vs_target_spearman": float(spearmanr(t["target"], t["B_crit"]).statistic),
        "critical_alpha_B": crit.trend.params["alpha_B"], "critical_r2": crit.trend.r2,
        "bopt_tokens": opt["tokens"].tolist(), "bopt_batch": opt["batch"].tolist(),
        "bopt_interior": opt["interior"].tolist(), "bopt_compute_exponent": bopt.params["e"],
        "bopt_compute_exponent_ci": list(bopt.ci["e"]), "bopt_compute_r2": bopt.r2,
        "bcrit_compute_exponent": bcrit_c.params["e"], "bcrit_compute_exponent_ci": list(bcrit_c.ci["e"]),
        "bcrit_compute_r2": bcrit_c.r2, "paper_bopt_compute_exponent": REFERENCE["shuai2024"]["B_opt~C"],
        "noise_run_batch": big, "noise_b_simple_final": float(ref["noise_b_simple"][-1]),
        "noise_loss_spearman": float(rho_noise),
        "b_simple_over_b_crit_lowest_target": float(ref["noise_b_simple"][-1] / t["B_crit"][-1]),
        "best_lr_mult_per_batch": {int(b): r["lr_mult"] for b, r in best.items()},
        "final_val_loss": {f"{r['batch']}@{r['lr']:.3g}": float(r["eval_loss"][-1]) for r in runs},
    }
    if not smoke:
        RESULTS.mkdir(exist_ok=True)
        crit.trend.plot(RESULTS / "critical_batch.png", title="critical batch (sequences) vs target loss")
        crit.fits[crit.table["target"][-1]].plot(RESULTS / "tradeoff_lowest_target.png",
                                                 title=f"steps vs batch to reach loss {t['target'][-1]:.3f}")
        bcrit_c.plot(RESULTS / "bcrit_compute.png",
                     title="critical batch (sequences) vs compute C_min = 6 N E_min T")
    return metrics
