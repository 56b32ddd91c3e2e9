"""Dataclass configs: the single source of truth for defaults, help text, CLI flags, TOML files and run configs.

A config is a plain ``@dataclass`` whose fields are declared with :func:`param`, which records the help text and,
for paper-derived values, the source (paper section or official code default). One level of nesting is allowed
(a field whose type is another config dataclass), addressed with dotted keys such as ``train.lr``.

    @dataclass
    class Config:
        lr: float = param(3e-4, "peak learning rate", source="paper Sec. 4.1")

    cfg = from_dict(Config, load_toml("run.toml"))        # unknown keys / wrong types -> ConfigError
    cfg = apply_overrides(cfg, ["lr=1e-3"])               # the CLI's --set a.b=c
    parser = argparse.ArgumentParser(); add_arguments(parser, Config)   # one --flag per field
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that does not match the dataclass."""


def param(default: Any, help: str, *, source: str | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field with help text, an optional citation for its default and optional allowed values."""
    meta = {"help": help, "source": source, "choices": choices}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda d=default: dataclasses.replace(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats. Raises ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{key}': {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a table, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an int, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {type(value).__name__} {value!r}")
        return value
    if _is_config(tp):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a table, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    return value


def validate_choices(cfg: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        choices = f.metadata.get("choices")
        if choices is not None and v not in choices:
            raise ConfigError(f"config key '{prefix}{f.name}': {v!r} is not one of {choices}")
        if dataclasses.is_dataclass(v):
            validate_choices(v, f"{prefix}{f.name}.")


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build ``cls`` from a (possibly nested) dict; unknown keys and wrong types are errors naming the key."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__}; known keys: {', '.join(sorted(names))}"
        )
    data = {k: ({**table_defaults(cls, k), **v} if _is_config(hints[k]) and isinstance(v, dict) else v)
            for k, v in data.items()}
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()}
    cfg = cls(**kwargs)
    validate_choices(cfg, prefix)
    return cfg


def table_defaults(cls: type, name: str) -> dict[str, Any]:
    """The settings a nested table ``name`` of ``cls`` has by default beyond its own class's defaults.

    ``TaskJob.train`` defaults to ``TrainConfig(steps=2000, lr=3e-3, ...)``: a partial table (``--train.steps 5``,
    a TOML ``[train]`` with one key) keeps lr=3e-3 instead of falling back to ``TrainConfig()``'s. Fields declared
    with a None default (derived in ``__post_init__``, e.g. ``n_kv_heads``, ``ffn_dim``) are left out, so they are
    derived again from the values actually given.
    """
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return {}
    tp = _hints(cls)[name]
    own, base = to_dict(field.default_factory()), to_dict(tp())  # type: ignore[misc]
    derived = {f.name for f in dataclasses.fields(tp) if f.default is None}
    return {k: v for k, v in own.items() if k not in derived and v != base.get(k)}


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON/TOML-friendly data (nested dataclasses become tables)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML config file; a missing, binary or invalid file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 TOML file (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "expected a TOML config of key = value lines") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def _parse_scalar(text: str) -> Any:
    """Parse a command-line value the TOML way (numbers, booleans, lists); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def merge_overrides(cls: type, data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw ``data`` with ``a.b=c`` overrides set; each key must name a field of ``cls``.

    Overrides go into the raw data (not into a built config) so that defaults derived from other fields (e.g.
    ``n_kv_heads = n_heads``) are derived again from the overridden values.
    """
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node, owner, free = out, cls, False
        for i, p in enumerate(parts):
            fields = {f.name for f in dataclasses.fields(owner)}
            if p not in fields:
                where = ".".join(parts[:i]) or owner.__name__
                raise ConfigError(f"unknown config key '{key}'; known keys of {where}: {', '.join(sorted(fields))}")
            if i == len(parts) - 1:
                break
            if typing.get_origin(_hints(owner)[p]) is dict:  # a free-form table: the rest of the key are its keys
                node = node.setdefault(p, {})
                for q in parts[i + 1:-1]:
                    if not isinstance(node.setdefault(q, {}), dict):
                        raise ConfigError(f"config key '{key}': '{q}' is not a table")
                    node = node[q]
                free = True
                break
            owner = _hints(owner)[p]
            if not _is_config(owner):
                raise ConfigError(f"config key '{key}': '{p}' is not a table")
            node = node.setdefault(p, {})
        value = _parse_scalar(text.strip())
        if not free and _hints(owner).get(parts[-1]) is str and not isinstance(value, str):
            value = text.strip()  # a string field given a number-like value keeps the text
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Apply ``a.b=c`` overrides to a built config; the key must exist and the value must have the field's type."""
    return from_dict(type(cfg), merge_overrides(type(cfg), to_dict(cfg), overrides))


def describe(cls: type) -> list[dict[str, Any]]:
    """One row per (flattened) field: name, type, default, help, source. Used by ``lmlab info``."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if _is_config(tp):
            for r in describe(tp):
                rows.append({**r, "name": f"{f.name}.{r['name']}"})
            continue
        rows.append({"name": f.name, "type": getattr(tp, "__name__", str(tp)), "default": default,
                     "help": f.metadata.get("help", ""), "source": f.metadata.get("source")})
    return rows


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--flag`` per field (nested fields as ``--train.lr``); values are parsed TOML-style."""
    for row in describe(cls):
        name = prefix + row["name"]
        help_ = row["help"] + (f" [default: {row['default']!r}]")
        if row["source"]:
            help_ += f" (source: {row['source']})"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg::{name}", default=None, help=help_,
                            metavar=row["name"].upper())


def from_args(cls: type[T], args: argparse.Namespace, base: dict[str, Any] | None = None,
              overrides: list[str] | None = None) -> T:
    """Merge: dataclass defaults < ``base`` (e.g. a TOML file) < explicit --flags < ``overrides`` (--set)."""
    flags = [f"{k[5:]}={v}" for k, v in vars(args).items() if k.startswith("cfg::") and v is not None]
    return from_dict(cls, merge_overrides(cls, base or {}, flags + list(overrides or [])))


def add_job_arguments(parser: argparse.ArgumentParser, cls: type, config_help: str,
                      set_example: str = "train.lr=1e-3") -> None:
    """The flags every job verb shares: ``--config`` (TOML), ``--set KEY=VALUE`` and one flag per field."""
    parser.add_argument("--config", type=Path, default=None, help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"dotted override, e.g. {set_example}")
    add_arguments(parser, cls)


def job_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The job parsed by :func:`add_job_arguments`: defaults < --config < --flags < --set."""
    return from_args(cls, args, load_toml(args.config) if args.config else {}, args.overrides)


def dumps_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
