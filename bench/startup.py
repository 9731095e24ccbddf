"""Fixed costs: a no-op `dvc repro`, each stage's start-up, the light commands' imports
(`python -X importtime`), the store connection, the model build.

    python bench/startup.py            # in the repository, after `dvc repro` has run once

Each figure is the median of `--repeat` fresh processes, so caches of earlier runs count
as they would for a person re-running a stage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "evaluate", "plot", "tune")
WITH_TF = ("train", "evaluate", "plot")  # `run_stage(main, keras=True)`; tune's workers start it too
HEAVY = ("tensorflow", "keras", "mlflow", "optuna", "matplotlib", "sklearn", "scipy")

STORE = """
import tempfile, time
from pathlib import Path
import mlflow
from pipeline.tracking import store
with tempfile.TemporaryDirectory() as root:
    start = time.perf_counter()
    store.configure("bench", root=Path(root))
    fresh = time.perf_counter() - start
    start = time.perf_counter()
    store.configure("bench", root=Path(root))
    print(fresh, time.perf_counter() - start)
"""

BUILD = """
import time
import keras
from pipeline.model import build_vae
from pipeline.params import load_params
params = load_params()
start = time.perf_counter()
build_vae(params.model, params.train, params.base.seed)
print(time.perf_counter() - start)
"""


def timed(args: list[str]) -> tuple[float, str]:
    """Wall seconds of a command run in the repository, and what it printed."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def median_of(repeat: int, args: list[str]) -> tuple[float, str]:
    runs = [timed(args) for _ in range(repeat)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def import_times(python: str, module: str) -> tuple[float, list[tuple[str, float]]]:
    """`python -X importtime -c "import MODULE"`: its total seconds, and the packages it pulls in by cost."""
    result = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True
    )
    total, packages = 0.0, {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not cumulative.strip().isdigit():  # the header
            continue
        name, seconds = name.strip(), int(cumulative) / 1e6
        if name == module:
            total = seconds
        elif "." not in name and name != "pipeline":  # a package itself, with all it imports
            packages[name] = max(packages.get(name, 0.0), seconds)
    return total, sorted(packages.items(), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="processes per figure (default 3)")
    args = parser.parse_args()
    python, dvc = sys.executable, str(Path(sys.executable).with_name("dvc"))

    changed = subprocess.run([dvc, "status", "--quiet"], cwd=ROOT, capture_output=True).returncode != 0
    if changed:
        print("no-op dvc repro: skipped, the pipeline is not up to date (run `dvc repro` first)")
    else:
        seconds, _ = median_of(args.repeat, [dvc, "repro"])
        print(f"no-op dvc repro: {seconds:.2f} s")

    baseline, _ = median_of(args.repeat, [python, "-c", "pass"])
    print(f"python start: {baseline:.2f} s")
    print("stage start-up: imports, and TensorFlow's start where the stage runs it (seconds over a")
    print("bare interpreter, heavy packages loaded):")
    for stage in STAGES:
        start = "import pipeline.quiet as q; q.start_tensorflow()" if stage in WITH_TF else "pass"
        loaded = f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
        probe = f"import sys, pipeline.{stage}; {start}; {loaded}"
        seconds, loaded = median_of(args.repeat, [python, "-c", probe])
        print(f"  {stage:<9} {seconds - baseline:5.2f} s  {loaded.strip() or '-'}")

    print("light commands (python -X importtime: the module, then the three costliest packages):")
    for module in ("pipeline.compare", "pipeline.tune"):
        total, ranked = import_times(python, module)
        heavy = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in ranked[:3])
        print(f"  {module:<17} {total:5.2f} s  {heavy}")
    seconds, _ = median_of(args.repeat, [python, "-m", "pipeline.tune", "--print-best"])
    print(f"  tune --print-best wall: {seconds:.2f} s")

    _, out = timed([python, "-c", STORE])
    fresh, existing = (float(v) for v in out.split())
    print(f"MLflow store connection: {fresh:.2f} s fresh (tables created), {existing:.2f} s existing")
    _, out = timed([python, "-c", BUILD])
    print(f"model build (default params, TensorFlow loaded): {float(out):.2f} s")


if __name__ == "__main__":
    main()
