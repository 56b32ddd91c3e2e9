import argparse
from dataclasses import dataclass

import pytest

from lmlab.core.config import (
    ConfigError,
    add_arguments,
    apply_overrides,
    describe,
    from_args,
    from_dict,
    load_toml,
    param,
    to_dict,
)


@dataclass
class Inner:
    lr: float = param(3e-4, "learning rate", source="paper Sec. 4")
    steps: int = param(10, "steps")


@dataclass
class Outer:
    name: str = param("x", "a name")
    mode: str = param("a", "mode", choices=("a", "b"))
    sizes: list[int] = param([1, 2], "sizes")
    inner: Inner = param(Inner(), "nested")


def test_round_trip_and_nesting():
    cfg = from_dict(Outer, {"name": "y", "inner": {"lr": 1}})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data,key", [({"nme": "y"}, "nme"), ({"inner": {"lrr": 1}}, "inner.lrr"),
                                      ({"inner": {"steps": 1.5}}, "inner.steps"), ({"sizes": [1, "a"]}, "sizes[1]"),
                                      ({"mode": "c"}, "mode")])
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        from_dict(Outer, data)


def test_overrides():
    cfg = apply_overrides(Outer(), ["inner.lr=1e-3", "sizes=[3, 4]", "name=z"])
    assert cfg.inner.lr == 1e-3 and cfg.sizes == [3, 4] and cfg.name == "z"
    with pytest.raises(ConfigError, match="inner.nope"):
        apply_overrides(Outer(), ["inner.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Outer(), ["inner.lr"])


def test_toml_and_argparse(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('name = "t"\n[inner]\nsteps = 5\n')
    p = argparse.ArgumentParser()
    add_arguments(p, Outer)
    cfg = from_args(Outer, p.parse_args(["--inner.lr", "0.5"]), load_toml(f))
    assert (cfg.name, cfg.inner.steps, cfg.inner.lr) == ("t", 5, 0.5)
    with pytest.raises(FileNotFoundError):
        load_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_toml(tmp_path / "bad.toml")


def test_describe_lists_sources():
    rows = {r["name"]: r for r in describe(Outer)}
    assert rows["inner.lr"]["source"] == "paper Sec. 4" and rows["name"]["default"] == "x"


def test_binary_config_names_the_file(tmp_path, capsys):
    from lmlab.cli.main import main

    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"x\.bin: not a UTF-8 TOML file \(byte 0x89 at offset 0\)"):
        load_toml(binary)
    assert main(["train", "lm", "--config", str(binary)]) == 2
    err = capsys.readouterr().err
    assert f"lmlab train: error: {binary}: not a UTF-8 TOML file" in err and "expected a TOML config" in err
    assert "Traceback" not in err
