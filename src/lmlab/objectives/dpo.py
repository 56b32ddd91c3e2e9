"""DPO and the implicit PRM's CE objective for the shared Trainer, with reference log-probs cached on disk.

Papers: Rafailov et al., "Direct Preference Optimization" (arXiv:2305.18290); Yuan et al., "Free Process Rewards
without Process Labels" (arXiv:2412.01981, official code github.com/PRIME-RL/ImplicitPRM: ``run_dpo.sh``,
``run_ce.sh``, ``CETrainer``); Xu et al., RISE (arXiv:2410.06638). The losses are ``preference.dpo_loss`` and
``preference.ce_reward_loss``; this file feeds them from a batch.

The reference never changes, so its summed response log-probs are computed once per dataset and stored
(``ReferenceCache``; TRL's ``precompute_ref_log_probs``, and the implicit PRM's evaluation caches them per test
set). A cache is a folder with ``reference_logprobs.safetensors`` (``sums`` (N,) and optionally ``tokens``
(N, T - 1)) and ``meta.json`` written last, holding fingerprints of the data (the ids and masks the rows were
computed from) and of the reference (vocabulary size, parameter count, SHA-256 of its state dict) plus the
tensors file's SHA-256; loading refuses a cache of other data, of another reference, or a torn pair of files.

Batches. ``DPO``: ``chosen_ids``, ``chosen_mask``, ``rejected_ids``, ``rejected_mask`` ((B, T) each; the masks
mark response tokens, as in ``preference``) and either ``ref_chosen`` / ``ref_rejected`` ((B,) cached summed
reference log-probs) or a live ``reference`` model given to the objective. ``CEReward``: ``ids``,
``response_mask``, ``label`` ((B,), 1 = correct) and ``ref_logp`` (B,) or a live reference.
Deviation: chosen and rejected run as one concatenated forward (TRL's ``concatenated_forward``) padded to one
length; causal attention makes right padding invisible to the scored tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lmlab.core.checkpoint import CheckpointError
from lmlab.core.config import param
from lmlab.core.runtime import atomic_write
from lmlab.core.train import LossOutput
from lmlab.objectives.preference import ce_reward_loss, check_beta, dpo_loss, token_logprobs

KIND = "lmlab-reference-logprobs"
TENSORS, META = "reference_logprobs.safetensors", "meta.json"


# ---------------------------------------------------------------------------------------------- fingerprints
def vocab_of(model: torch.nn.Module) -> int:
    model = getattr(model, "module", model)  # DDP wrapper
    if hasattr(model, "vocab_size"):
        return int(model.vocab_size)
    if hasattr(getattr(model, "cfg", None), "vocab_size"):
        return int(model.cfg.vocab_size)
    raise TypeError(f"cannot tell the vocabulary size of {type(model).__name__} (no vocab_size)")


def check_same_vocab(policy: torch.nn.Module | int, reference: torch.nn.Module | int) -> None:
    vp = policy if isinstance(policy, int) else vocab_of(policy)
    vr = reference if isinstance(reference, int) else vocab_of(reference)
    if vp != vr:
        raise ValueError(f"the reference has a vocabulary of {vr} tokens but the policy has {vp}: log-ratios need "
                         "one tokenizer (use the policy's initial checkpoint as the reference)")


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Vocabulary size, parameter count and SHA-256 over the state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    count = 0
    for name, t in sorted(getattr(model, "module", model).state_dict().items()):
        t = t.detach().contiguous().cpu().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
        count += t.numel()
    return {"vocab_size": vocab_of(model), "numel": count, "sha256": h.hexdigest()}


def data_fingerprint(ids: torch.Tensor, mask: torch.Tensor) -> str:
    """SHA-256 of the rows a cache was computed for: shape, token ids and response masks."""
    h = hashlib.sha256(f"{tuple(ids.shape)};".encode())
    h.update(ids.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    h.update(mask.detach().cpu().to(torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- the cache
@dataclass
class ReferenceCache:
    sums: torch.Tensor  # (N,) summed response log-probs of the reference, float32
    tokens: torch.Tensor | None  # (N, T - 1) per-token log-probs (0 off the response), or None
    meta: dict[str, Any]  # kind, data fingerprint, reference fingerprint, rows

    @classmethod
    @torch.no_grad()
    def build(cls, reference: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 32,
              per_token: bool = False) -> ReferenceCache:
        """Reference log-probs of rows ``ids`` / ``mask`` ((N, T)), ``batch_size`` rows per forward, eval mode."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = reference.training
        reference.eval()
        try:
            dev = next(reference.parameters()).device
            parts = [token_logprobs(reference, ids[i:i + batch_size].to(dev), mask[i:i + batch_size].to(dev)).cpu()
                     for i in range(0, len(ids), batch_size)]
        finally:
            reference.train(was_training)
        tokens = torch.cat(parts)  # (N, T - 1)
        meta = {"kind": KIND, "rows": len(ids), "data": data_fingerprint(ids, mask),
                "reference": model_fingerprint(reference), "per_token": per_token}
        return cls(tokens.sum(-1), tokens if per_token else None, meta)

    def save(self, path: str | Path) -> Path:
        """Tensors first, then meta.json (with the tensors' SHA-256), each written atomically."""
        path = Path(path)
        tensors = {"sums": self.sums.contiguous()} | ({"tokens": self.tokens.contiguous()} if self.tokens is not None
                                                      else {})
        blob = st_save(tensors)
        atomic_write(path / TENSORS, blob)
        atomic_write(path / META, json.dumps({**self.meta, "tensors_sha256": hashlib.sha256(blob).hexdigest()},
                                             indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path, reference: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
             policy: torch.nn.Module | None = None) -> ReferenceCache:
        """The cache in ``path`` if it was made by ``reference`` on exactly these rows (and, given ``policy``, the
        reference shares its vocabulary); a clear error otherwise."""
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text())
            blob = (path / TENSORS).read_bytes()
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable reference cache ({e})") from None
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise CheckpointError(f"{path / META} is not a reference cache (kind {meta.get('kind')!r}, "
                                  f"expected {KIND!r})" if isinstance(meta, dict) else f"{path / META} is not a dict")
        if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
            raise CheckpointError(f"{path / TENSORS} does not match its meta.json (torn or edited cache)")
        want = data_fingerprint(ids, mask)
        if meta["data"] != want:
            raise ValueError(f"reference cache {path} was made from other data (fingerprint {meta['data'][:12]}, "
                             f"these rows {want[:12]}): rebuild it for this dataset")
        ref = model_fingerprint(reference)
        if meta["reference"] != ref:
            raise ValueError(f"reference cache {path} was made with another reference model ({meta['reference']} "
                             f"vs {ref}): rebuild it with this reference")
        if policy is not None:
            check_same_vocab(policy, meta["reference"]["vocab_size"])
        tensors = st_load(blob)
        return cls(tensors["sums"], tensors.get("tokens"), {k: v for k, v in meta.items() if k != "tensors_sha256"})


