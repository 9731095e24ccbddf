"""A stage's start, part by part: the interpreter, MLflow, the stage's own imports, TensorFlow
(and the Keras it imports), the modules `main` imports, and the first TensorFlow op.

    python bench/stage_start.py                      # this checkout, median of 3 fresh processes
    python bench/stage_start.py --against 4bf8946    # and a commit's, side by side

Each process imports what the stage imports, in the stage's order: `pipeline.<stage>` (MLflow
first), then `start_tensorflow()` as `run_stage` does, then the modules `main` imports, then one
op. With `--against`, the commit is checked out in a temporary git worktree and run with this
environment; the two checkouts' processes alternate, so that both see the same machine.
Keras' share is read from `python -X importtime` of the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What each stage's `main` imports once TensorFlow has started.
STAGE_MODULES = {
    "train": ("keras", "pipeline.model", "pipeline.training", "pipeline.tracking.callbacks",
              "pipeline.tracking.logged_model"),
    "evaluate": ("pipeline.measures", "pipeline.model"),
    "plot": ("pipeline.model",),
}  # fmt: skip
PARTS = ("MLflow", "stage", "TensorFlow", "Keras", "main's", "first op", "total")

PROBE = """
import importlib, json, sys, time
stage, modules = sys.argv[1], sys.argv[2].split(",")
marks = [time.perf_counter()]
import mlflow
marks.append(time.perf_counter())
importlib.import_module(f"pipeline.{stage}")
marks.append(time.perf_counter())
from pipeline.quiet import start_tensorflow
start_tensorflow()
marks.append(time.perf_counter())
for module in modules:
    importlib.import_module(module)
marks.append(time.perf_counter())
import tensorflow as tf
tf.reduce_sum(tf.ones((2, 2))).numpy()
marks.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(marks, marks[1:])]))
"""


def importtime(stderr: str) -> dict[str, float]:
    """Cumulative import seconds of `keras`, with all it imports."""
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            name = name.strip()
            if not cumulative.strip().isdigit():  # the header
                continue
            # Keras' own __init__ starts with `keras._tf_keras`, so its widest entry stands for it.
            key = "keras" if name == "keras" or name.startswith("keras.") else name
            if key == "keras":
                found[key] = max(found.get(key, 0.0), int(cumulative) / 1e6)
    return found


def probe(checkout: Path, stage: str) -> dict[str, float]:
    """One fresh process's parts, in seconds."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [sys.executable, "-X", "importtime", "-c", PROBE, stage, ",".join(STAGE_MODULES[stage])]
    result = subprocess.run(args, cwd=checkout, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: the {stage} probe in {checkout} exited {result.returncode}:\n"
                         f"{result.stderr[-2000:]}")  # fmt: skip
    mlflow, stage_imports, tensorflow, modules, first_op = json.loads(result.stdout.splitlines()[-1])
    imported = importtime(result.stderr)
    return {
        "MLflow": mlflow,
        "stage": stage_imports,
        "TensorFlow": tensorflow,
        "Keras": imported.get("keras", 0.0),
        "main's": modules,
        "first op": first_op,
        "total": mlflow + stage_imports + tensorflow + modules + first_op,
    }


def interpreter() -> float:
    """Seconds of `python -c pass`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="processes per figure (default 3)")
    parser.add_argument("--against", metavar="COMMIT", help="also measure this commit, side by side")
    parser.add_argument("--stages", nargs="+", default=list(STAGE_MODULES), choices=list(STAGE_MODULES))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stage-start-") as scratch:
        checkouts = {"this checkout": ROOT}
        if options.against:
            worktree = Path(scratch) / "against"
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(worktree), options.against],
                           cwd=ROOT, check=True)  # fmt: skip
            checkouts = {options.against: worktree, **checkouts}
        try:
            runs = {(name, stage): [] for name in checkouts for stage in options.stages}
            for _ in range(options.repeat):
                for stage in options.stages:
                    for name, checkout in checkouts.items():
                        runs[name, stage].append(probe(checkout, stage))
        finally:
            if options.against:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
    start = statistics.median(interpreter() for _ in range(options.repeat))

    figures = {
        f"{name} {stage}": {part: statistics.median(r[part] for r in samples) for part in PARTS}
        for (name, stage), samples in runs.items()
    }
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")  # fmt: skip
    print(f"stage start, seconds, median of {options.repeat} fresh processes; {os.cpu_count()} cores, {cpu}")
    print(f"interpreter: {start:.2f} s. stage: its imports beyond MLflow. Keras: its share of TensorFlow's")
    print("import (python -X importtime). main's: what `main` imports. total: MLflow to the first op.")
    print(f"{'':<26}" + "".join(f"{part:>13}" for part in PARTS))
    for label, row in figures.items():
        print(f"{label:<26}" + "".join(f"{row[part]:13.2f}" for part in PARTS))
    if options.against:
        for stage in options.stages:
            before = figures[f"{options.against} {stage}"]["total"]
            after = figures[f"this checkout {stage}"]["total"]
            print(f"{stage}: {before:.2f} s -> {after:.2f} s, {before / after:.2f}x")
    if options.json:
        options.json.write_text(json.dumps({"interpreter": start, "stages": figures}, indent=1) + "\n")


if __name__ == "__main__":
    main()
