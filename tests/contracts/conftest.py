"""Fixtures of the capability contracts: registry entries by cap, tiny models, a decoder factory, fast configs.

Everything here is chosen from a registry line (its caps and its config class), never from a method name, so a
new method inherits the contracts by its registry line alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import lmlab
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding import REGISTRY as DECODING
from lmlab.decoding import build as build_decoder
from lmlab.decoding.base import Sampling


def names_with(family: str, cap: str) -> list[str]:
    """Registry names of ``family`` whose entry carries ``cap``."""
    return [n for n, e in lmlab.registries()[family].items() if cap in e.caps]


def names_of(family: str) -> list[str]:
    return list(lmlab.registries()[family])


# ---------------------------------------------------------------- tiny models


def tiny_lm(seed: int, vocab: int = 48, dim: int = 32, layers: int = 2, head_std: float = 0.5) -> Transformer:
    """A random float64 causal Transformer whose greedy continuations vary (untied, larger output head).

    float64, so that scoring a draft tree in one pass never flips an argmax that sequential decoding keeps.
    """
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2,
                                          max_seq_len=64, tie_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, head_std)
        model.tok_emb.weight.normal_(0.0, 1.0)
    return model.double().eval()


# ---------------------------------------------------------------- decoders


def make_decoder(name: str, *, draft: Any = None, sampling: Sampling | None = None, **overrides: Any) -> Any:
    """A decoder from its registry line (``lmlab.decoding.build``), with the sampling settings put into its config.

    ``sampling`` goes into the config's ``sampling`` field, or into its temperature / top_k / top_p fields
    (plain sampling); ``overrides`` are further config fields. A "rerank" decoder gets ``token_sum_scorer`` and
    n = 3 candidates unless ``overrides`` sets n.
    """
    cfg_cls = DECODING.config(name)
    if "rerank" in DECODING.entry(name).caps:
        overrides.setdefault("n", 3)
    if cfg_cls is None:
        if sampling is not None or overrides:
            raise ValueError(f"decoder {name!r} has no config; cannot set {sampling=} {overrides=}")
        return build_decoder(name, draft=draft if "draft" in DECODING.entry(name).caps else None)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    kw = dict(overrides)
    if sampling is not None:
        if "sampling" in fields:
            kw["sampling"] = sampling
        elif {"temperature", "top_k", "top_p"} <= fields and sampling.sample:
            kw.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
        else:
            raise ValueError(f"decoder {name!r}: config {cfg_cls.__name__} has no field for {sampling}")
    unknown = set(kw) - fields
    if unknown:
        raise ValueError(f"decoder {name!r}: config {cfg_cls.__name__} has no fields {sorted(unknown)}")
    caps = DECODING.entry(name).caps
    return build_decoder(name, cfg_cls(**kw), draft=draft if "draft" in caps else None,
                         **({"scorer": token_sum_scorer} if "rerank" in caps else {}))


def token_sum_scorer(prompt: list[int], candidates: list[list[int]]) -> list[float]:
    """A deterministic scorer for "rerank" decoders: the sum of a candidate's token ids."""
    return [float(sum(c)) for c in candidates]


# ---------------------------------------------------------------- compressors

# Config fields that only size the calibration work; any compressor config with such a field gets the small
# value, so a new compressor runs in the contracts at test speed without a line of its own here.
FAST_FIELDS: dict[str, Any] = {
    "nsamples": 4, "seq_len": 16, "epochs": 1, "batch_size": 4,  # block-wise calibration
    "n_candidates": 256, "quantile_samples": 4096, "tol": 1e-2,  # threshold searches and bisections
}


def fast_config(family: str, name: str) -> Any:
    """The method's config with ``FAST_FIELDS`` applied, or None when it has no config."""
    cfg_cls = lmlab.registries()[family].config(name)
    if cfg_cls is None:
        return None
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    return cfg_cls(**{k: v for k, v in FAST_FIELDS.items() if k in fields})


def make_compressor(name: str) -> Any:
    cls, cfg = lmlab.registries()["compression"].get(name), fast_config("compression", name)
    return cls(cfg) if cfg is not None else cls()


def compressible_lm(seed: int = 0) -> Transformer:
    """A random float32 Transformer with a few large norm channels (LLM-like activation outliers)."""
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=64, tie_embeddings=False)).eval()
    with torch.no_grad():
        model.tok_emb.weight.normal_(0.0, 1.0)
        for block in model.layers:
            block.attn_norm.weight.uniform_(0.5, 1.5)[:3] *= 20.0
            block.mlp_norm.weight.uniform_(0.5, 1.5)[:3] *= 20.0
    return model


def calib_ids(vocab: int = 61) -> torch.Tensor:
    """Calibration token ids (8, 24), enough for every config after ``FAST_FIELDS``."""
    return torch.randint(0, vocab, (8, 24), generator=torch.Generator().manual_seed(1))


