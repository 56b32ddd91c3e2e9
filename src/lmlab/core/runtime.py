"""Run-time plumbing: seeding, threads, devices, timers, run directories, JSONL logs, progress bars."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int | None = None) -> int:
    """Pin torch intra-op threads (default: $LMLAB_THREADS or 1). A 2-thread run on a shared 2-core machine can be
    many times slower than a 1-thread one, so lmlab defaults to 1 and benchmarks report both."""
    n = int(os.environ.get("LMLAB_THREADS", "1")) if n is None else n
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


DEVICES = ("cpu", "cuda", "mps")


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """A torch device from ``spec`` ("cpu", "cuda", "cuda:1", "mps", "auto"); None or "" = $LMLAB_DEVICE or cpu.

    "auto" picks cuda, then mps, then cpu. Under torchrun a bare "cuda" means this rank's GPU (LOCAL_RANK).
    An unavailable device is an error naming it, never a silent fall back to the CPU.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or os.environ.get("LMLAB_DEVICE", "") or "cpu").strip()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else (
            "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    kind = spec.split(":", 1)[0]
    if kind not in DEVICES:
        raise ValueError(f"device {spec!r} is not one of {', '.join(DEVICES)} (optionally cuda:N) or 'auto'")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} was asked for but torch sees no CUDA GPU")
        if spec == "cuda" and "LOCAL_RANK" in os.environ:
            spec = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but torch sees no Apple GPU")
    return torch.device(spec)


def use_device(spec: str | None) -> torch.device | None:
    """Make ``spec`` the default device of everything run from here on (sets $LMLAB_DEVICE, which worker
    processes inherit); None leaves the default as it is. The device is checked first."""
    if not spec:
        return None
    dev = resolve_device(spec)
    os.environ["LMLAB_DEVICE"] = spec
    return dev


def cache_dir(*parts: str) -> Path:
    """$LMLAB_CACHE (default ~/.cache/lmlab) / parts, created."""
    root = Path(os.environ.get("LMLAB_CACHE", Path.home() / ".cache" / "lmlab"))
    p = root.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """``with atomic_open(path) as f: f.write(...)``: write through a temporary file in the same folder, flush it
    to disk, then rename it over ``path``. Readers see the old file or the new one, never half of one; an error
    (or a killed writer) leaves ``path`` as it was and no temporary file behind. ``mode``: "w" (text, UTF-8) or
    "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically (see ``atomic_open``); returns ``path``."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


class Timer:
    """``with Timer() as t: ...``; ``t.seconds`` afterwards."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


class JsonlLog:
    """Append-only JSONL metrics log; ``truncate_after(step)`` drops lines written after a checkpoint (resume)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; non-finite floats are written as null (strict JSON)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """The records; a torn last line (a write cut by a kill) is dropped with a warning, a bad line before
        the last one is an error naming the file and line."""
        if not self.path.exists():
            return []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: not a UTF-8 JSONL metrics log ({e})") from None
        numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
        out = []
        for j, (i, line) in enumerate(numbered):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                if j < len(numbered) - 1:
                    raise ValueError(f"{self.path}:{i}: not valid JSON ({e.msg}); the metrics log is corrupted "
                                     "before its last line") from None
                logging.getLogger(__name__).warning("%s:%d: dropped a torn last line (a write cut short)",
                                                    self.path, i)
        return out

    def truncate_after(self, step: int) -> None:
        """Keep only the records with ``step <= step`` (atomic rewrite)."""
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))


class LineProgress:
    """Progress for logs (stderr not a terminal): one line every ``every`` seconds with rate and ETA.

    The tqdm surface the loops use: ``update(n)``, ``set_postfix(**kw)``, ``close()``.
    """

    def __init__(self, total: int | None, desc: str, initial: int = 0, every: float = 30.0):
        self.total, self.desc, self.n, self.every = total, desc, initial, every
        self.start_n, self.t0 = initial, time.monotonic()
        self.last, self.postfix = self.t0, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())

    def line(self, now: float) -> str:
        rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        eta = f", ETA {format_seconds((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}{extra}, {rate:.3g}/s{eta}"

    def close(self) -> None:
        if self.n > self.start_n and time.monotonic() - self.t0 >= self.every:
            print(self.line(time.monotonic()), file=sys.stderr, flush=True)


def format_seconds(s: float) -> str:
    """12 s, 4m05s, 2h03m."""
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress(it: Iterable | None = None, *, total: int | None = None, desc: str = "", disable: bool | None = None,
             initial: int = 0) -> Any:
    """A tqdm bar on a terminal; in a log (stderr not a terminal) a ``LineProgress`` line every
    $LMLAB_PROGRESS_EVERY seconds (default 30); nothing with ``disable=True`` or LMLAB_PROGRESS=0."""
    from tqdm.auto import tqdm

    off = disable is True or os.environ.get("LMLAB_PROGRESS", "") == "0"
    if not off and not sys.stderr.isatty() and it is None:
        return LineProgress(total, desc, initial, float(os.environ.get("LMLAB_PROGRESS_EVERY", "30")))
    return tqdm(it, total=total, desc=desc, disable=off or not sys.stderr.isatty(), initial=initial,
                dynamic_ncols=True, leave=False)


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Temporarily run torch with n threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
