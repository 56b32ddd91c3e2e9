"""The reproduction harness: gates as data, smoke vs full result files, generated INDEX and README sections,
the folder loaded as a package (relative imports, worker processes)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lmlab import harness

ROOT = Path(__file__).resolve().parents[2]
DAY = "2030-01-02"  # the date the checkout fixture gives result file names (a run at midnight cannot straddle two)

RUN = '''
def run(cfg, smoke):
    return {"score": cfg["score"], "size": 3}
'''

EXPECTED = '''
claim = "a toy claim"
[paper]
score = 0.9
[[gate]]
metric = "score"
op = ">="
threshold = 0.5
[[gate]]
metric = "missing_metric"
op = "<"
threshold = 1.0
[[smoke_gate]]
metric = "size"
op = "=="
threshold = 3
'''


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    folder = tmp_path / "repro" / "toy"
    folder.mkdir(parents=True)
    (folder / "run.py").write_text(RUN)
    (folder / "expected.toml").write_text(EXPECTED)
    (folder / "config.toml").write_text("score = 0.7\n[smoke]\nscore = 0.1\n")
    (folder / "README.md").write_text("# Toy\n\nHand-written text.\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(harness, "now", lambda: f"{DAY}T00:00:00Z")
    return tmp_path


def test_smoke_and_full_runs_write_their_own_files_and_check_their_own_gates(checkout):
    smoke = harness.run_repro(checkout, "toy", smoke=True)
    assert [g["name"] for g in smoke["gates"]] == ["size"] and harness.passed(smoke)
    assert smoke["metrics"]["score"] == 0.1  # the [smoke] table overrides the config
    full = harness.run_repro(checkout, "toy", smoke=False, overrides=["score=0.25"])
    by_name = {g["name"]: g for g in full["gates"]}
    assert not by_name["score"]["passed"] and by_name["score"]["value"] == 0.25
    assert not by_name["missing_metric"]["passed"]  # a metric the run did not produce fails its gate
    results = checkout / "repro" / "toy" / "results"
    assert json.loads((results / "smoke.json").read_text())["smoke"] is True
    custom = json.loads((results / f"custom-{DAY}.json").read_text())
    assert custom["command"] == "lmlab repro toy --set score=0.25" and custom["smoke"] is False
    assert not (results / "latest.json").exists()  # a run with overrides is not the reproduction's record
    with pytest.raises(ValueError, match="key must be one of"):
        harness.run_repro(checkout, "toy", smoke=False, overrides=["nope=1"])
    with pytest.raises(ValueError, match="unknown reproduction 'other'"):
        harness.run_repro(checkout, "other", smoke=True)


def test_index_and_readme_sections_are_regenerated_in_place(checkout):
    folder = checkout / "repro" / "toy"
    harness.write_index(checkout)
    readme = (folder / "README.md").read_text()
    assert readme.startswith("# Toy\n\nHand-written text.") and "**Full run:** not run yet." in readme
    harness.run_repro(checkout, "toy", smoke=False)
    harness.write_index(checkout)
    readme = (folder / "README.md").read_text()
    assert readme.count(harness.BEGIN) == 1 and readme.count(harness.END) == 1
    assert "**Full run:** FAIL" in readme and "| score | 0.7 | >= 0.5 | ok |" in readme
    assert "| missing_metric | None | < 1 | FAIL |" in readme
    (folder / "README.md").write_text(readme + "\nMore notes after the block.\n")
    harness.write_index(checkout)
    assert (folder / "README.md").read_text().endswith("More notes after the block.\n")
    index = (checkout / "repro" / "INDEX.md").read_text()
    assert "| toy | a toy claim |" in index and "score >= 0.5" in index


def tracked_files(root: Path) -> dict[str, bytes]:
    """What a full run owns: latest.json, the dated copies, README.md and INDEX.md (path -> bytes)."""
    paths = [*root.glob("repro/*/results/latest.json"), *root.glob("repro/*/results/????-??-??.json"),
             *root.glob("repro/*/README.md"), root / "repro" / "INDEX.md"]
    return {str(p.relative_to(root)): p.read_bytes() for p in paths if p.is_file()}


def test_reduced_runs_leave_the_full_run_record_readme_and_index_alone(checkout, capsys):
    """Regression: ``lmlab repro SLUG --set ...`` overwrote latest.json, the README's full-run section and
    INDEX.md with a reduced-run FAIL, and ``--smoke`` rewrote the README and INDEX.md."""
    from lmlab.cli.main import main

    assert main(["repro", "toy"]) == 1  # the full run: the record (its missing_metric gate fails)
    record = tracked_files(checkout)
    assert {"repro/toy/results/latest.json", f"repro/toy/results/{DAY}.json", "repro/toy/README.md",
            "repro/INDEX.md"} == set(record)
    capsys.readouterr()
    assert main(["repro", "toy", "--set", "score=0.1"]) == 1
    assert main(["repro", "toy", "--smoke"]) == 0
    assert main(["repro", "all", "--smoke", "--set", "score=0.9"]) == 0
    out, err = capsys.readouterr()
    assert tracked_files(checkout) == record  # byte for byte
    assert out.count("| toy | a toy claim |") == 3  # every run still prints the claim-vs-measured table
    results = checkout / "repro" / "toy" / "results"
    assert f"wrote repro/toy/results/custom-{DAY}.json" in err and "wrote repro/toy/results/smoke.json" in err
    assert "INDEX.md" not in err
    second = json.loads((results / f"custom-{DAY}-2.json").read_text())  # the day's first custom run is kept
    assert second["command"] == "lmlab repro toy --smoke --set score=0.9" and second["smoke"] is True
    assert json.loads((results / f"custom-{DAY}.json").read_text())["metrics"]["score"] == 0.1
    assert sorted(p.name for p in results.iterdir()) == sorted(
        ["latest.json", f"{DAY}.json", "smoke.json", f"custom-{DAY}.json", f"custom-{DAY}-2.json"])


def test_index_and_readme_show_full_runs_only(checkout):
    """Regression: a smoke result appeared as an INDEX.md column and a README section of its own."""
    folder = checkout / "repro" / "toy"
    harness.run_repro(checkout, "toy", smoke=True)
    harness.write_index(checkout)
    readme, index = (folder / "README.md").read_text(), (checkout / "repro" / "INDEX.md").read_text()
    assert "smoke" not in readme.lower() and "smoke" not in index.lower()
    assert "**Full run:** not run yet." in readme and "| toy | a toy claim | score >= 0.5; missing_metric < 1.0 " \
        "| not run yet | `lmlab repro toy` |" in index
    harness.run_repro(checkout, "toy", smoke=False)
    harness.write_index(checkout)
    index = (checkout / "repro" / "INDEX.md").read_text()
    assert "| FAIL: score=0.7 >= 0.5 ok; missing_metric=None < 1 FAIL (" in index
    assert "smoke" not in (folder / "README.md").read_text().lower()


def git_lines(*args: str) -> list[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="needs a git checkout of lmlab and the git command")
def test_reduced_run_files_are_ignored_by_git_and_not_tracked():
    """Regression: every repro/*/results/smoke.json was tracked, so ``make demo`` changed 8 tracked files."""
    assert git_lines("ls-files", "repro/*/results/smoke.json", "repro/*/results/custom-*.json") == []
    names = [f"repro/{slug}/results/{name}" for slug in harness.slugs(ROOT)
             for name in ("smoke.json", "custom-2030-01-01.json", "custom-2030-01-01-2.json")]
    assert git_lines("check-ignore", "--no-index", *names) == names
    full = [f"repro/{slug}/results/{name}" for slug in harness.slugs(ROOT)
            for name in ("latest.json", "2030-01-01.json")]
    assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", *full],
                          capture_output=True).returncode == 1  # 1: none of them is ignored


def test_cli_exit_code_reflects_the_gates(checkout, capsys):
    from lmlab.cli.main import main

    assert main(["repro", "toy", "--smoke"]) == 0
    assert main(["repro", "toy"]) == 1
    assert "gates failed: toy" in capsys.readouterr().err


POOL_RUN = '''
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor


def square(x):
    return x * x, os.getpid()


def run(cfg, smoke):
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        out = list(pool.map(square, [1, 2, 3]))
    return {"total": sum(v for v, _ in out), "worker_pids": len({p for _, p in out} - {os.getpid()})}
'''


def test_a_run_script_can_hand_its_own_functions_to_worker_processes(checkout):
    (checkout / "repro" / "toy" / "run.py").write_text(POOL_RUN)
    rec = harness.run_repro(checkout, "toy", smoke=True)
    assert rec["metrics"]["total"] == 14 and rec["metrics"]["worker_pids"] >= 1


def load_mgdm_run():
    return harness.repro_module("mgdm", "run", ROOT)


SIBLING_RUN = '''
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from .work import VALUE, square


def run(cfg, smoke):
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        out = list(pool.map(square, [1, 2, 3]))
    return {"total": sum(out), "value": VALUE}
'''


def test_a_run_script_imports_its_sibling_files_relatively_and_they_reach_worker_processes(checkout):
    folder = checkout / "repro" / "toy"
    (folder / "run.py").write_text(SIBLING_RUN)
    (folder / "work.py").write_text("VALUE = 1\n\n\ndef square(x):\n    return x * x\n")
    rec = harness.run_repro(checkout, "toy", smoke=True)
    assert rec["metrics"] == {"total": 14, "value": 1}
    work = harness.repro_module("toy", "work", checkout)  # what a benchmark imports: the very module run.py used
    assert work.__name__ == "lmlab_repro_toy.work" and work.square(5) == 25
    assert harness.repro_module("toy", "run", checkout).VALUE is work.VALUE
    (folder / "work.py").write_text("VALUE = 222\n\n\ndef square(x):\n    return x * x\n")
    assert harness.run_repro(checkout, "toy", smoke=True)["metrics"]["value"] == 222  # each run reloads from disk


def test_only_registered_reproductions_run(checkout):
    """A slug is a folder name under repro/ with an expected.toml, never a path (even one that leads to a real
    reproduction)."""
    for bad in ("../repro/toy", "toy/.", "other"):
        with pytest.raises(ValueError, match=f"unknown reproduction '{bad}'; available: toy"):
            harness.run_repro(checkout, bad, smoke=True)
    with pytest.raises(FileNotFoundError, match="repro/toy has no missing.py"):
        harness.repro_module("toy", "missing", checkout)


def test_repro_gsd_run_imports_its_siblings_as_one_package():
    run = harness.repro_module("gsd", "run", ROOT)
    pair = harness.repro_module("gsd", "pair", ROOT)
    assert run.load_or_train_pair is pair.load_or_train_pair and pair.__name__ == "lmlab_repro_gsd.pair"


def test_mgdm_run_averages_seeds_and_keeps_per_seed_gaps(monkeypatch):
    """repro/mgdm/run.py with two seeds: gaps are taken within a seed, then averaged; per-seed names keep them."""
    mod = load_mgdm_run()
    acc = {(0, "ar"): 0.2, (0, "mgdm"): 0.5, (1, "ar"): 0.4, (1, "mgdm"): 0.3}  # gaps +0.3 and -0.1

    def fake_arm(cfg, task, arm, seed):
        name = f"{mod.task_key(task)}_{mod.SHORT[arm]}"
        return {f"{name}_acc": acc[seed, mod.SHORT[arm]], f"{name}_cpu_s": 10.0, "params": 7}

    monkeypatch.setattr(mod, "run_arm", fake_arm)
    cfg = {"gate1_task": "sudoku4", "arms": ["causal_lm", "mgdm"], "hard_tasks": ["sudoku4"],
           "hard_arms": ["causal_lm", "mgdm"], "seeds": [0, 1], "workers": 1}
    m = mod.run(cfg, smoke=False)
    assert m["sudoku4_mgdm_minus_ar_s0"] == pytest.approx(0.3) and m["sudoku4_mgdm_minus_ar_s1"] == pytest.approx(-0.1)
    assert m["sudoku4_mgdm_minus_ar"] == pytest.approx(0.1) and m["sudoku4_mgdm_minus_ar_min"] == pytest.approx(-0.1)
    assert m["sudoku4_ar_acc"] == pytest.approx(0.3) and m["sudoku4_mgdm_acc_s1"] == pytest.approx(0.3)
    assert m["hard_best_mgdm_minus_ar"] == pytest.approx(0.1) and m["cpu_seconds"] == pytest.approx(40.0)
    assert m["params"] == 7 and "params_s0" not in m


@pytest.mark.parametrize("task, expected", [("sudoku4", True), ("planning2", False)])
def test_mgdm_run_uses_the_inpainting_layout_only_on_tasks_with_a_blank(monkeypatch, task, expected):
    mod = load_mgdm_run()
    seen = {}

    def fake_train(arm, spec, model, train, data, seed):
        seen["inpaint"] = data.inpaint
        raise RuntimeError("stop after the data config")

    monkeypatch.setattr(mod, "train_on_task", fake_train)
    cfg = {"threads": 1, "n_train": 10, "n_test": 5, "batch_size": 4, "decode_steps": 2, "dim": 8, "layers": 1,
           "heads": 2, "steps": 1, "lr": 1e-3, "warmup": 0, "inpaint": True}
    with pytest.raises(RuntimeError, match="stop after"):
        mod.run_arm(cfg, task, "mgdm", 0)
    assert seen["inpaint"] is expected
