"""Every command in README.md works: each ``.venv/bin/lmlab ...`` line of its shell blocks runs through the console
entry point (``lmlab.cli.main:main``, in this process) in a temporary working folder laid out like a checkout,
in README order, at reduced size; the Python block runs after them; each ``make TARGET`` it names exists in the
Makefile. A command that needs something this machine lacks (a model package, a GPU) is skipped with the reason.

The set-up commands ``make test`` and ``make demo`` are what ``.ci/run`` runs on a fresh clone; its contract
(fail when the tests fail, fail when the two commands leave the checkout changed) is tested here on a toy
repository whose Makefile stands in for the real one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LMLAB = ".venv/bin/lmlab"

# Flags appended to a README command so that the whole walk takes well under a minute on one thread. argparse
# keeps the last value of a repeated flag, so these win over the README's own values. Keyed by (verb, recipe),
# falling back to (verb,). A README command whose verb is in neither form runs as written.
REDUCE: dict[tuple[str, ...], list[str]] = {
    # corpus_en capped at 20 kB (the full corpus takes ~45 s to prepare; a capped build is cached in
    # $LMLAB_CACHE like any other) and 2 optimizer steps: the plumbing, not the quality
    ("train", "lm"): ["--train.steps", "2", "--data.max-bytes", "20000"],
    # 2 steps on 40 generated training puzzles, accuracy on 8 (the task defaults generate thousands)
    ("train", "task"): ["--train.steps", "2", "--task-data.n-train", "40", "--task-data.n-test", "8"],
    # an adapter on the README's tiny lm run: 2 steps on the same capped corpus_en, 2 held-out batches
    ("train", "adapter"): ["--train.steps", "2", "--data.max-bytes", "20000", "--train.eval-batches", "2"],
    # 2 steps; FD and class consistency from 20 samples of 2 solver steps with a 20-step feature classifier
    # (defaults: 1000 samples, 25 steps per block, 400 classifier steps)
    ("train", "acdit"): ["--train.steps", "2", "--eval-samples", "20", "--sample-steps", "2",
                         "--classifier-steps", "20"],
    ("generate",): ["--max-new-tokens", "4"],  # 4 new tokens instead of the default 64
    ("eval",): ["--n", "5"],  # 5 test examples per task instead of 500
    ("sample",): ["--n", "1", "--steps", "2"],  # one image per class, 2 solver steps per block
    # flatquant calibration on 2 windows of 64 tokens of a shipped text file for 1 epoch (defaults: 128 x 2048
    # tokens of corpus_en, 15 epochs: about 17 CPU-minutes)
    ("compress",): ["--calib", str(ROOT / "tests" / "fixtures" / "text" / "genesis_1.txt"),
                    "--set", "nsamples=2", "--set", "seq_len=64", "--set", "epochs=1"],
    # a reproduction's full run takes minutes to hours and must leave the committed record alone: its smoke
    # run is the same harness path (config, run.py, gates, result file, table) at reduced size
    ("repro",): ["--smoke"],
    ("bench",): ["--quick"],  # the benchmark's short plumbing run, which writes no result file
    # a server listens until stopped: --check loads the model, builds decoder and app, answers one request in
    # process and exits (tests/serve starts real servers on free ports)
    ("serve",): ["--check"],
}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def shell_commands(text: str) -> list[list[str]]:
    """argv of every command on the shell lines (``.venv/bin/lmlab`` or ``make``) of the non-Python blocks;
    ``#`` comments dropped, ``a && b`` split into two commands."""
    commands = []
    for lang, body in code_blocks(text):
        if lang == "python":
            continue
        for line in body.splitlines():
            if not line.startswith((LMLAB, "make")):
                continue
            words, current = shlex.split(line, comments=True), []
            for w in [*words, "&&"]:
                if w == "&&":
                    commands.append(current)
                    current = []
                else:
                    current.append(w)
    return commands


LMLAB_COMMANDS = [c for c in shell_commands(README) if c[0] == LMLAB]
MAKE_TARGETS = sorted({t for c in shell_commands(README) if c[0] == "make" for t in c[1:]}
                      | set(re.findall(r"`make (\w[\w-]*)`", README)))
