"""Tables of points for the laws family: CSV / JSON reading, normalisation to columns, and row names in errors.

Points are a dict of columns, a list of records, or a CSV or JSON file (UTF-8, a leading byte-order mark is
accepted). CSV files have a header row; lines starting with '#' are comments. JSON files hold a list of
records, a dict of columns, or either under the key "points".

Rows are named in errors one way: a point read from a file is "line L of FILE", L being the 1-based line
number in the file (header, comment and blank lines counted; for JSON the line where the record or value
starts), so an editor's go-to-line finds it; a point given in memory is "row N", N being its 1-based position.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Columns = dict[str, np.ndarray]
_DECODER = json.JSONDecoder()


class Table(dict):
    """Columns read from a file, remembering the file line of every value (``lines[column][row]``)."""

    def __init__(self, cols: Columns, file: Path, lines: Mapping[str, Sequence[int]]):
        super().__init__(cols)
        self.file = file
        self.lines = {k: list(v) for k, v in lines.items()}


def where(cols: Mapping[str, Any], row: int, column: str | None = None) -> str:
    """The name of 0-based ``row`` (of ``column``) in error messages; see the module docstring."""
    if isinstance(cols, Table):
        lines = cols.lines.get(column) if column is not None else None
        lines = lines or next(iter(cols.lines.values()), None)
        if lines and 0 <= row < len(lines):
            return f"line {lines[row]} of {cols.file}"
    return f"row {row + 1}"


def _number_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable number, or None when it is."""
    if isinstance(value, str) and not value.strip():
        return "has an empty value"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return f"must be numeric, got {value!r}"
    return None if math.isfinite(x) else f"has a non-finite value {x}"


def number_column(cols: Mapping[str, np.ndarray], name: str, context: str = "") -> np.ndarray:
    """Column ``name`` as finite floats. An empty, non-numeric or non-finite value raises a ValueError naming
    the column and the row; ``context`` prefixes the message (e.g. "law 'densing': ")."""
    values = np.asarray(cols[name])
    if values.dtype.kind in "fiu" and np.all(np.isfinite(values)):
        return values.astype(float)
    for i, v in enumerate(values.tolist()):
        problem = _number_problem(v)
        if problem:
            raise ValueError(f"{context}column {name!r} {problem} at {where(cols, i, name)}")
    return values.astype(float)


def _column(values: Sequence[Any]) -> np.ndarray:
    """A float array when every value parses as a number, else a string array (None -> '', an empty cell)."""
    try:
        return np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        return np.asarray(["" if v is None else str(v) for v in values])


def _columns(points: Any, file: Path | None = None, lines: Mapping[str, Sequence[int]] | None = None) -> Columns:
    """Dict of columns or list of records -> dict of 1-D arrays (a Table when ``file`` is given)."""
    table = Table({}, file, lines or {}) if file else {}
    if isinstance(points, Mapping):
        cols = {str(k): _column(np.atleast_1d(np.asarray(v)).tolist()) for k, v in points.items()}
    elif isinstance(points, Sequence) and not isinstance(points, str) and all(isinstance(r, Mapping)
                                                                              for r in points):
        keys = list(dict.fromkeys(k for r in points for k in r))
        missing = [(i, k) for i, r in enumerate(points) for k in keys if k not in r]
        if missing:
            i, k = missing[0]
            raise ValueError(f"the record at {where(table, i)} lacks key {k!r}; every record needs {keys}")
        cols = {str(k): _column([r[k] for r in points]) for k in keys}
    else:
        what = f"{file}: a JSON table must hold a dict of columns or a list of records" if file else \
            "points must be a dict of columns, a list of records or a file path"
        raise ValueError(f"{what}, got {type(points).__name__}")
    sizes = {len(v) for v in cols.values()}
    if len(sizes) > 1:
        raise ValueError(f"{file or 'points'}: columns have different lengths: "
                         f"{ {k: len(v) for k, v in cols.items()} }")
    return Table(cols, file, lines or {}) if file else cols


