"""Compute cost of obtaining a PRM: implicit PRM (outcome labels) vs Math-Shepherd (Monte-Carlo step labels).

Paper: Yuan et al., "Free Process Rewards without Process Labels" (arXiv 2412.01981, ICML 2025; official code
github.com/PRIME-RL/ImplicitPRM), Fig. 2: the data-collection + training FLOPs of an implicit PRM (CE loss) are
38.6-38.8x lower than those of a Math-Shepherd PRM (Wang et al., arXiv 2312.08935) at 2 / 4 / 8 responses per
instruction (the official README shows it as a figure, ``figs/flops.png``, with no accounting in text). The
paper's own accounting (which tokens it counts, how many steps per response, whether prompts or prefixes are
re-processed) is not stated there; the functions below are an analytic model with every assumption stated, so
that the ratio can be computed for a given setting and the assumptions that would produce the paper's number can
be named. Math-Shepherd's default of M = 8 completions per step is as a third-party explainer of that paper states
it; it is an input here, not a constant.

Both pipelines start from the same ``responses`` rollouts of each of ``instructions`` prompts.

- Implicit PRM: (1) generate the rollouts; (2) label each by its final answer (a string comparison, 0 FLOPs);
  (3) train the reward model (a copy of the policy) for ``epochs`` passes over the rollouts, plus one forward of
  the frozen reference over every rollout (its log-probs do not change, so they are computed once).
- Math-Shepherd: (1) generate the rollouts; (2) label step k = 1 .. S-1 of each rollout by ``mc_per_step`` = M
  Monte-Carlo completions from the end of step k to the end of a response (the label of the last step is the
  rollout's own outcome, so no completion starts there); (3) train the PRM for ``epochs`` passes over the rollouts
  (no reference model).

Assumptions (the standard dense-Transformer approximation; attention-score FLOPs, embeddings and the verifier's
answer comparison are ignored):
- A forward costs 2P FLOPs per token it processes, P = ``params``; a training pass (forward + backward) 6P per
  token. Generation with a KV cache processes each prompt token once (prefill) and each generated token once.
- Every sequence is the prompt plus the whole response (``prompt_tokens + response_tokens`` tokens): generation,
  training and the reference forward all process the prompt (a training pass back-propagates through it even
  though its tokens carry no loss), and no prompt prefix is shared between the rollouts of an instruction.
- Steps are of equal length: a response's S steps split its tokens evenly, so a completion from the end of step k
  generates the remaining ``response_tokens * (S - k) / S`` tokens (the completer's responses are as long as the
  rollouts). With ``prefix_cached=True`` (the default) the completions reuse the rollout's KV cache of prompt and
  steps 1..k and cost only those remaining tokens; with ``prefix_cached=False`` each completion also prefills its
  prefix, i.e. processes a whole sequence.
- The reward models have the policy's size; both train for the same ``epochs``.

Then both costs are linear in ``instructions`` and ``responses`` and their ratio depends on neither; with
L = prompt + response tokens, R = response tokens and E = epochs:
``implicit = 2PL + (6E + 2)PL`` per rollout, ``math_shepherd = 2PL + 6EPL + labelling``, labelling =
``2P * M * R * (S - 1) / 2`` (prefix cached) or ``2P * M * (S - 1) * L`` (not cached).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

FORWARD = 2.0  # FLOPs per parameter per token, forward only
TRAIN = 6.0  # FLOPs per parameter per token, forward + backward


@dataclass(frozen=True)
class LabellingSetup:
    """The inputs of both pipelines; token counts are means per instruction / per response."""

    params: float  # P, parameters of the policy and of either reward model
    prompt_tokens: float  # tokens of one instruction (prompt, template included)
    response_tokens: float  # tokens of one response
    steps: int  # S, steps per response
    mc_per_step: int  # M, Monte-Carlo completions per labelled step (Math-Shepherd)
    responses: int  # N, rollouts per instruction
    instructions: int
    epochs: int = 1  # reward-model training passes over the rollouts (both pipelines)
    prefix_cached: bool = True  # completions reuse the rollout's KV cache of their prefix

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "prefix_cached":
                if not isinstance(v, bool):
                    raise TypeError(f"LabellingSetup.prefix_cached must be a bool, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"LabellingSetup.{f.name} must be a number, got {v!r}")
            if f.type == "int" and not isinstance(v, int):
                raise TypeError(f"LabellingSetup.{f.name} must be an integer count, got {v!r}")
            if not v > 0:
                raise ValueError(f"LabellingSetup.{f.name} must be > 0, got {v!r}")

    @property
    def seq_tokens(self) -> float:
        """Tokens of one rollout: prompt plus response."""
        return self.prompt_tokens + self.response_tokens

    @property
    def rollouts(self) -> int:
        return self.instructions * self.responses


def rollout_flops(s: LabellingSetup) -> float:
    """Generating the rollouts both pipelines start from."""
    return FORWARD * s.params * s.seq_tokens * s.rollouts


def mc_labelling_flops(s: LabellingSetup) -> float:
    """Math-Shepherd's step labels: M completions from the end of each of steps 1 .. S-1 of every rollout."""
    if s.prefix_cached:  # remaining tokens R (S - k) / S summed over k = 1 .. S-1
        per_rollout = s.mc_per_step * s.response_tokens * (s.steps - 1) / 2
    else:  # each completion processes a whole sequence
        per_rollout = s.mc_per_step * (s.steps - 1) * s.seq_tokens
    return FORWARD * s.params * per_rollout * s.rollouts


def training_flops(s: LabellingSetup, reference: bool) -> float:
    """``epochs`` training passes over the rollouts, plus one reference forward over them if ``reference``."""
    per_token = TRAIN * s.epochs + (FORWARD if reference else 0.0)
    return per_token * s.params * s.seq_tokens * s.rollouts


def implicit_prm_flops(s: LabellingSetup) -> float:
    """Data collection (rollouts; outcome labels are free) + CE training with a reference forward."""
    return rollout_flops(s) + training_flops(s, reference=True)


def math_shepherd_flops(s: LabellingSetup) -> float:
    """Data collection (rollouts + Monte-Carlo step labels) + PRM training."""
    return rollout_flops(s) + mc_labelling_flops(s) + training_flops(s, reference=False)


def flops_ratio(s: LabellingSetup) -> float:
    """How many times more FLOPs Math-Shepherd needs than the implicit PRM (> 1 = the implicit PRM is cheaper)."""
    return math_shepherd_flops(s) / implicit_prm_flops(s)


def steps_for_ratio(target: float, s: LabellingSetup) -> float:
    """The (real-valued) steps per response at which ``flops_ratio`` reaches ``target``, other inputs of ``s``
    fixed: the ratio is affine in S, so two evaluations give it exactly."""
    if not target > 0:
        raise ValueError(f"target ratio must be > 0, got {target!r}")
    one = flops_ratio(_with_steps(s, 1))
    if target < one:
        raise ValueError(f"target ratio {target!r} is below the ratio at one step per response ({one:.4g}); no "
                         "number of steps gives it")
    slope = flops_ratio(_with_steps(s, 2)) - one
    return 1 + (target - one) / slope


def _with_steps(s: LabellingSetup, steps: int) -> LabellingSetup:
    return LabellingSetup(**{f.name: getattr(s, f.name) for f in fields(s)} | {"steps": steps})