PYTHON_BLOCKS = [body for lang, body in code_blocks(README) if lang == "python"]


def reduced(argv: list[str]) -> list[str]:
    """The command's arguments after ``lmlab`` with its REDUCE flags appended."""
    args = argv[1:]
    extra = REDUCE.get(tuple(args[:2]), REDUCE.get(tuple(args[:1]), []))
    return args + extra


def missing_requirement(args: list[str]) -> str | None:
    """Why this machine cannot run the command (a model package or a device it lacks), else None."""
    from lmlab.core.hf import PRETRAINED

    for name, source in PRETRAINED.items():
        if name in args and importlib.util.find_spec(source.module) is None:
            return f"model {name!r} needs the package {source.module!r}: {source.install}"
    if "--device" in args:
        device = args[args.index("--device") + 1]
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            return f"--device {device} needs a CUDA GPU"
        if device == "mps" and not torch.backends.mps.is_available():
            return "--device mps needs Apple's MPS backend"
    return None


@dataclass
class Outcome:
    args: list[str]  # what ran after `lmlab`, reductions included
    skipped: str | None = None  # the reason the command did not run
    error: str | None = None  # exit status or traceback, with the command's output
    seconds: float = 0.0


def run_lmlab(args: list[str]) -> Outcome:
    """Run ``lmlab ARGS`` through the console entry point; the environment is restored afterwards (``--device``
    sets $LMLAB_DEVICE for the rest of a process)."""
    from lmlab.cli.main import main

    reason = missing_requirement(args)
    if reason:
        return Outcome(args, skipped=reason)
    out, env, t0 = io.StringIO(), dict(os.environ), time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = main(args)
        error = None if rc == 0 else f"exit status {rc}"
    except SystemExit as e:  # argparse: an unknown flag or a bad value
        error = f"exit status {e.code} (argparse)"
    except Exception:
        error = traceback.format_exc()
    finally:
        os.environ.clear()
        os.environ.update(env)
    if error:
        error += "\n" + out.getvalue()[-3000:]
    return Outcome(args, error=error, seconds=time.perf_counter() - t0)


def working_folder(path: Path) -> Path:
    """A folder that ``lmlab.harness.repo_root`` takes for a checkout (pyproject.toml, repro/, bench/, without
    result files), so reproductions and benchmarks read and write there and never in this checkout."""
    shutil.copy(ROOT / "pyproject.toml", path / "pyproject.toml")
    skip = shutil.ignore_patterns("results", "__pycache__")
    for name in ("repro", "bench"):
        shutil.copytree(ROOT / name, path / name, ignore=skip)
    return path


