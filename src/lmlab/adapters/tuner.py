"""Apply adapters to any model by module replacement, PEFT's shape (``get_peft_model`` / ``PeftModel``).

    model = adapters.apply(base, adapters.malora(rank=12))     # lmlab Transformer or HFCausalLM; base frozen
    trainer = Trainer(model, objective, ...)                    # adapter params only; balance loss via pop_aux
    adapters.save(model, "out/adapter", base="smollm2-135m")    # adapter.safetensors + meta.json
    model = adapters.load("out/adapter", base)                  # or lmlab.load("out/adapter")

Every ``nn.Linear`` whose name matches ``target_modules`` becomes an ``AdapterLinear`` holding the frozen
original and a dict of named adapters (several may be loaded; one is active, or none = the base model, which
``lmlab serve --adapter`` uses to serve many adapters on one base). ``merge`` folds an unrouted adapter into the
base weight; ``unmerge`` takes it out again. ``AdaptedModel`` wraps the base model and forwards the LM protocol
(and any other attribute) to it, so decoders, the Trainer and ``lmlab serve`` take it like the base model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.core import checkpoint as ckpt
from lmlab.core.config import from_dict, to_dict

from .layers import Config, LowRankMixture

# True inside a BaseView call: every AdapterLinear runs its base alone. A context variable is per thread (and per
# asyncio task), so a view never changes what another caller of the same adapted model computes.
BASE_ONLY: ContextVar[bool] = ContextVar("lmlab_adapters_base_only", default=False)
KIND = "lmlab-adapter"
STEM = "adapter"  # adapter.safetensors


class AdapterLinear(nn.Module):
    """A frozen ``nn.Linear`` plus named low-rank adapters; ``active`` picks the one that runs (None: none)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.merged: str | None = None  # name of the adapter folded into base.weight
        self.train(base.training)

    @property
    def weight(self) -> torch.Tensor:  # code that reads layer.weight (tied heads, dtype probes) sees the base
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.active is not None and self.merged != self.active and not BASE_ONLY.get():
            y = y + self.adapters[self.active](x).to(y.dtype)
        return y

    @torch.no_grad()
    def merge(self, name: str) -> None:
        if self.merged == name:
            return
        if self.merged is not None:
            raise ValueError(f"adapter {self.merged!r} is merged; unmerge it before merging {name!r}")
        self.base.weight += self.adapters[name].delta_weight().to(self.base.weight.dtype)
        self.merged = name

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged is not None:
            self.base.weight -= self.adapters[self.merged].delta_weight().to(self.base.weight.dtype)
            self.merged = None


def matches_target(name: str, patterns: list[str]) -> bool:
    if len(patterns) == 1 and any(c in patterns[0] for c in "*^$[]()|\\+?"):
        return re.fullmatch(patterns[0], name) is not None  # a regex over the full module name
    return any(name == p or name.endswith("." + p) for p in patterns)


def linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers an adapter can sit on (an ``AdapterLinear`` counts once, not its insides)."""
    out, skip = [], ()
    for n, m in model.named_modules():
        if skip and n.startswith(skip):
            continue
        if isinstance(m, AdapterLinear):
            out.append(n)
            skip = (n + ".",)
        elif isinstance(m, nn.Linear):
            out.append(n)
    return out


def find_targets(model: nn.Module, cfg: Config) -> list[str]:
    """Names of the ``nn.Linear`` modules ``cfg.target_modules`` selects; an error lists the candidates."""
    linears = linear_names(model)
    found = [n for n in linears if matches_target(n, cfg.target_modules)]
    if not found:
        leaves = sorted({n.split(".")[-1] for n in linears})
        raise ValueError(f"target_modules {cfg.target_modules} match no linear module of {type(model).__name__}; "
                         f"its linear modules end in: {', '.join(leaves)} (e.g. {linears[:3]})")
    return found


class AdaptedModel(nn.Module):
    """A base model with adapters in its linear layers; the LM protocol and other attributes pass through."""

    checkpoint_kind = None  # not the base's kind: save the adapter (``save``) or the merged, unloaded base model

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.configs: dict[str, Config] = {}
        self.active: str | None = None
        self.train(base.training)  # new adapters follow: a model loaded for inference stays in eval mode

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base(*args, **kwargs)

    def adapter_layers(self) -> Iterator[tuple[str, AdapterLinear]]:
        """(name relative to the base model, layer) for every adapted linear."""
        for n, m in self.base.named_modules():
            if isinstance(m, AdapterLinear):
                yield n, m

    # ------------------------------------------------------------ adapters

    def add(self, name: str, cfg: Config) -> None:
        """Add adapter ``name`` to every target of ``cfg`` (replacing those Linears once) and make it active."""
        if name in self.configs:
            raise ValueError(f"adapter {name!r} is already loaded; loaded: {sorted(self.configs)}")
        for i, target in enumerate(find_targets(self.base, cfg)):
            parent_name, _, leaf = target.rpartition(".")
            parent = self.base.get_submodule(parent_name) if parent_name else self.base
            layer = getattr(parent, leaf)
            if isinstance(layer, nn.Linear):
                layer = AdapterLinear(layer)
                setattr(parent, leaf, layer)
            w = layer.base.weight
            mix = LowRankMixture(cfg, w.shape[1], w.shape[0], seed=cfg.seed * 100_003 + i)
            layer.adapters[name] = mix.to(device=w.device, dtype=w.dtype).train(self.training)
        self.configs[name] = cfg
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.set_active(name)

    def set_active(self, name: str | None) -> None:
        """Run adapter ``name`` (None: the base model alone); only its parameters are trainable."""
        if name is not None and name not in self.configs:
            raise KeyError(f"no adapter {name!r}; loaded: {sorted(self.configs)}")
        merged = self.merged
        if merged is not None and name != merged:
            what = f"adapter {name!r}" if name else "the base model alone"
            raise ValueError(f"adapter {merged!r} is merged into the base weights, so it runs whatever is active; "
                             f"unmerge() before running {what}")
        for _, layer in self.adapter_layers():
            layer.active = name if name in layer.adapters else None
            for n, mix in layer.adapters.items():
                mix.requires_grad_(n == name)
        self.active = name

    @contextmanager
    def using(self, name: str | None) -> Iterator[AdaptedModel]:
        """Temporarily run adapter ``name`` (None: the base model)."""
        before = self.active
        self.set_active(name)
        try:
            yield self
        finally:
            self.set_active(before)

    @property
    def merged(self) -> str | None:
        """The adapter folded into the base weights (``merge``), or None."""
        return next((layer.merged for _, layer in self.adapter_layers() if layer.merged is not None), None)

    def merge(self, name: str | None = None) -> None:
        """Fold adapter ``name`` (default: the active one) into the base weights and make it the active one.

        Refused: routed adapters (no single weight equals them) and a weight shared with another module (a tied
        output head would change the input embedding too)."""
        name = name or self.active
        cfg = self._config(name)
        if cfg.routed:
            raise ValueError(f"cannot merge adapter {name!r}: {cfg.method} with {cfg.n_experts} experts routes each "
                             "token to its own mix of experts, so no single weight equals it")
        layers = [(n, layer) for n, layer in self.adapter_layers() if name in layer.adapters]
        for n, p in self.base.named_parameters(remove_duplicate=False):
            shared = next((ln for ln, layer in layers if p is layer.base.weight), None)
            if shared is not None and not n.startswith(shared + "."):
                raise ValueError(f"cannot merge adapter {name!r}: the weight of {shared} is shared with {n} (tied "
                                 "embeddings), so merging would change both; keep the adapter unmerged")
        self.set_active(name)
        for _, layer in layers:
            layer.merge(name)

    def unmerge(self) -> None:
        """Take a merged adapter out of the base weights again."""
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def unload(self) -> nn.Module:
        """The base model with every ``AdapterLinear`` put back as its plain ``nn.Linear`` (holding a merged
        adapter, if one is merged; the others are dropped). This wrapper is left without adapters."""
        for target, layer in list(self.adapter_layers()):
            parent_name, _, leaf = target.rpartition(".")
            parent = self.base.get_submodule(parent_name) if parent_name else self.base
            setattr(parent, leaf, layer.base)
        self.configs.clear()
        self.active = None
        return self.base

    def merge_and_unload(self, name: str | None = None) -> nn.Module:
        """``merge(name)`` then ``unload()``: the plain base model computing base + adapter ``name``."""
        self.merge(name)
        return self.unload()

    def pop_aux(self) -> dict[str, torch.Tensor]:
        """The base model's aux losses plus the active adapter's load-balance loss (mean over its layers)."""
        pop = getattr(self.base, "pop_aux", None)
        out = dict(pop()) if pop is not None else {}
        losses = [a for _, layer in self.adapter_layers() for mix in layer.adapters.values()
                  if (a := mix.pop_aux()) is not None]
        if losses and self.active is not None:
            out["adapter_balance"] = self.configs[self.active].aux_coef * torch.stack(losses).mean()
        return out

    # ------------------------------------------------------------ state

    def _config(self, name: str | None) -> Config:
        if name is None:
            raise ValueError(f"no adapter is active; name one of {sorted(self.configs)}")
        if name not in self.configs:
            raise KeyError(f"no adapter {name!r}; loaded: {sorted(self.configs)}")
        return self.configs[name]

    def adapter_state_dict(self, name: str | None = None) -> dict[str, torch.Tensor]:
        """``{"<module>.<param>": tensor}`` of adapter ``name`` (default: active), names relative to the base."""
        name = name or self.active
        self._config(name)
        return {f"{n}.{k}": v.detach() for n, layer in self.adapter_layers() if name in layer.adapters
                for k, v in layer.adapters[name].state_dict().items()}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor], where: str = "adapter") -> None:
        """Load a state written by ``adapter_state_dict``; a missing module or another shape is an error."""
        own = self.adapter_state_dict(name)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ckpt.CheckpointError(f"{where} does not fit this model: missing {missing[:4]}, "
                                       f"unexpected {unexpected[:4]} (saved for another architecture?)")
        for k, v in state.items():
            if v.shape != own[k].shape:
                module = k.rpartition(".")[0]
                raise ckpt.CheckpointError(f"{where}: {k} has shape {tuple(v.shape)}, but module {module} of this "
                                           f"model needs {tuple(own[k].shape)}")
        with torch.no_grad():
            for n, layer in self.adapter_layers():
                if name in layer.adapters:
                    prefix = n + "."
                    layer.adapters[name].load_state_dict(
                        {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def base_view(self) -> BaseView:
        """The base model as an LM of its own, sharing the weights: the frozen reference of a DPO or implicit-PRM
        pair trained with adapters (``ImplicitPRM(adapted, adapted.base_view())``), with no second copy."""
        return BaseView(self)

    def counts(self, name: str | None = None) -> dict[str, int]:
        """Trainable parameters of adapter ``name`` and the total of base + that adapter."""
        trainable = sum(v.numel() for v in self.adapter_state_dict(name).values())
        base = sum(p.numel() for n, p in self.base.named_parameters() if ".adapters." not in n)
        return {"trainable": trainable, "total": base + trainable}


class BaseView(nn.Module):
    """An ``AdaptedModel`` run with every adapter off, call by call, without touching its state.

    A call sets the context variable ``BASE_ONLY`` for its own duration, so other threads or tasks running the
    adapted model meanwhile still run its active adapter. The view owns no parameters (the adapted model is not
    registered as a submodule), so it adds nothing to an optimizer or a state dict; attributes (vocab_size, device,
    new_cache, ...) pass through, and its mode and device are the adapted model's (``view.eval()`` / ``.to()``
    change nothing). A merged adapter is part of the base weights: calls then raise an error naming ``unmerge()``."""

    def __init__(self, adapted: AdaptedModel):
        super().__init__()
        self.__dict__["adapted"] = adapted  # plain attribute: not a submodule

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["adapted"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        adapted = self.__dict__["adapted"]
        if adapted.merged is not None:
            raise ValueError(f"adapter {adapted.merged!r} is merged into the base weights, so the base alone cannot "
                             "run; unmerge() before using the base view")
        token = BASE_ONLY.set(True)
        try:
            return adapted(*args, **kwargs)
        finally:
            BASE_ONLY.reset(token)


def apply(model: nn.Module, cfg: Config, name: str = "default") -> AdaptedModel:
    """Freeze ``model`` and add adapter ``name``; an ``AdaptedModel`` gets one more adapter (multi-adapter)."""
    adapted = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    adapted.add(name, cfg)
    return adapted


def save(model: AdaptedModel, path: str | Path, name: str | None = None, *, base: str | None = None,
         overwrite: bool = False, **meta: Any) -> Path:
    """Write adapter ``name`` as ``adapter.safetensors`` + meta.json (kind lmlab-adapter, its config, ``base``:
    the model spec ``lmlab.load`` reads to rebuild the base, if known)."""
    name = name or model.active
    cfg = model._config(name)
    targets = [n for n, layer in model.adapter_layers() if name in layer.adapters]
    info = {"kind": KIND, "config": to_dict(cfg), "base": base, "targets": targets, "counts": model.counts(name),
            **meta}
    return ckpt.save(path, {STEM: model.adapter_state_dict(name)}, info, overwrite=overwrite)


def load(path: str | Path, model: nn.Module, name: str = "default") -> AdaptedModel:
    """Add the adapter saved in ``path`` to ``model`` (a base model or an ``AdaptedModel``) as ``name``."""
    meta = ckpt.read_meta(path)
    if meta.get("kind") != KIND:
        raise ckpt.CheckpointError(f"{path} holds kind {meta.get('kind')!r}, not an adapter ({KIND})")
    adapted = apply(model, from_dict(Config, meta["config"]), name)
    adapted.load_adapter_state(name, ckpt.load_tensors(path, STEM), str(path))
    return adapted


def from_checkpoint(folder: Path, meta: dict[str, Any], base: nn.Module) -> AdaptedModel:
    """``lmlab.load`` reader of kind lmlab-adapter: the adapter in ``folder`` on the already loaded ``base``."""
    return load(folder, base)
