"""Draft models and their KV cache bookkeeping, shared by every speculative proposer.

A draft is any model with the lmlab interface that shares the target's vocabulary:

* a separate small model (an lmlab ``Transformer`` or an ``HFCausalLM``);
* the target itself with layers skipped (self-speculative, Draft & Verify arXiv:2309.08168, GSD's
  ``self_graph`` mode): ``layer_skip(target, skip=[...])``. For an lmlab ``Transformer`` this calls
  ``forward(..., layers=kept)``. For a Hugging Face model (``HFCausalLM``), whose forward has no ``layers``
  argument, it builds a *view*: a shallow copy of the model whose decoder layer list holds only the kept
  layers (re-numbered for the cache); the weights are shared, not copied. The view needs the usual
  ``model.model.layers`` layout with ``self_attn.layer_idx`` (Llama, Mistral, Qwen2, SmolLM, ...).
  The draft keeps its own cache: the kept layers' keys/values are the draft's own, never the target's.
* a small model over a *sub-vocabulary* of the target's tokenizer (``SubVocabDraft``): it reads and proposes
  only the N most frequent token ids (others read as one unknown id, never proposed), so its embedding and
  output head stay small even when the target's vocabulary is large (SmolLM2: 49,152). The idea of a
  frequency-ranked draft vocabulary is FR-Spec's (Zhao et al. 2025, arXiv:2502.14856). Verification is
  unchanged, so decoding stays exact.

``DraftRunner`` keeps the draft cache in step with the committed sequence: it holds the first ``n``
committed tokens; ``feed_pending`` adds the committed tokens the draft has not seen (always ending with the
round's root) and returns the draft logits at the root; ``feed_tree`` adds speculative nodes under a tree
mask; ``commit`` keeps the prefix plus the accepted nodes whose cached keys/values were computed under
exactly the accepted prefix (a merged node's were not, so it is fed again next round).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .loop import commit, context_length, new_cache, vocab_size


class SkipLayers(nn.Module):
    """An lmlab ``Transformer`` run with only the ``kept`` blocks (self-speculative draft, shared weights)."""

    def __init__(self, model: nn.Module, kept: list[int]):
        super().__init__()
        self.model, self.kept = model, list(kept)
        self.vocab_size, self.max_seq_len, self.n_layers = model.vocab_size, model.max_seq_len, len(self.kept)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def new_cache(self, batch: int = 1, max_len: int | None = None, rollback: int = 0) -> Any:
        return new_cache(self.model, max_len, rollback, batch)

    def forward(self, ids: torch.Tensor, *, cache: Any = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(ids, cache=cache, positions=positions, mask=mask, layers=self.kept)


class SubVocabDraft(nn.Module):
    """A draft model whose vocabulary is ``token_ids`` (target ids) plus one unknown id (its last id).

    ``forward`` takes and returns the target's ids: inputs are mapped into the sub-vocabulary, logits are
    scattered back into a (B, T, vocab_size) tensor that is -inf outside ``token_ids``.
    """

    def __init__(self, model: nn.Module, token_ids: list[int], full_vocab: int):
        super().__init__()
        n = len(token_ids)
        if vocab_size(model) != n + 1:
            raise ValueError(f"the sub-vocabulary draft needs {n} + 1 (unknown) output ids, its model has "
                             f"{vocab_size(model)}")
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if n == 0 or len(set(token_ids)) != n or int(ids.min()) < 0 or int(ids.max()) >= full_vocab:
            raise ValueError(f"token_ids must be distinct ids in [0, {full_vocab}), got {n} ids")
        self.model, self.vocab_size, self.max_seq_len = model, full_vocab, context_length(model)
        self.n_layers = model.n_layers
        to_sub = torch.full((full_vocab,), n, dtype=torch.long)  # unknown by default
        to_sub[ids] = torch.arange(n)
        self.register_buffer("ids", ids, persistent=False)  # (N,)
        self.register_buffer("to_sub", to_sub, persistent=False)  # (V,)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def new_cache(self, batch: int = 1, max_len: int | None = None, rollback: int = 0) -> Any:
        return new_cache(self.model, max_len, rollback, batch)

    def forward(self, ids: torch.Tensor, *, cache: Any = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        sub = self.model(self.to_sub[ids], cache=cache, positions=positions, mask=mask)  # (B, T, N + 1)
        out = sub.new_full((*ids.shape, self.vocab_size), float("-inf"))  # (B, T, V)
        out[..., self.ids] = sub[..., :-1]
        return out


def _hf_view(hf: Any, kept: list[int]) -> nn.Module:
    """A shallow copy of a Hugging Face causal LM running only decoder layers ``kept`` (weights shared)."""
    inner = getattr(hf, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"layer skipping needs a decoder at .model.layers; {type(hf).__name__} has none")
    new_layers = []
    for j, i in enumerate(kept):
        layer = copy.copy(layers[i])
        layer._modules = dict(layer._modules)  # own child table: the attention copy below stays private
        attn = copy.copy(layer.self_attn)
        if not hasattr(attn, "layer_idx"):
            raise TypeError(f"{type(attn).__name__} has no layer_idx to re-number for the draft cache")
        attn.layer_idx = j
        layer._modules["self_attn"] = attn
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = j
        new_layers.append(layer)
    config = copy.deepcopy(hf.config)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    view_inner = copy.copy(inner)
    view_inner._modules = dict(inner._modules)
    view_inner._modules["layers"] = nn.ModuleList(new_layers)
    view_inner.config = config
    view = copy.copy(hf)
    view._modules = dict(hf._modules)
    view._modules["model"] = view_inner
    view.config = config
    return view


def layer_skip(model: Any, skip: list[int]) -> nn.Module:
    """The model with layers ``skip`` removed, as a draft model that shares the target's weights."""
    n = model.n_layers
    skip = sorted(set(int(i) for i in skip))
    bad = [i for i in skip if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer-skip indices {bad} are outside the model's layers 0..{n - 1}")
    kept = [i for i in range(n) if i not in skip]
    if not kept:
        raise ValueError(f"layer skip {skip} removes all {n} layers; keep at least one")
    from lmlab.core.hf import HFCausalLM
    from lmlab.core.transformer import Transformer

    if isinstance(model, Transformer):
        return SkipLayers(model, kept)
    if not isinstance(model, HFCausalLM):
        raise TypeError(f"layer skipping needs a Transformer or an HFCausalLM, got {type(model).__name__}")
    return HFCausalLM(_hf_view(model.model, kept))


def parse_skip(spec: str, n_layers: int) -> list[int]:
    """``"skip:0,2,4"`` or ``"skip:1-3,7"`` -> layer indices; ``"skip:odd"`` / ``"skip:even"`` also work."""
    if not spec.startswith("skip:"):
        raise ValueError(f"layer-skip spec {spec!r} must look like 'skip:0,2,4', 'skip:2-5' or 'skip:odd'")
    body = spec[len("skip:"):].strip()
    if body in ("odd", "even"):
        return [i for i in range(n_layers) if i % 2 == (body == "odd")]
    out = []
    try:
        for part in filter(None, body.split(",")):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ValueError(f"layer-skip spec {spec!r}: expected comma-separated indices or ranges") from None
    if not out:
        raise ValueError(f"layer-skip spec {spec!r} names no layers")
    return out


class DraftRunner:
    """The draft model plus its cache, following the committed sequence (see the module docstring)."""

    def __init__(self, model: Any):
        self.model = model
        self.device = model.device
        self.calls = self.tokens = 0

    def begin(self, max_len: int, needed: int) -> None:
        ctx = context_length(self.model)
        if needed > ctx:
            raise ValueError(f"the draft's context of {ctx} tokens is shorter than prompt + max_new_tokens "
                             f"= {needed}")
        self.cache = new_cache(self.model, max_len, rollback=max_len - needed)  # a round's nodes, then undone
        self.n = 0  # committed tokens held by the cache
        self.calls = self.tokens = 0

    @property
    def vocab_size(self) -> int:
        return vocab_size(self.model)

    def feed_pending(self, seq: list[int]) -> torch.Tensor:
        """Feed seq[n:] (ends with the root); returns the draft logits (V,) at the root."""
        ids = torch.tensor([seq[self.n:]], device=self.device)  # (1, T)
        logits = self.model(ids, cache=self.cache)[0, -1]
        self.calls += 1
        self.tokens += ids.shape[1]
        self.n = len(seq)
        return logits

    def feed_next(self, token: int) -> tuple[torch.Tensor, int]:
        """Feed one node that extends the cache contiguously (a chain); returns its logits (V,) and slot."""
        slot = self.cache.length
        logits = self.model(torch.tensor([[token]], device=self.device), cache=self.cache)[0, -1]
        self.calls += 1
        self.tokens += 1
        return logits, slot

    def feed_tree(self, tokens: list[int], ancestors: list[list[int]],
                  depths: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Feed F speculative nodes; node i sees the committed prefix, the slots ``ancestors[i]`` and itself.

        ``depths[i]`` counts from the root (root = 0), so its position is n - 1 + depth. Returns the logits
        (F, V) and the cache slots the nodes now occupy.
        """
        F, S0 = len(tokens), self.cache.length
        mask = torch.zeros(F, S0 + F, dtype=torch.bool, device=self.device)  # (F, S0 + F)
        mask[:, :self.n] = True
        for i, anc in enumerate(ancestors):
            if anc:
                mask[i, anc] = True
            mask[i, S0 + i] = True
        positions = torch.tensor(depths, device=self.device) + (self.n - 1)  # (F,)
        ids = torch.tensor([tokens], device=self.device)  # (1, F)
        logits = self.model(ids, cache=self.cache, positions=positions, mask=mask)[0]  # (F, V)
        self.calls += 1
        self.tokens += F
        return logits, list(range(S0, S0 + F))

    def commit(self, slots: list[int]) -> None:
        """Keep the committed prefix plus ``slots`` (accepted nodes with valid keys/values, in path order)."""
        commit(self.cache, self.n, slots)
        self.n += len(slots)