def checkout_files(work: Path) -> dict[str, bytes]:
    """The files under the working folder's repro/ and bench/ (bytecode caches aside): path -> content."""
    return {str(p.relative_to(work)): p.read_bytes() for d in ("repro", "bench") for p in (work / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@dataclass
class Walk:
    outcomes: dict[int, Outcome]  # command index -> outcome (Python blocks: -1, -2, ...)
    written: set[str]  # files the walk added or changed under repro/ and bench/


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> Walk:
    """Run every README lmlab command in README order in one working folder (later commands read what earlier
    ones wrote, as for a user), then the Python blocks."""
    work = working_folder(tmp_path_factory.mktemp("readme"))
    before = checkout_files(work)
    outcomes: dict[int, Outcome] = {}
    with contextlib.chdir(work):
        for i, argv in enumerate(LMLAB_COMMANDS):
            outcomes[i] = run_lmlab(reduced(argv))
        for j, code in enumerate(PYTHON_BLOCKS, 1):
            t0 = time.perf_counter()
            try:
                exec(compile(code, f"README.md python block {j}", "exec"), {"__name__": "readme"})
                outcomes[-j] = Outcome(["python"], seconds=time.perf_counter() - t0)
            except Exception:
                outcomes[-j] = Outcome(["python"], error=traceback.format_exc())
    after = checkout_files(work)
    return Walk(outcomes, {f for f, content in after.items() if before.get(f) != content})


def check(outcome: Outcome) -> None:
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.error is None, f"`lmlab {shlex.join(outcome.args)}` failed: {outcome.error}"


def test_readme_has_the_commands_this_file_walks():
    verbs = {c[1] for c in LMLAB_COMMANDS}
    assert {"train", "generate", "eval", "sample", "repro", "bench"} <= verbs, verbs
    assert {"demo", "test"} <= set(MAKE_TARGETS) and len(PYTHON_BLOCKS) >= 1
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"lmlab": "lmlab.cli.main:main"}  # the function the walk calls is the console script


@pytest.mark.parametrize("i", range(len(LMLAB_COMMANDS)), ids=[shlex.join(c[1:4]) for c in LMLAB_COMMANDS])
def test_readme_command_runs(walk, i):
    check(walk.outcomes[i])


@pytest.mark.parametrize("j", range(1, len(PYTHON_BLOCKS) + 1))
def test_readme_python_block_runs(walk, j):
    check(walk.outcomes[-j])


def test_the_walk_is_quick_and_reduced_commands_are_named_in_the_table(walk):
    """Every command whose verb has a default size above a quick check has a REDUCE entry; the walk stays fast."""
    heavy = {"train", "generate", "eval", "sample", "compress", "repro", "bench"}
    unreduced = [c for c in LMLAB_COMMANDS if c[1] in heavy and reduced(c) == c[1:]]
    assert not unreduced, f"add a REDUCE entry for {unreduced}"
    total = sum(o.seconds for o in walk.outcomes.values())
    assert total < 60, {shlex.join(o.args): round(o.seconds, 1) for o in walk.outcomes.values()}


def test_the_reduced_runs_wrote_only_their_own_untracked_files(walk):
    """Smoke reproductions write results/smoke.json alone (no latest.json, INDEX.md or README change) and quick
    benchmarks write nothing."""
    assert walk.written, "the walk ran no reproduction"
    assert all(re.fullmatch(r"repro/\w+/results/smoke\.json", f) for f in walk.written), sorted(walk.written)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs the make command")
@pytest.mark.parametrize("target", MAKE_TARGETS)
def test_readme_make_target_exists(target):
    r = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True)
    assert r.returncode == 0, f"make {target}: {r.stderr}"


# ------------------------------------------------------------------ .ci/run: make test, make demo, then clean

TOY_MAKEFILE = """\
test:
\techo test >> "$$CI_LOG"; exit $${TEST_RC:-0}
demo:
\techo demo >> "$$CI_LOG"; if [ -n "$$DEMO_WRITES" ]; then echo x >> "$$DEMO_WRITES"; fi
"""


@pytest.fixture
def toy_repo(tmp_path):
    """A git repository with the real .ci/run and a Makefile whose test and demo targets log themselves to
    $CI_LOG (outside the repository) and fail or write a file when told."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    (repo / "Makefile").write_text(TOY_MAKEFILE)
    (repo / "tracked.txt").write_text("committed\n")
    git = ["git", "-C", str(repo), "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "toy"], check=True)
    return repo


def ci(repo: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = repo.parent / "ci.log"
    r = subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True,
                       env={**os.environ, "CI_LOG": str(log), **env})
    return r, log.read_text().split() if log.is_file() else []


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
def test_ci_runs_make_test_then_make_demo_and_passes_on_a_clean_checkout(toy_repo):
    r, ran = ci(toy_repo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ran == ["test", "demo"]


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
def test_ci_fails_when_the_tests_fail(toy_repo):
    r, ran = ci(toy_repo, TEST_RC="1")
    assert r.returncode != 0 and ran == ["test"]


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
@pytest.mark.parametrize("written, status", [("new.json", "?? new.json"), ("tracked.txt", " M tracked.txt")])
def test_ci_fails_and_names_what_make_demo_changed(toy_repo, written, status):
    """Regression: `make demo` rewrote 17 tracked files and CI never noticed."""
    r, ran = ci(toy_repo, DEMO_WRITES=str(toy_repo / written))
    assert r.returncode != 0 and ran == ["test", "demo"]
    assert status in r.stdout + r.stderr
