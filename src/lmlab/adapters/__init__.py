"""Adapters family: parameter-efficient fine-tuning applied by module replacement (apply / merge / state_dict).

One registry line per method; each target is the method's config preset (``REGISTRY.get("malora")(rank=12)``),
all four settings of one module family (``adapters.layers``), applied by ``adapters.tuner.apply``. Targets are lazy
"module:attr" strings, so importing this module imports no torch.
"""

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("adapters", {
    "lora": Entry("lmlab.adapters.layers:lora", paper="arXiv:2106.09685", status="stable",
                  summary="low-rank update B A on frozen linears (B = 0 at init); mergeable",
                  config="lmlab.adapters.layers:Config", caps=("hf",), repro="malora"),
    "molora": Entry("lmlab.adapters.layers:molora", paper="arXiv:2309.05444",
                    summary="mixture of N LoRA experts, token-level top-k router, Switch balance loss",
                    config="lmlab.adapters.layers:Config", caps=("hf",), repro="malora"),
    "hydralora": Entry("lmlab.adapters.layers:hydralora", paper="arXiv:2404.19245",
                       summary="one shared A, N routed B heads (asymmetric LoRA)",
                       config="lmlab.adapters.layers:Config", caps=("hf",), repro="malora"),
    "malora": Entry("lmlab.adapters.layers:malora", paper="arXiv:2410.22782",
                    summary="shared down-projection subspace S, per-expert P_i and higher-rank B_i (fewer params)",
                    config="lmlab.adapters.layers:Config", caps=("hf",)),
})

_LAZY = {"apply": "tuner", "save": "tuner", "load": "tuner", "AdaptedModel": "tuner", "AdapterLinear": "tuner",
         "Config": "layers", "lora": "layers", "molora": "layers", "hydralora": "layers", "malora": "layers",
         "param_count": "layers", "save_peft": "peft_io", "load_peft": "peft_io"}


def __getattr__(name: str):
    """``lmlab.adapters.apply`` etc., imported on first use (importing the family imports no torch)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"lmlab.adapters.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lmlab.adapters' has no attribute {name!r}")