# ---------------------------------------------------------------------------------------------- objectives
def right_pad(t: torch.Tensor, length: int, value: int | bool = 0) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)


def pair_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of chosen and rejected ((B,) each) from one forward over both, right-padded."""
    T = max(batch["chosen_ids"].shape[1], batch["rejected_ids"].shape[1])
    ids = torch.cat([right_pad(batch["chosen_ids"], T), right_pad(batch["rejected_ids"], T)])  # (2B, T)
    mask = torch.cat([right_pad(batch["chosen_mask"].bool(), T, False),
                      right_pad(batch["rejected_mask"].bool(), T, False)])  # (2B, T)
    sums = token_logprobs(model, ids, mask).sum(-1)  # (2B,)
    return sums[: len(sums) // 2], sums[len(sums) // 2:]


def identical_pairs(batch: dict[str, torch.Tensor]) -> list[int]:
    """Rows whose chosen and rejected sequences are the same tokens with the same response span."""
    T = max(batch["chosen_ids"].shape[1], batch["rejected_ids"].shape[1])
    ic, ir = right_pad(batch["chosen_ids"], T), right_pad(batch["rejected_ids"], T)  # (B, T)
    mc, mr = right_pad(batch["chosen_mask"].bool(), T, False), right_pad(batch["rejected_mask"].bool(), T, False)
    upto = mc.flip(1).cummax(1).values.flip(1)  # (B, T) True through the last response token
    same = (mc == mr).all(1) & ((ic == ir) | ~upto).all(1)
    return same.nonzero().flatten().tolist()


def frozen(reference: torch.nn.Module | None) -> torch.nn.Module | None:
    """The reference, frozen (no gradients) and in eval mode."""
    if reference is not None:
        reference.requires_grad_(False).eval()
    return reference


@dataclass
class Config:
    beta: float = param(0.05, "scale of the implicit reward beta * log(pi_theta / pi_ref)",
                        source="implicit PRM official run_dpo.sh: 0.05 (RISE's train.sh uses 0.4)")
    nll_coef: float = param(0.0, "weight alpha of the chosen response's per-token NLL (0 = plain DPO)",
                            source="RISE (training.md 2.2): DPO + alpha NLL(y_w)/|y_w|; RPO's alpha = 1.0 to start")

    def __post_init__(self) -> None:
        check_beta(self.beta)
        if self.nll_coef < 0:
            raise ValueError(f"nll_coef must be >= 0, got {self.nll_coef}")


class DPO:
    """Sigmoid DPO (+ RISE's NLL term) on chosen/rejected pairs; cached or live reference log-probs."""

    def __init__(self, cfg: Config | None = None, reference: torch.nn.Module | None = None):
        self.cfg = cfg or Config()
        self.reference = frozen(reference)

    def reference_logprobs(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen" in batch and "ref_rejected" in batch:
            return batch["ref_chosen"], batch["ref_rejected"]
        if self.reference is None:
            raise ValueError("DPO needs ref_chosen / ref_rejected in the batch (a ReferenceCache) or a reference model")
        if self.reference is getattr(model, "module", model):
            raise ValueError("the reference must be a frozen copy of the policy, not the policy itself")
        check_same_vocab(model, self.reference)
        with torch.no_grad():
            return pair_logprobs(self.reference, batch)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        same = identical_pairs(batch)
        if same:
            raise ValueError(f"pairs {same[:5]} have identical chosen and rejected sequences: DPO needs two "
                             "different responses (check the pairing)")
        ref_c, ref_r = self.reference_logprobs(model, batch)
        pol_c, pol_r = pair_logprobs(model, batch)  # (B,), (B,)
        nll = -pol_c / batch["chosen_mask"][:, 1:].sum(-1).to(pol_c.dtype)  # (B,) per-token NLL of y_w
        loss, metrics = dpo_loss(pol_c, pol_r, ref_c.to(pol_c), ref_r.to(pol_c), self.cfg.beta, nll,
                                 self.cfg.nll_coef)
        return LossOutput(loss, metrics)


@dataclass
class CEConfig:
    beta: float = param(0.05, "scale of the implicit reward beta * log(pi_theta / pi_ref)",
                        source="implicit PRM official run_ce.sh: 0.05")

    def __post_init__(self) -> None:
        check_beta(self.beta)


class CEReward:
    """The implicit PRM's CE loss: each response alone, labelled by its outcome; cached or live reference."""

    def __init__(self, cfg: CEConfig | None = None, reference: torch.nn.Module | None = None):
        self.cfg = cfg or CEConfig()
        self.reference = frozen(reference)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        ids, mask = batch["ids"], batch["response_mask"]
        if "ref_logp" in batch:
            ref = batch["ref_logp"]
        elif self.reference is None:
            raise ValueError("CEReward needs ref_logp in the batch (a ReferenceCache) or a reference model")
        else:
            check_same_vocab(model, self.reference)
            with torch.no_grad():
                ref = token_logprobs(self.reference, ids, mask).sum(-1)  # (B,)
        policy = token_logprobs(model, ids, mask).sum(-1)  # (B,)
        loss, metrics = ce_reward_loss(policy, ref.to(policy), batch["label"], self.cfg.beta)
        return LossOutput(loss, metrics)
