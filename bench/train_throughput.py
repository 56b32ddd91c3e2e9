"""Training throughput: lmlab ``Transformer`` (A) vs Hugging Face ``LlamaForCausalLM`` (B), identical config.

Both models start from the same weights (``llama_from_transformer``) and run the same step: forward, token
cross-entropy, backward, AdamW. The metric is trained tokens per second (batch x seq per step). A and B
alternate within each round; the value of a case is the median over rounds. The first step's losses of A and
B are recorded to show that the two compute the same function.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from lmlab.core.hf import llama_from_transformer
from lmlab.core.results import bench_record
from lmlab.core.runtime import Timer, resolve_device
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.harness import ABCase, ab_cases

CFG = dict(vocab_size=4096, dim=256, n_layers=4, n_heads=4, max_seq_len=256)
BATCH, SEQ = 8, 256


def make_models(seed: int = 0) -> tuple[Transformer, torch.nn.Module]:
    torch.manual_seed(seed)
    a = Transformer(TransformerConfig(**CFG)).train().to(resolve_device())
    b = llama_from_transformer(a).train()
    return a, b


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids) if isinstance(model, Transformer) else model(input_ids=ids).logits


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    logits = logits_of(model, ids[:, :-1])  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def tokens_per_s(model, opt, batches: list[torch.Tensor]) -> float:
    with Timer() as t:
        for ids in batches:
            train_step(model, opt, ids)
    return sum(ids[:, 1:].numel() for ids in batches) / t.seconds


def case(batches: list[torch.Tensor], rounds: int) -> ABCase:
    """Fresh models and optimizers; their first step (recorded) is the warm-up."""
    a, b = make_models()
    opt_a = torch.optim.AdamW(a.parameters(), lr=3e-4)
    opt_b = torch.optim.AdamW(b.parameters(), lr=3e-4)
    loss_a = train_step(a, opt_a, batches[0])
    loss_b = train_step(b, opt_b, batches[0])
    fields = {"loadavg_1m_at_start": os.getloadavg()[0], "first_loss_a": loss_a, "first_loss_b": loss_b,
              "first_loss_abs_diff": abs(loss_a - loss_b), "params": a.num_params(), "batch": BATCH, "seq": SEQ,
              "steps_per_round": len(batches)}
    arms = {"a": lambda r: tokens_per_s(a, opt_a, batches), "b": lambda r: tokens_per_s(b, opt_b, batches)}
    return ABCase("", arms, rounds, warmup=False, fields=fields)


def run(quick: bool = False) -> dict:
    rounds, steps = (2, 1) if quick else (5, 4)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, CFG["vocab_size"], (BATCH, SEQ + 1), generator=gen).to(resolve_device())
               for _ in range(steps)]
    cases = ab_cases(lambda threads: [case(batches, rounds if threads == 1 else min(rounds, 3))])
    return bench_record("train_throughput", "lmlab Transformer", "HF LlamaForCausalLM (same config, sdpa)",
                        "train tokens/s (fwd+bwd+AdamW, fp32)", cases, runs=rounds)


if __name__ == "__main__":
    rec = run()
    for c in rec["cases"]:
        print(c["label"], round(c["a_value"]), round(c["b_value"]), round(c["ratio"], 3))
