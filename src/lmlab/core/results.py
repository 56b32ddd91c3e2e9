"""Results are data: the one JSON format of reproductions (``repro/<slug>/results``) and benchmarks (``bench/results``).

Reproduction result::

    {"slug", "claim", "paper": {metric: value}, "date", "machine", "command", "seconds", "smoke",
     "gates": [{"name", "value", "op", "threshold", "passed"}], "metrics": {...}}

Benchmark result (A and B measured alternately in one process run)::

    {"name", "a", "b", "metric", "a_value", "b_value", "ratio", "runs", "date", "machine", "command",
     "cases": [{"label", "a_value", "b_value", "ratio", ...}]}

Files are written atomically (temporary file, then rename) so a killed run never leaves half a JSON behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import operator
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@dataclass
class Gate:
    name: str  # metric key the gate reads
    value: float | None  # measured value (None when the metric is missing: the gate fails)
    op: str  # one of OPS
    threshold: float
    passed: bool

    @classmethod
    def check(cls, name: str, value: Any, op: str, threshold: float) -> Gate:
        if op not in OPS:
            raise ValueError(f"gate {name!r}: op {op!r} is not one of {list(OPS)}")
        ok = value is not None and not (isinstance(value, float) and math.isnan(value))
        passed = bool(ok and OPS[op](value, threshold))
        return cls(name, None if value is None else float(value), op, float(threshold), passed)


def machine() -> str:
    """A short description of the machine (CPU model, cores, torch version); no host names or paths."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, {platform.system()}"
    torch = sys.modules.get("torch")
    if torch is not None:
        desc += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            desc += f", {torch.cuda.get_device_name(0)}"
    return desc


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def command_line() -> str:
    args = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else []
    return " ".join(args)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return x.item()
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Atomic JSON write (``runtime.atomic_write``); numpy / torch scalars become numbers, NaN and inf null."""
    from .runtime import atomic_write  # here: importing this module stays free of torch

    return atomic_write(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def repro_record(slug: str, claim: str, paper: dict, metrics: dict, gates: list[Gate], seconds: float,
                 smoke: bool, command: str | None = None) -> dict[str, Any]:
    return {"slug": slug, "claim": claim, "paper": paper, "date": now(), "machine": machine(),
            "command": command or command_line(), "seconds": round(seconds, 2), "smoke": smoke,
            "gates": [asdict(g) for g in gates], "metrics": metrics}


def bench_record(name: str, a: str, b: str, metric: str, cases: list[dict[str, Any]], runs: int,
                 command: str | None = None) -> dict[str, Any]:
    """``cases``: one dict per setting (e.g. threads) with label, a_value, b_value; the first is the headline."""
    if not cases:
        raise ValueError(f"benchmark {name!r} produced no cases")
    for c in cases:
        c["ratio"] = c["a_value"] / c["b_value"] if c["b_value"] else None
    head = cases[0]
    return {"name": name, "a": a, "b": b, "metric": metric, "a_value": head["a_value"], "b_value": head["b_value"],
            "ratio": head["ratio"], "runs": runs, "date": now(), "machine": machine(),
            "command": command or command_line(), "cases": cases}
