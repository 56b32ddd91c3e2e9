"""GSD (A) vs Hugging Face assisted generation ``generate(assistant_model=draft)`` (B): greedy tokens/s.

Same target and same draft in both: the tiny corpus_en pair of ``repro/gsd`` (~5.3M target, ~0.42M draft,
trained once and cached by ``repro/gsd/pair.py``), converted to ``LlamaForCausalLM`` with
``core.hf.llama_from_transformer``. A runs ``GraphSpeculative`` on those very HF modules through
``core.hf.HFCausalLM`` (so both sides pay the same model code). Both use their default settings: GSD's
``Config()`` and HF's assistant defaults (``num_assistant_tokens``, confidence threshold). Prompts are
held-out corpus_en windows; the metric is new tokens per second including the prefill. Outputs are checked
token for token against HF plain greedy decoding, and the share of identical prompts is recorded for both
sides. An extra case runs GSD on the lmlab ``Transformer`` with the same weights. ``--quick`` uses untrained
random models instead of the pair.
"""

from __future__ import annotations

from pathlib import Path

import tomllib
import torch

from lmlab.core.hf import HFCausalLM, llama_from_transformer
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.gsd import Config, GraphSpeculative
from lmlab.harness import ABCase, ABRuns, ab_cases, repro_module

ROOT = Path(__file__).resolve().parents[1]


def models(quick: bool) -> tuple[Transformer, Transformer, list[list[int]]]:
    device = resolve_device()
    if quick:
        torch.manual_seed(0)
        shape = dict(vocab_size=512, max_seq_len=256, n_heads=4)
        target = Transformer(TransformerConfig(dim=64, n_layers=2, **shape)).eval()
        draft = Transformer(TransformerConfig(dim=32, n_layers=1, **shape)).eval()
        prompts = torch.randint(0, 512, (2, 16)).tolist()
        return target.to(device), draft.to(device), prompts
    cfg = tomllib.loads((ROOT / "repro" / "gsd" / "config.toml").read_text())
    cfg.pop("smoke")
    pair_mod = repro_module("gsd", "pair", ROOT)
    pair = pair_mod.load_or_train_pair(cfg)
    prompts = pair_mod.held_out_prompts(pair["val_ids"], 8, cfg["prompt_len"])
    return pair["target"].to(device), pair["draft"].to(device), prompts


@torch.no_grad()
def hf_generate(target_hf, prompt: list[int], new: int, draft_hf=None) -> list[int]:
    ids = torch.tensor([prompt], device=target_hf.device)
    out = target_hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                             min_new_tokens=new, assistant_model=draft_hf, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def alternating(generate, prompts: list[list[int]], refs: list[list[int]]):
    """An A/B arm: round r decodes prompt r mod len(prompts) with ``generate(prompt) -> tokens``, so the arms
    alternate prompt by prompt; its value is (seconds, whether the tokens equal the plain greedy ones)."""
    def measure(r: int) -> tuple[float, bool]:
        i = r % len(prompts)
        with Timer() as t:
            tokens = generate(prompts[i])
        return t.seconds, tokens == refs[i]

    return measure


def run(quick: bool = False) -> dict:
    target, draft, prompts = models(quick)
    new, rounds = (16, 1) if quick else (64, 3)
    target_hf, draft_hf = llama_from_transformer(target).eval(), llama_from_transformer(draft).eval()
    for m in (target_hf, draft_hf):
        m.generation_config.eos_token_id = None  # fixed-length outputs on both sides
    gsd_cfg = Config()  # the library defaults (official k, beta, gamma; m = 1; depth 8, budget 32)
    gsd_hf = GraphSpeculative(gsd_cfg, HFCausalLM(draft_hf))
    gsd_lmlab = GraphSpeculative(gsd_cfg, draft)
    wrapped = HFCausalLM(target_hf)
    refs = [hf_generate(target_hf, p, new) for p in prompts]
    n = rounds * len(prompts)  # A/B rounds: every prompt, `rounds` times
    arms = {"gsd": alternating(lambda p: gsd_hf.generate(wrapped, p, new).tokens, prompts, refs),
            "hf": alternating(lambda p: hf_generate(target_hf, p, new, draft_hf), prompts, refs),
            "gsd_lmlab": alternating(lambda p: gsd_lmlab.generate(target, p, new).tokens, prompts, refs)}

    def fields(runs: ABRuns) -> dict:
        same = {k: sum(v) / n for k, v in runs.outputs.items()}
        return {"gsd_on_lmlab_transformer_tokens_per_s": runs.value("gsd_lmlab"),
                "identical_frac_gsd": same["gsd"], "identical_frac_hf_assisted": same["hf"],
                "identical_frac_gsd_lmlab": same["gsd_lmlab"], "prompts": len(prompts), "new_tokens": new,
                "target_params": target.num_params(), "draft_params": draft.num_params()}

    def tokens_per_s(seconds: list[float]) -> float:
        return new * len(seconds) / sum(seconds)  # tokens / seconds over all runs

    cases = ab_cases(lambda threads: [ABCase("", arms, n, warmup=False, summary=tokens_per_s, fields=fields,
                                             record_runs=False)])
    return bench_record("gsd_vs_hf_assisted", "GSD (lmlab, on the HF modules)",
                        "HF generate(assistant_model=draft)",
                        "new tokens/s (greedy, batch 1, fp32, incl. prefill)", cases, runs=n)


if __name__ == "__main__":
    for c in run()["cases"]:
        print(c["label"], round(c["a_value"], 1), round(c["b_value"], 1), round(c["ratio"], 3))