def as_columns(points: Any) -> Columns:
    """Normalise a dict of columns, a list of records, or a file path into a dict of 1-D arrays."""
    if isinstance(points, Table):
        return points
    if isinstance(points, (str, Path)):
        return read_table(points)
    return _columns(points)


def _text(path: Path) -> str:
    """The file as text (UTF-8, optional BOM); a binary or differently encoded file raises a ValueError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         f"expected a CSV or JSON table") from None
    if "\x00" in text:
        raise ValueError(f"{path}: contains NUL bytes (a binary file?); expected a CSV or JSON table")
    return text


def read_table(path: str | Path) -> Columns:
    """Columns of a CSV (header row; '#' lines are comments) or JSON file (list of records or dict of lists).
    A column whose values all parse as numbers becomes a float array, any other column a string array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    text = _text(path)
    if path.suffix.lower() == ".json":
        return _read_json(path, text)
    return _read_csv(path, text)


def _read_csv(path: Path, text: str) -> Columns:
    kept: list[int] = []  # file line number of every line handed to the csv reader

    def data_lines() -> Iterator[str]:
        for no, line in enumerate(text.split("\n"), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                kept.append(no)
                yield line

    reader = csv.reader(data_lines())
    rows, starts, consumed = [], [], 0
    try:
        for row in reader:
            rows.append(row)
            starts.append(kept[consumed])  # the line the row starts on
            consumed = reader.line_num
    except csv.Error as e:
        raise ValueError(f"{path}: line {kept[-1] if kept else 1} is not valid CSV: {e}") from None
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ValueError(f"{path}: the header (line {starts[0]}) repeats column names {dup}")
    for r, line in zip(rows[1:], starts[1:]):
        if len(r) != len(header):
            raise ValueError(f"{path}: line {line} has {len(r)} fields, the header (line {starts[0]}) has "
                             f"{len(header)}")
    cols = {h: [r[j].strip() for r in rows[1:]] for j, h in enumerate(header)}
    return _columns(cols, path, {h: starts[1:] for h in header})


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _elements(text: str, i: int) -> list[int]:
    """Offsets of the elements of the (valid) JSON array whose '[' is at ``text[i]``."""
    out, i = [], _skip(text, i + 1)
    while text[i] != "]":
        out.append(i)
        i = _skip(text, _DECODER.raw_decode(text, i)[1])
        if text[i] == ",":
            i = _skip(text, i + 1)
    return out


def _members(text: str, i: int) -> dict[str, int]:
    """Offsets of the values of the (valid) JSON object whose '{' is at ``text[i]``, by key."""
    out, i = {}, _skip(text, i + 1)
    while text[i] != "}":
        key, i = _DECODER.raw_decode(text, i)
        out[key] = i = _skip(text, _skip(text, i) + 1)  # past the ':'
        i = _skip(text, _DECODER.raw_decode(text, i)[1])
        if text[i] == ",":
            i = _skip(text, i + 1)
    return out


def _json_lines(text: str, data: Any, start: int) -> dict[str, list[int]]:
    """File line of every value: per column for a dict of columns, the record's first line for records."""
    breaks = [m.start() for m in re.finditer("\n", text)]
    line = lambda offset: bisect.bisect_right(breaks, offset) + 1  # noqa: E731
    if isinstance(data, list):
        rows = [line(o) for o in _elements(text, start)]
        return {str(k): rows for r in data if isinstance(r, Mapping) for k in r}
    if not isinstance(data, Mapping):
        return {}
    members = _members(text, start)
    return {str(k): ([line(o) for o in _elements(text, members[k])] if isinstance(v, list) else
                     [line(members[k])]) for k, v in data.items()}


def _read_json(path: Path, text: str) -> Columns:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    start = _skip(text, 0)
    if isinstance(data, Mapping) and "points" in data:
        data, start = data["points"], _members(text, start)["points"]
    return _columns(data, path, _json_lines(text, data, start))
