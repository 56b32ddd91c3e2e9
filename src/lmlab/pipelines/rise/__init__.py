"""RISE's self-editing data pipeline (Xu et al., "Subtle Errors Matter: Preference Learning via Error-injected
Self-editing", arXiv 2410.06638, ACL 2025; official code: github.com/kaishxu/RISE, a fork of Step-DPO).

The policy answers each question ``samples`` times (``Step k:`` format, final answer in ``\\boxed{}``); answers
are graded against the gold answer. For a question with a correct and a wrong attempt, one of each makes the
full-solution pair, and the same model edits every step of the correct one into a subtle error with a prompt
chosen from the error taxonomy by the step's features (value edits when it has numbers; substitution, deletion,
symbol and swap edits when it has "="; a misunderstanding otherwise). ``objectives.rise.pairs_from_records``
filters the edits (giveaway words, similarity, no-ops) and keeps ``edited_per_problem`` step pairs per question.

Layout: ``pipeline.py`` (Config, the sample and edit stages, answer grading, step splitting, ``RisePairs``).
Prompts are files under ``pipelines/prompts/rise/``, in our wording of the official prompts.
Deviations: a chat API cannot pre-fill the assistant turn, so the solve prompt asks for the ``Step k:`` format
and the edit prompts ask for the edited step inside a ``` block (the official code pre-fills both); answers are
matched after normalisation (spaces, ``$``, thousands commas, plain decimals), not with a symbolic grader; the
``Step k:`` header stays out of the edit region; the official code strips ``\\boxed{}`` from the rejected step,
here only wrappers the editor added are stripped (so a final step's chosen and rejected texts do not differ by the
wrapper alone); at most ``max_edit_steps`` steps of a solution are edited.
"""

from .pipeline import (
    ERRORS,
    Config,
    RisePairs,
    boxed,
    choose_full_pair,
    edit_region,
    edit_stage,
    error_kinds,
    is_correct,
    normalise,
    parse_edit,
    rejected_step,
    sample_stage,
    split_steps,
    stable_seed,
    strip_boxed,
)

__all__ = ["ERRORS", "Config", "RisePairs", "boxed", "choose_full_pair", "edit_region", "edit_stage", "error_kinds",
           "is_correct", "normalise", "parse_edit", "rejected_step", "sample_stage", "split_steps", "stable_seed",
           "strip_boxed"]
