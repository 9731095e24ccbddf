"""The environment is locked: uv.lock matches pyproject.toml, and .venv holds exactly it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
import tomllib
from pathlib import Path

from tests.components import UV, require
from tests.helpers import ROOT, run

# What `scripts/setup.sh` runs.
SYNC = ["sync", "--locked", "--compile-bytecode", "--extra", "dev", "--python", "python3"]
OFFLINE = "Packages were unavailable because the network was disabled"


def locked_versions() -> dict[str, set[str]]:
    """Every package in uv.lock and its pinned versions (one per Python or platform the lock forks
    on, usually one), the project itself left out."""
    locked: dict[str, set[str]] = {}
    for package in tomllib.loads((ROOT / "uv.lock").read_text())["package"]:
        if "editable" not in package.get("source", {}):
            locked.setdefault(package["name"], set()).add(package["version"])
    return locked


def test_the_lock_matches_pyproject():
    require("uv")
    result = run([str(UV), "lock", "--check", "--offline"], ROOT, check=False)
    assert result.returncode == 0, f"uv.lock is out of date; run .uv/bin/uv lock\n{result.stderr}"


def test_setup_refuses_a_lock_that_pyproject_no_longer_matches(tmp_path):
    require("uv")
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"tqdm>=4.66"', '"tqdm>=4.67"'))
    # To tell that the lock no longer matches, uv resolves again: offline where uv's cache holds
    # the index pages (an earlier `uv lock` left them), else from the index, as setup.sh does.
    result = run([str(UV), *SYNC, "--dry-run", "--offline"], tmp_path, check=False)
    if OFFLINE in " ".join(result.stderr.split()):
        result = run([str(UV), *SYNC, "--dry-run"], tmp_path, check=False)
    assert result.returncode != 0
    printed = " ".join(result.stderr.split())  # uv wraps its message to a terminal's width
    assert "The lockfile at `uv.lock` needs to be updated, but `--locked` was provided" in printed
    assert not (tmp_path / ".venv").exists()  # refused before installing anything


def test_the_environment_holds_exactly_the_locked_versions():
    locked = locked_versions()
    installed = {
        dist.metadata["Name"].lower().replace("_", "-").replace(".", "-"): dist.version
        for dist in importlib.metadata.distributions()
    }
    for package in ("tensorflow", "jax", "keras", "mlflow", "dvc", "optuna", "numpy", "pytest", "playwright"):
        assert installed[package] in locked[package], package
    differ = {
        name: (version, locked[name])
        for name, version in installed.items()
        if name in locked and version not in locked[name]
    }
    assert differ == {}, f"installed (left) differs from uv.lock (right): {differ}"


def test_jax_comes_only_with_its_extras_so_the_default_install_does_not_grow():
    (project,) = (
        p
        for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]
        if "editable" in p.get("source", {})
    )
    assert not any(d["name"].startswith("jax") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert {d["name"] for d in extras["jax"]} == {"jax"}
    assert {d["name"] for d in extras["jax-cuda"]} == {"jax", "nvidia-ml-py"}


def test_the_environment_holds_compiled_bytecode():
    """setup.sh compiles every installed module once, so that a stage's imports read bytecode
    even where Python may not write it (PYTHONDONTWRITEBYTECODE set)."""
    for package in ("tensorflow", "keras", "mlflow", "pandas"):
        init = Path(importlib.util.find_spec(package).origin)
        compiled = init.parent / "__pycache__" / f"__init__.{sys.implementation.cache_tag}.pyc"
        assert compiled.exists(), package


def test_a_group_of_tests_runs_on_one_worker(tmp_path):
    """scripts/test.sh's `--dist loadgroup` builds a module's project once only while pytest-xdist
    keeps an `xdist_group` on one worker, which some pytest releases break without a word."""
    (tmp_path / "test_grouped.py").write_text(
        "import pytest\npytestmark = pytest.mark.xdist_group('one')\n"
        + "".join(f"def test_{i}(): pass\n" for i in range(6))
    )
    printed = run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
         "test_grouped.py"],
        tmp_path,
    ).stdout  # fmt: skip
    passed = [line.split() for line in printed.splitlines() if "PASSED" in line]
    assert len(passed) == 6 and all(words[-1].endswith("@one") for words in passed), printed
    assert len({words[0] for words in passed}) == 1, printed  # e.g. [gw0]
