"""The layout: stages share nothing but files, `dvc.yaml` lists exactly the code each stage runs,
MLflow lives in `pipeline/tracking/`, and importing the package changes nothing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from pipeline.params import read_yaml
from tests.helpers import ROOT, run

STAGES = ("prepare", "train", "evaluate", "plot", "tune", "compare")  # and the commands


def module_file(name: str) -> Path | None:
    """`pipeline.tracking.runs` -> `pipeline/tracking/runs.py` (a package's `__init__.py`); None if none."""
    base = ROOT / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_names(path: Path) -> set[str]:
    """Every name an import in the file names, at its top or in a function: `a.b` for `import a.b`;
    `m`, and `m.x` in case `x` is a submodule, for `from m import x`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def direct_imports(name: str) -> set[str]:
    """The package modules that module `name` imports anywhere in it."""
    names = imported_names(module_file(name))
    modules = {m for m in names if m.split(".")[0] == "pipeline" and module_file(m)}
    parents = {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1)}
    return modules | parents  # importing a submodule runs its packages' __init__.py


def imported(name: str) -> set[str]:
    """`name` and every package module it imports, directly or through others."""
    seen, todo = set(), [name, "pipeline"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(direct_imports(module))
    return seen


def stages() -> dict[str, tuple[str, list[str]]]:
    """Each DVC stage's module and its deps, relative to the project root, from both dvc.yaml files."""
    found = {}
    for dvc_yaml in (ROOT / "dvc.yaml", ROOT / "sweep/dvc.yaml"):
        for name, stage in read_yaml(dvc_yaml)["stages"].items():
            wdir = (dvc_yaml.parent / stage.get("wdir", ".")).resolve()
            deps = [str((wdir / dep).resolve().relative_to(ROOT)) for dep in stage.get("deps", [])]
            found[name] = (stage["cmd"].split()[-1], deps)
    return found


def test_no_stage_imports_another():
    for stage in STAGES:
        others = {f"pipeline.{s}" for s in STAGES} - {f"pipeline.{stage}"}
        assert imported(f"pipeline.{stage}") & others == set(), stage


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate", "plot", "tune"])
def test_dvc_yaml_lists_exactly_the_modules_each_stage_imports(stage):
    module, deps = stages()[stage]
    code = {str(module_file(m).relative_to(ROOT)) for m in imported(module)}
    assert sorted(d for d in deps if d.startswith("pipeline/")) == sorted(code)


def test_only_the_tracking_package_imports_mlflow():
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if any(name.split(".")[0] == "mlflow" for name in imported_names(path)):
            assert path.parent == ROOT / "pipeline/tracking", path


def test_importing_the_package_changes_nothing_global():
    state = "(list(sys.meta_path), dict(os.environ), sys.stderr)"
    probe = (
        "import os, sys\n"
        f"before = {state}\n"
        "import pipeline\n"
        f"assert {state} == before, 'import pipeline'\n"
        # What the libraries change on import is theirs: imported first, it is in `before`.
        "import filelock, jinja2, matplotlib, mlflow, optuna, pydantic, ruamel.yaml\n"
        "import scipy.special, sklearn.decomposition, sklearn.neighbors\n"
        f"before = {state}\n"
        "import pipeline.train, pipeline.evaluate, pipeline.plot, pipeline.tune, pipeline.compare\n"
        f"assert {state} == before, 'the stage modules'\n"
        "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))\n"
    )
    # No import hook, no environment set, and the stages import TensorFlow only when they run.
    assert run([sys.executable, "-c", probe], ROOT).stdout.strip() == "[]"