def fit_compressor(name: str, model: torch.nn.Module) -> tuple[torch.nn.Module, Any]:
    """``fit(model, calib)``: calibration ids only for cap "calibration", else None (it must not need them)."""
    caps = lmlab.registries()["compression"].entry(name).caps
    return make_compressor(name).fit(model, calib_ids() if "calibration" in caps else None)


# ---------------------------------------------------------------- objectives: a model and batches per cap set


def causal_setup() -> tuple[torch.nn.Module, Any]:
    """A causal Transformer and ``ids`` / ``targets`` windows of a periodic token stream."""
    from lmlab.core.data import TokenWindows

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=23, dim=32, n_layers=2, n_heads=4, max_seq_len=32))
    return model, TokenWindows(torch.arange(400) % 23, batch_size=4, seq_len=16)


def bidirectional_setup() -> tuple[torch.nn.Module, Any]:
    """A bidirectional Transformer and ``ids`` / ``src_mask`` examples (prompt of 5 given tokens, target)."""
    from lmlab.core.data import ExampleBatches

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=16, dim=32, n_layers=2, n_heads=4, max_seq_len=32,
                                          mask="bidirectional"))
    ids = torch.randint(0, 15, (32, 12), generator=torch.Generator().manual_seed(2))  # id 15 = <mask>
    src = torch.zeros(32, 12, dtype=torch.bool)
    src[:, :5] = True
    return model, ExampleBatches({"ids": ids, "src_mask": src}, batch_size=4)


def image_diffusion_setup() -> tuple[torch.nn.Module, Any]:
    """A tiny ACDiT over 8x8 one-channel images (4 blocks of 4 patches) and ``images`` / ``labels`` batches."""
    from lmlab.core.data import ExampleBatches
    from lmlab.models.acdit import ACDiT
    from lmlab.models.acdit import Config as ACDiTConfig

    torch.manual_seed(0)
    model = ACDiT(ACDiTConfig(dim=32, n_layers=1, n_heads=2, block_size=4, freq_dim=32))
    g = torch.Generator().manual_seed(2)
    images = torch.rand(32, 1, 8, 8, generator=g) * 2 - 1  # (N, C, H, W) in [-1, 1]
    labels = torch.randint(0, 10, (32,), generator=g)
    return model, ExampleBatches({"images": images, "labels": labels}, batch_size=4)


def response_rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (n, 12) of vocabulary 23 and response masks (positions 5.. of each row)."""
    ids = torch.randint(0, 23, (n, 12), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(n, 12, dtype=torch.bool)
    mask[:, 5:] = True
    return ids, mask


def preference_setup() -> tuple[torch.nn.Module, Any]:
    """A causal Transformer and chosen/rejected pairs with constant cached reference log-probs."""
    from lmlab.core.data import ExampleBatches

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=23, dim=32, n_layers=2, n_heads=4, max_seq_len=32))
    (ci, cm), (ri, rm) = response_rows(32, 2), response_rows(32, 3)
    ref = torch.full((32,), -30.0)
    return model, ExampleBatches({"chosen_ids": ci, "chosen_mask": cm, "rejected_ids": ri, "rejected_mask": rm,
                                  "ref_chosen": ref, "ref_rejected": ref}, batch_size=4)


def outcome_reward_setup() -> tuple[torch.nn.Module, Any]:
    """A causal Transformer and responses with 0/1 labels and constant cached reference log-probs."""
    from lmlab.core.data import ExampleBatches

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=23, dim=32, n_layers=2, n_heads=4, max_seq_len=32))
    ids, mask = response_rows(32, 2)
    label = (torch.arange(32) % 2).float()
    return model, ExampleBatches({"ids": ids, "response_mask": mask, "label": label,
                                  "ref_logp": torch.full((32,), -30.0)}, batch_size=4)


# objective caps -> (model, batch source) builder; an objective whose caps are not a key here has no fixture
OBJECTIVE_SETUPS = {
    frozenset(): causal_setup,
    frozenset({"bidirectional"}): bidirectional_setup,
    frozenset({"image", "diffusion"}): image_diffusion_setup,
    frozenset({"preference"}): preference_setup,
    frozenset({"outcome-reward"}): outcome_reward_setup,
}


def objective_setup(name: str, caps: tuple[str, ...]) -> tuple[torch.nn.Module, Any]:
    """(model, batch source) for an objective with these caps; LookupError naming the fixture to add."""
    builder = OBJECTIVE_SETUPS.get(frozenset(caps))
    if builder is None:
        known = sorted(sorted(k) for k in OBJECTIVE_SETUPS)
        raise LookupError(f"objective {name!r} has caps {sorted(caps)}, for which no model + batch fixture "
                          f"exists (known cap sets: {known}); add one to OBJECTIVE_SETUPS in "
                          "tests/contracts/conftest.py")
    return builder()


def make_objective(name: str) -> Any:
    cls, cfg = lmlab.registries()["objectives"].get(name), fast_config("objectives", name)
    return cls(cfg) if cfg is not None else cls()
