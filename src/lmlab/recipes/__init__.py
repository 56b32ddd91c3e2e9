"""Recipes: training and evaluation jobs shared by the CLI, ``repro/`` and ``bench/`` (they call families).

One registry line per job. ``lmlab train <name>`` builds the entry's ``config`` (a job dataclass: every field a
flag, a TOML table or a ``--set`` key) and calls its ``target(job) -> metrics``. Importing this module imports
no torch.
"""

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("recipes", {
    "lm": Entry("lmlab.recipes.text:train_lm", paper="Radford et al. 2018 (GPT)", status="stable",
                summary="a core Transformer on text (corpus_en or a file): val loss and bits per byte vs unigram",
                config="lmlab.recipes.text:TextJob", repro="causal_lm"),
    "task": Entry("lmlab.recipes.tasks:train_task", paper="arXiv:2410.14157", status="stable",
                  summary="a core Transformer on a reasoning task (planning, countdown, sudoku, sat): exact accuracy",
                  config="lmlab.recipes.tasks:TaskJob", repro="mgdm"),
    "acdit": Entry("lmlab.recipes.acdit:train_acdit", paper="arXiv:2412.07720", status="experimental",
                   summary="ACDiT on 8x8 digits (or PNGs): block diffusion training, sampling, FD and consistency",
                   config="lmlab.recipes.acdit:TrainJob", repro="acdit"),
    "adapter": Entry("lmlab.recipes.adapter:train_adapter", paper="arXiv:2106.09685 (LoRA), arXiv:2410.22782",
                     summary="an adapter (lora | molora | hydralora | malora) on any frozen model, on text: val loss",
                     config="lmlab.recipes.adapter:AdapterJob"),
})
