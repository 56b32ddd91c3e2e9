"""Key-value retrieval with the needle's depth controlled: the long-context probe of MoICE's reproduction.

MoICE (Lin et al., arXiv:2406.19598) targets "lost in the middle": a model that finds a fact at the start or end
of its context but misses it in the middle. The methods notes (decoding.md 3.5) probe this with synthetic
key-value retrieval whose needle depth is set exactly, and induce the failure in a tiny base model by training it
on an edge-heavy (U-shaped) depth distribution. Format (defaults: 2-letter keys, 2-digit values):

    prompt = "qf:07,ab:31,zz:90?ab"     N distinct keys with their values, then '?' and the queried key
    target = "31"                       the queried key's value

The queried pair's *index* i in 0..N-1 sets its depth fraction x = i / (N - 1) (x = 0 when N = 1). With a fixed
``depth`` d, i = floor(d (N - 1) + 1/2), the nearest pair (exactly d whenever d (N - 1) is an integer). Otherwise i
is drawn from ``distribution``:

    uniform    P(i) = 1 / N
    u_shaped   P(i) = f(x_i) / sum_j f(x_j),  f(x) = (1 - a) + 3 a (2x - 1)^2,  a = ``edge_weight`` in [0, 1]

f is a density on [0, 1] (it integrates to 1); with the default a = 0.9 the edges are 28 times as likely as the
middle (f(0) = f(1) = 2.8, f(1/2) = 0.1). The density's shape is ours: the notes ask for "U-shaped (edge-heavy)"
without a formula. The context length is ``n_pairs``, or ``context_chars`` characters when set. Keys are distinct,
values are drawn independently (they may repeat), so the answer is unique and the verifier is exact.
Deviation: the paper's probes (MDQA, LEval) are natural-language documents; a filler-plus-one-needle layout is left
to a later change (every pair here is a potential needle, which is the harder and cleaner probe).
:func:`depth_sweep` returns one example set per depth, built from the same contexts so that only the depth varies.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from lmlab.core.config import param
from lmlab.tasks.base import SEP, Example, check_generate_args

DISTRIBUTIONS = ("uniform", "u_shaped")
PUNCT = ":,?"  # pair, list and query separators


@dataclass
class Config:
    n_pairs: int = param(16, "key:value pairs in the context (the context length in pairs)")
    context_chars: int = param(0, "when > 0: the context length in characters instead, as many pairs as fit")
    key_len: int = param(2, "characters per key")
    value_len: int = param(2, "characters per value")
    key_chars: str = param("abcdefghijklmnopqrstuvwxyz", "characters keys are drawn from")
    value_chars: str = param("0123456789", "characters values are drawn from")
    depth: float | None = param(None, "fixed depth fraction of the queried pair (0 = first pair, 1 = last); "
                                      "None draws it from `distribution`")
    distribution: str = param("uniform", "depth distribution when depth is None: uniform | u_shaped",
                              choices=DISTRIBUTIONS, source="decoding.md 3.5: U-shaped training, uniform probes")
    edge_weight: float = param(0.9, "u_shaped: a in the density f(x) = (1 - a) + 3 a (2x - 1)^2 (0 = uniform, "
                                    "1 = never the exact middle)", source="ours: edges 28x the middle at 0.9")


def pairs_in(cfg: Config) -> int:
    """Pairs in the context: ``n_pairs``, or as many as fit in ``context_chars`` ("k:v" joined by ',')."""
    if cfg.context_chars:
        per_pair = cfg.key_len + 1 + cfg.value_len
        return (cfg.context_chars + 1) // (per_pair + 1)
    return cfg.n_pairs


def check_depth(depth: float, who: str = "retrieval depth") -> float:
    """``depth`` as a float in [0, 1]; ValueError naming it otherwise."""
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0.0 <= depth <= 1.0:
        raise ValueError(f"{who} must be a number in [0, 1], got {depth!r}")
    return float(depth)


def depth_index(depth: float, n_pairs: int) -> int:
    """Index of the pair nearest depth fraction ``depth`` among ``n_pairs`` (halves round up)."""
    return math.floor(check_depth(depth) * (n_pairs - 1) + 0.5)


def depth_fraction(index: int, n_pairs: int) -> float:
    """Depth fraction x = index / (n_pairs - 1) of a pair (0 for a single pair)."""
    return index / (n_pairs - 1) if n_pairs > 1 else 0.0


def depth_weights(n_pairs: int, distribution: str = "uniform", edge_weight: float = 0.9) -> list[float]:
    """P(queried index = i) for i in 0..n_pairs-1 (module docstring); sums to 1."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"retrieval distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if not 0.0 <= edge_weight <= 1.0:
        raise ValueError(f"retrieval edge_weight must be in [0, 1], got {edge_weight!r}")
    if distribution == "uniform" or n_pairs == 1:
        return [1.0 / n_pairs] * n_pairs
    f = [(1 - edge_weight) + 3 * edge_weight * (2 * depth_fraction(i, n_pairs) - 1) ** 2 for i in range(n_pairs)]
    total = sum(f)
    return [v / total for v in f]


