"""The pipelines family's interface: a pipeline is named async stages over JSON records and a prompt version.

    async def revise(record: dict, llm: ChatClient) -> dict: ...      # a stage: record in, record out
    Pipeline("reviseval", [revise, judge], prompt_version=prompts_version("reviseval"))

Stages call the LLM only through ``core.chat.ChatClient`` (``await llm.achat(messages, ChatParams(...))``);
pipelines never import decoding or serve. Prompts are template files under ``pipelines/prompts/`` rendered with
``string.Template`` (``$name`` placeholders; a missing value is an error naming it), never f-strings in code:
``prompt("reviseval/revise", instruction=..., response=...)``. ``prompts_version(folder)`` hashes a pipeline's
templates, so every output record says which prompts made it. ``runner.run`` runs a pipeline over a file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from lmlab.core.chat import ChatClient

PROMPTS = Path(__file__).resolve().parent / "prompts"
Stage = Callable[[dict[str, Any], ChatClient], Awaitable[dict[str, Any]]]


@dataclass
class Pipeline:
    name: str
    stages: list[Stage]
    prompt_version: str = ""


def record_text(record: dict[str, Any], key: str, numbers: bool = False) -> str:
    """``record[key]`` as text: a string (or, with ``numbers``, an int or float), else a ValueError naming the
    record's id and the key (the runner writes it to the errors file)."""
    value = record.get(key)
    if not (isinstance(value, str) or (numbers and isinstance(value, int | float) and not isinstance(value, bool))):
        kind = "string or number" if numbers else "string"
        raise ValueError(f"record {record.get('id')!r} needs a {key!r} ({kind}), got {value!r}")
    return str(value)


def prompt(name: str, root: Path = PROMPTS, **values: Any) -> str:
    """Render the template ``<root>/<name>.txt`` with ``values``; a placeholder without a value is an error."""
    path = root / f"{name}.txt"
    if not path.is_file():
        known = sorted(str(p.relative_to(root))[:-4] for p in root.rglob("*.txt")) if root.is_dir() else []
        raise FileNotFoundError(f"no prompt template {name!r} under {root}; known: {', '.join(known) or 'none'}")
    try:
        return Template(path.read_text(encoding="utf-8")).substitute(values)
    except KeyError as e:
        raise ValueError(f"prompt template {path} needs a value for ${e.args[0]}") from None


def prompts_version(folder: str, root: Path = PROMPTS) -> str:
    """12 hex digits of the sha256 over a pipeline's template files (names and contents, sorted)."""
    h = hashlib.sha256()
    for p in sorted((root / folder).rglob("*.txt")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]
