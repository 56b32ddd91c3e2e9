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


def test_a_partial_nested_table_keeps_the_jobs_own_defaults():
    """``--train.steps 5`` on a job whose train table defaults to lr 3e-3 keeps 3e-3 (it used to fall back to
    TrainConfig()'s 3e-4); fields derived in __post_init__ are derived again from the given values."""
    import argparse

    from lmlab.core.config import add_job_arguments, from_dict, job_from_args
    from lmlab.recipes.acdit import TrainJob
    from lmlab.recipes.tasks import TaskJob

    p = argparse.ArgumentParser()
    add_job_arguments(p, TrainJob, "toml")
    job = job_from_args(TrainJob, p.parse_args(["--train.steps", "300", "--model.dim", "32"]))
    assert (job.train.steps, job.train.lr, job.train.schedule, job.train.run_dir) == (300, 2e-3, "wsd", "runs/acdit")
    task = from_dict(TaskJob, {"train": {"steps": 5}, "model": {"dim": 32, "n_heads": 4}})
    assert (task.train.lr, task.model.n_layers, task.model.max_seq_len) == (3e-3, 2, 64)
    assert (task.model.n_kv_heads, task.model.ffn_dim) == (4, 96)  # derived from n_heads 4 and dim 32


def test_slot_args_take_dotted_overrides_and_reach_the_component():
    from dataclasses import dataclass

    from lmlab.core.blocks import slot_options
    from lmlab.core.transformer import TransformerConfig
    from lmlab.recipes.text import TextJob

    @dataclass
    class Opts:
        experts: int = param(4, "experts")
        top_k: int = param(1, "active experts")

    job = apply_overrides(TextJob(), ["model.slot_args.mlp.experts=8", "model.slot_args.mlp.top_k=2"])
    assert job.model.slot_args == {"mlp": {"experts": 8, "top_k": 2}}
    assert slot_options(job.model, "mlp", Opts) == Opts(8, 2)
    assert from_dict(TransformerConfig, to_dict(job.model)) == job.model  # saved and read back
    numbers = apply_overrides(TransformerConfig(), ["slot_args.attn.mlp=3", "slot_args.mlp.norm=2.5"])
    assert numbers.slot_args == {"attn": {"mlp": 3}, "mlp": {"norm": 2.5}}  # keys named like str fields stay numbers
    inline = apply_overrides(TransformerConfig(), ["slot_args={mlp = {experts = 3}}"])
    assert slot_options(inline, "mlp", Opts) == Opts(3, 1)
    with pytest.raises(ConfigError, match="model.slot_args.mlp.expert"):
        slot_options(apply_overrides(TransformerConfig(), ["slot_args.mlp.expert=8"]), "mlp", Opts)
    with pytest.raises(ValueError, match="'ffn'"):
        TransformerConfig(slot_args={"ffn": {"experts": 2}})