def parse_prompt(prompt: str) -> tuple[list[tuple[str, str]], str]:
    """``"ab:31,zz:90?ab"`` -> ``([("ab", "31"), ("zz", "90")], "ab")``; ValueError on anything else."""
    if not isinstance(prompt, str) or prompt.count("?") != 1:
        raise ValueError(f"retrieval prompt must be 'k:v,k:v,...?k', got {prompt!r}")
    context, query = prompt.split("?")
    pairs = [tuple(item.split(":")) for item in context.split(",")] if context else []
    if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        raise ValueError(f"retrieval prompt {prompt!r}: the context must be one or more 'key:value' pairs")
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"retrieval prompt {prompt!r}: keys must be distinct")
    if query not in keys:
        raise ValueError(f"retrieval prompt {prompt!r}: the queried key {query!r} is not in the context")
    return pairs, query  # type: ignore[return-value]


class RetrievalTask:
    """Seeded key-value contexts with a controlled query depth; exact verifier (the queried key's value)."""

    name = "retrieval"

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg = cfg if cfg is not None else Config()
        for key in ("key_len", "value_len"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"retrieval {key} must be >= 1, got {getattr(cfg, key)}")
        for key in ("key_chars", "value_chars"):
            chars = getattr(cfg, key)
            if not chars or len(set(chars)) != len(chars) or set(chars) & set(PUNCT + SEP):
                raise ValueError(f"retrieval {key} must be distinct characters other than {PUNCT + SEP!r}, "
                                 f"got {chars!r}")
        if cfg.context_chars < 0:
            raise ValueError(f"retrieval context_chars must be >= 0, got {cfg.context_chars}")
        self.n_pairs = pairs_in(cfg)
        if self.n_pairs < 1:
            what = f"context_chars={cfg.context_chars} holds" if cfg.context_chars else f"n_pairs={cfg.n_pairs} is"
            raise ValueError(f"retrieval context is empty: {what} no key:value pair (need at least one)")
        if self.n_pairs > len(cfg.key_chars) ** cfg.key_len:
            raise ValueError(f"retrieval needs {self.n_pairs} distinct keys but key_len={cfg.key_len} over "
                             f"{len(cfg.key_chars)} characters gives only {len(cfg.key_chars) ** cfg.key_len}")
        if cfg.depth is not None:
            check_depth(cfg.depth)
        self.weights = depth_weights(self.n_pairs, cfg.distribution, cfg.edge_weight)
        self.alphabet = "".join(dict.fromkeys(cfg.key_chars + cfg.value_chars + PUNCT))

    def _key(self, code: int) -> str:
        chars, out = self.cfg.key_chars, []
        for _ in range(self.cfg.key_len):
            code, r = divmod(code, len(chars))
            out.append(chars[r])
        return "".join(out)

    def sample(self, rng: random.Random) -> Example:
        """One example; the context is drawn before the depth, so fixed depths share contexts per seed."""
        cfg, n = self.cfg, self.n_pairs
        keys = [self._key(c) for c in rng.sample(range(len(cfg.key_chars) ** cfg.key_len), n)]
        values = ["".join(rng.choice(cfg.value_chars) for _ in range(cfg.value_len)) for _ in range(n)]
        if cfg.depth is not None:
            index = depth_index(cfg.depth, n)
        else:
            index = rng.choices(range(n), weights=self.weights)[0]
        prompt = ",".join(f"{k}:{v}" for k, v in zip(keys, values)) + "?" + keys[index]
        return Example(prompt, values[index], {"index": index, "depth": depth_fraction(index, n), "n_pairs": n})

    def generate(self, n: int, seed: int) -> list[Example]:
        check_generate_args(n, seed)
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def verify(self, prompt: str, answer: str) -> bool:
        """True iff ``answer`` is the value of the queried key."""
        pairs, query = parse_prompt(prompt)
        return isinstance(answer, str) and answer == dict(pairs)[query]


def depth_sweep(task: RetrievalTask | Config, depths: Sequence[float], n: int, seed: int = 0) -> dict[float, list]:
    """{depth: n examples with the queried pair at that depth fraction}; the same seed (so the same contexts)
    for every depth, so only the needle's position differs between the sets."""
    cfg = task.cfg if isinstance(task, RetrievalTask) else task
    if not isinstance(cfg, Config):
        raise ValueError(f"depth_sweep needs a RetrievalTask or its Config, got {type(task).__name__}")
    if not depths:
        raise ValueError("depth_sweep needs at least one depth in [0, 1], got none")
    checked = [check_depth(d, "depth_sweep depth") for d in depths]  # every depth checked before any work
    return {d: RetrievalTask(dataclasses.replace(cfg, depth=d)).generate(n, seed) for d in checked}
